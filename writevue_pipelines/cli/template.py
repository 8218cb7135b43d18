"""``writevue template …``: dashboard layouts an operator applies to many tenants.

A template is agency data, not a client's: listing or showing one reveals no tenant's
figures, and applying one changes how a dashboard looks without opening it to anyone.
"""

from __future__ import annotations

import json
import sys

from .. import templates
from .app import arg, command, group
from .inputs import ready_runtime
from .progress import plural

group("template", "dashboard layouts, calculated metrics and comparisons for many tenants")


@command(
    "template add",
    "check a template file (.toml, .yaml) and store it; prints its id last",
    arg("file"),
    arg("--replace", action="store_true", help="replace the template of the same name"),
    audit=False,  # agency data: shows nothing of a tenant
)
def add(args) -> None:
    template = templates.load_template_file(args.file)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        replaced = args.replace and any(
            info.name == template.name for info in templates.list_templates(session)
        )
        template_id = templates.save_template(session, template, replace=args.replace)
    items = sum(len(section.items) for section in template.sections)
    print(
        f"{'replaced' if replaced else 'added'} template {template.name}: "
        f"{plural(len(template.sections), 'section')}, {plural(items, 'item')}, "
        f"{plural(len(template.calculated), 'calculated metric')}",
        file=sys.stderr,
    )
    print(template_id)


@command(
    "template list",
    "list templates and how many tenants use each",
    arg("--json", action="store_true"),
    audit=False,  # names and counts: no tenant id, no figures
)
def list_templates(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        infos = templates.list_templates(session)
    if args.json:
        rows = [
            {
                "id": info.id,
                "name": info.name,
                "tenants": info.tenants,
                "updated_at": info.updated_at.isoformat(),
            }
            for info in infos
        ]
        print(json.dumps(rows, indent=2))
        return
    for info in infos:
        tenants = f"{info.tenants} tenant{'s' if info.tenants != 1 else ''}"
        print(f"{info.id}  {info.name:<24} {tenants:<12} updated {info.updated_at:%Y-%m-%d %H:%M}")


@command(
    "template show",
    "a template's sections and calculated metrics (--json: the stored definition)",
    arg("name", help="its name or id"),
    arg("--json", action="store_true"),
    audit=False,  # agency data
)
def show(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        template = templates.get_template(session, args.name)
    if args.json:
        print(json.dumps(template.to_json(), indent=2, ensure_ascii=False))
        return
    print(f"{template.name}: compared with the {template.comparison.replace('_', ' ')} period")
    if template.brand:
        print(f"brand: {template.brand}")
    for section in template.sections:
        print(f"[{section.title}]")
        for item in section.items:
            what = item.metric
            if item.dimension is not None:
                what += f"[{item.dimension}]"
            elif item.split:
                what += " per dimension value"
            label = f"  “{item.label}”" if item.label else ""
            print(f"  {what} ({item.chart}){label}")
    if template.calculated:
        print("calculated:")
    for calc in template.calculated:
        unit = f"{calc.unit} {calc.currency}" if calc.currency else calc.unit
        print(
            f"  {calc.name} = {calc.formula}  ({calc.kind}, {unit}, {calc.polarity})"
            f"  “{calc.label}”"
        )
    for metric, polarity in sorted(template.polarity.items()):
        print(f"polarity: {metric}={polarity}")


@command(
    "template apply",
    "give tenants a template (all or none)",
    arg("name", help="the template's name or id"),
    arg("tenant_ids", nargs="+", metavar="TENANT_ID"),
    audit=False,  # changes a layout; reveals nothing and opens no access
)
def apply(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        done = templates.apply_template(session, args.name, args.tenant_ids)
    print(f"applied {args.name} to {len(done)} tenant{'s' if len(done) != 1 else ''}")


@command(
    "template clear",
    "back to the automatic layout for these tenants",
    arg("tenant_ids", nargs="+", metavar="TENANT_ID"),
    audit=False,  # changes a layout; reveals nothing
)
def clear(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        done = templates.clear_template(session, args.tenant_ids)
    print(f"{len(done)} tenant{'s' if len(done) != 1 else ''} back to the automatic layout")


@command(
    "template remove",
    "delete a template (refused while tenants use it)",
    arg("name", help="its name or id"),
    audit=False,  # agency data
)
def remove(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        templates.delete_template(session, args.name)
    print(f"removed template {args.name}")
