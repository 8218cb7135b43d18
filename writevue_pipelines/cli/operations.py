"""``writevue refresh`` and ``writevue serve``: run the product's two halves from the shell."""

from __future__ import annotations

from .. import registry
from .app import CliError, arg, command
from .inputs import ACTOR, REASON, ready_runtime, staff_access


@command(
    "refresh",
    "materialise now, in process (audited with --tenant: one tenant's figures, by hand)",
    arg("--tenant"),
    ACTOR,
    REASON,
    audit="tenant.refresh",  # with --tenant; every tenant's is the schedule's work, by hand
)
def refresh(args) -> None:
    from ..defs.refresh_now import refresh_now

    access = staff_access(args) if args.tenant else None
    runtime = ready_runtime()
    tenant_id = None
    if access is not None:
        with runtime.db.session() as session:
            tenant_id = registry.require_tenant(session, args.tenant)
        access.record(runtime, tenant_id)
    report = refresh_now(runtime, tenant_id=tenant_id)
    for line in report.lines():
        print(line)
    if report.failed:
        raise CliError(f"{report.failed} of {report.total} connections failed to refresh.")


@command(
    "serve",
    "run the dashboard server",
    arg("--host", default="127.0.0.1"),
    arg("--port", type=int, default=5006),
    audit=False,  # dashboards are for link holders; their use is in the access log
)
def serve(args) -> None:
    from dashboard_server.server import serve

    ready_runtime()
    serve(host=args.host, port=args.port)
