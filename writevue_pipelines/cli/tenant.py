"""``writevue tenant …``: clients, and what the privacy policy lets them ask for.

The privacy modules (and polars with them) are imported by the commands that use them,
so that `writevue tenant list` starts as fast as the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import links, registry
from .app import CliError, arg, command, group
from .inputs import ACTOR, ready_runtime

group("tenant", "clients")


@command(
    "tenant add", "add a tenant; prints its id last", arg("name"), arg("--email", required=True)
)
def add(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, args.name, args.email)
    print(tenant_id)


@command("tenant list", "list tenants", arg("--json", action="store_true"))
def list_tenants(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenants = registry.list_tenants(session, runtime.keys)
    if args.json:
        rows = [
            {"id": t.id, "name": t.name, "email": t.email, "created_at": t.created_at.isoformat()}
            for t in tenants
        ]
        print(json.dumps(rows, indent=2))
        return
    for t in tenants:
        print(f"{t.id}  {t.name}  <{t.email}>")


@command(
    "tenant show",
    "a tenant's details and connections (audited)",
    arg("tenant_id"),
    arg("--json", action="store_true"),
    ACTOR,
)
def show(args) -> None:
    from .. import privacy

    actor = privacy.operator_name(args.actor)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant = registry.get_tenant(session, runtime.keys, args.tenant_id)
        connections = registry.list_connections(session, tenant_id=tenant.id)
        live_links = [
            item for item in links.list_links(session, tenant.id) if item.state() == "live"
        ]
    privacy.record_access(runtime, actor, "tenant.show", tenant.id)
    shown = {
        "id": tenant.id,
        "name": tenant.name,
        "email": tenant.email,
        "created_at": tenant.created_at.isoformat(),
        "live_links": len(live_links),
        "connections": [
            {
                "id": c.id,
                "source": c.source,
                "auth_kind": c.auth_kind,
                "status": c.status,
                "last_refreshed_at": c.last_refreshed_at.isoformat()
                if c.last_refreshed_at
                else None,
            }
            for c in connections
        ],
    }
    if args.json:
        print(json.dumps(shown, indent=2))
        return
    print(f"{tenant.id}  {tenant.name}  <{tenant.email}>")
    print(f"client since {tenant.created_at:%Y-%m-%d}; {len(live_links)} live dashboard links")
    for c in shown["connections"]:
        print(
            f"  {c['id']}  {c['source']:<10} {c['auth_kind']:<8} {c['status']:<8} "
            f"last refreshed {c['last_refreshed_at'] or 'never'}"
        )


@command(
    "tenant export",
    "write everything kept about a tenant to a zip (audited); no secrets",
    arg("tenant_id"),
    arg("--out", required=True, metavar="FILE.zip"),
    arg("--force", action="store_true", help="replace FILE.zip if it exists"),
    ACTOR,
)
def export(args) -> None:
    from .. import privacy

    actor = privacy.operator_name(args.actor)
    runtime = ready_runtime()
    tenant_id = registry.parse_uuid(args.tenant_id, "Tenant")
    report = privacy.export_tenant(runtime, tenant_id, Path(args.out), force=args.force)
    privacy.record_access(
        runtime, actor, "tenant.export", tenant_id, facts=report.facts, bytes=report.bytes
    )
    print(
        f"exported {report.facts} aggregates, {report.connections} connections and "
        f"{report.links} links ({report.bytes} bytes); the file holds personal data",
        file=sys.stderr,
    )
    print(report.path)


@command(
    "tenant erase",
    "erase a tenant now: revoke its grants, delete every row and file, verify",
    arg("tenant_id"),
    arg("--yes", action="store_true", help="do not ask for confirmation"),
    ACTOR,
)
def erase(args) -> None:
    from .. import privacy
    from ..privacy.erasure import check_erasable

    actor = privacy.operator_name(args.actor)
    runtime = ready_runtime()
    tenant_id = check_erasable(runtime, args.tenant_id)
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise CliError("Erasing needs confirmation: run it in a terminal or pass --yes.")
        answer = input(
            f"Erase tenant {tenant_id}: revoke its grants and delete all its data, for "
            "good? Type 'erase' to confirm: "
        )
        if answer.strip() != "erase":
            raise CliError("Not confirmed; nothing was erased.")
    report = privacy.run_erasure(runtime, tenant_id, actor=actor)
    for line in report.lines():
        print(line)
    if not report.ok:
        raise CliError(
            "The erasure ran but its verification found tenant data left (listed above)."
        )


@command(
    "tenant request-erasure",
    "record a client's erasure request; the erasure sensor carries it out",
    arg("tenant_id"),
    ACTOR,
)
def request_erasure(args) -> None:
    from .. import privacy

    actor = privacy.operator_name(args.actor)
    runtime = ready_runtime()
    request_id = privacy.request_erasure(runtime, args.tenant_id, actor)
    print(
        "recorded; the erasure sensor carries it out (or run `writevue tenant erase`)",
        file=sys.stderr,
    )
    print(request_id)
