"""``writevue refresh`` and ``writevue serve``: run the product's two halves from the shell."""

from __future__ import annotations

from .. import registry
from .app import CliError, arg, command
from .inputs import ready_runtime


@command(
    "refresh",
    "materialise now, in process",
    arg("--tenant"),
    arg("--actor", help="with --tenant: who, for the staff audit"),
)
def refresh(args) -> None:
    from ..defs.refresh_now import refresh_now

    runtime = ready_runtime()
    tenant_id = None
    if args.tenant:
        from ..privacy import operator_name, record_access

        actor = operator_name(args.actor)
        with runtime.db.session() as session:
            tenant_id = registry.require_tenant(session, args.tenant)
        record_access(runtime, actor, "tenant.refresh", tenant_id)
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
)
def serve(args) -> None:
    from dashboard_server.server import serve

    ready_runtime()
    serve(host=args.host, port=args.port)
