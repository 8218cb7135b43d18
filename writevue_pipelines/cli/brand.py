"""``writevue brand …``: an agency's white label (name, logo, colours) and which tenants show it.

Brands are agency data: none of these commands reveals a tenant's personal data or
figures or creates access to them, so none is audited (``apply``/``clear`` take tenant
ids the operator already has, and print only those ids back).
"""

from __future__ import annotations

import json
import sys

from .. import branding
from .app import arg, command, group
from .inputs import ready_runtime
from .progress import plural

group("brand", "white label: the name, logo and colours clients see")

_COLOR_ARGS = tuple(
    arg(f"--{role}", metavar="#HEX", help=f"{role} colour, #rgb or #rrggbb")
    for role in branding.COLOR_ROLES
)


@command(
    "brand add",
    "add a brand (or --replace one); prints its id last",
    arg("name", help="the operator's handle, e.g. northwind"),
    arg("--display-name", required=True, help="what clients see, e.g. 'Northwind Analytics'"),
    arg("--logo", metavar="FILE", help="PNG or SVG, at most 200 kB"),
    *_COLOR_ARGS,
    arg("--replace", action="store_true", help="make an existing brand exactly this"),
    audit=False,  # agency data only
)
def add(args) -> None:
    colors = {role: getattr(args, role) for role in branding.COLOR_ROLES}
    colors = {role: value for role, value in colors.items() if value is not None}
    warnings = branding.color_warnings(colors)  # also refuses what check_colors refuses
    runtime = ready_runtime()
    with runtime.db.session() as session:
        brand_id = branding.save_brand(
            session,
            args.name,
            args.display_name,
            logo_path=args.logo,
            colors=colors,
            replace=args.replace,
        )
    for warning in warnings:
        print(f"writevue: warning: {warning}", file=sys.stderr)
    print(brand_id)


def _as_json(info: branding.BrandInfo, tenants: int, templates: int) -> dict:
    return {
        "id": info.id,
        "name": info.name,
        "display_name": info.display_name,
        "logo_type": info.logo_type,
        "logo_bytes": len(info.logo) if info.logo else 0,
        "colors": dict(info.colors),
        "tenants": tenants,
        "templates": templates,
        "updated_at": info.updated_at.isoformat() if info.updated_at else None,
    }


@command(
    "brand list",
    "list brands, with how many tenants and templates use each",
    arg("--json", action="store_true"),
    audit=False,
)
def list_brands(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        rows = [
            _as_json(info, *branding.brand_usage(session, info.id))
            for info in branding.list_brands(session)
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(
            f"{row['id']}  {row['name']:<20} {row['display_name']}  "
            f"({plural(row['tenants'], 'tenant')}, {plural(row['templates'], 'template')})"
        )


@command(
    "brand show", "a brand's details", arg("name"), arg("--json", action="store_true"), audit=False
)
def show(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = branding.get_brand(session, args.name)
        shown = _as_json(info, *branding.brand_usage(session, info.id))
    if args.json:
        print(json.dumps(shown, indent=2))
        return
    logo = f"{shown['logo_type']}, {shown['logo_bytes']} bytes" if info.logo else "none"
    colors = ", ".join(f"{k} {v}" for k, v in shown["colors"].items()) or "WriteVue's"
    used = f"{plural(shown['tenants'], 'tenant')}, {plural(shown['templates'], 'template')}"
    print(
        f"id:           {shown['id']}\nname:         {shown['name']}\n"
        f"display name: {shown['display_name']}\nlogo:         {logo}\n"
        f"colours:      {colors}\nused by:      {used}"
    )


@command(
    "brand apply",
    "show a brand on these tenants' dashboards and connect pages",
    arg("name"),
    arg("tenant_ids", nargs="+", metavar="TENANT_ID"),
    audit=False,  # prints back only the ids typed
)
def apply(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        ids = branding.apply_brand(session, args.name, args.tenant_ids)
    for tenant_id in ids:
        print(f"{tenant_id}: {args.name}")


@command(
    "brand clear",
    "take these tenants' own brand away (their template's, else WriteVue's look, applies)",
    arg("tenant_ids", nargs="+", metavar="TENANT_ID"),
    audit=False,
)
def clear(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        ids = branding.clear_brand(session, args.tenant_ids)
    for tenant_id in ids:
        print(f"{tenant_id}: cleared")


@command(
    "brand remove",
    "remove a brand no tenant or template uses",
    arg("name"),
    audit=False,
)
def remove(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        brand_id = branding.delete_brand(session, args.name)
    print(f"removed {brand_id}")
