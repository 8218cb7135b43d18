"""``writevue refresh``, ``writevue serve`` and ``writevue code-server``: run the product's
parts from the shell."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import registry
from .app import CliError, arg, command
from .inputs import ACTOR, REASON, ready_runtime, staff_access
from .progress import Progress, plural


@command(
    "refresh",
    "materialise now, in process (audited with --tenant: one tenant's figures, by hand)",
    arg("--tenant", metavar="TENANT_ID", help="only this tenant's connections (a prefix will do)"),
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
    with Progress() as progress:

        def finished(outcome, done: int, total: int) -> None:
            progress.update("refreshing connections", done, total, quiet=True)
            progress.line(f"[{done}/{total}] {outcome.line()}")

        report = refresh_now(runtime, tenant_id=tenant_id, on_progress=finished)
    lines = report.lines()
    if _same_destination(sys.stdout, sys.stderr):
        lines = lines[-1:]  # each connection's line is there already (a terminal, `2>&1`)
    for line in lines:
        print(line)
    if report.failed:
        raise CliError(
            f"{report.failed} of {plural(report.total, 'connection')} failed to refresh; "
            "each one's line above says why and what to do."
        )


def _same_destination(one, other) -> bool:
    """Whether two streams end up in the same place: one terminal, or one file or pipe."""
    try:
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno()))
    except (OSError, ValueError, AttributeError):  # a stream without a file (captured)
        return False


@command(
    "serve",
    "run the dashboard server",
    arg("--host", default="127.0.0.1"),
    arg("--port", type=int, default=5006),
    audit=False,  # dashboards are for link holders; their use is in the access log
)
def serve(args) -> None:
    from dashboard_server.server import serve

    from ..processes import restore_signals

    restore_signals()  # stops on SIGTERM and Ctrl-C even when started by a background job
    ready_runtime()
    try:
        serve(host=args.host, port=args.port)
    except SystemExit as exc:  # SIGTERM: a clean stop, not an error
        if exc.code != 128 + signal.SIGTERM:
            raise


@command(
    "code-server",
    "run the Dagster code server (as `dagster api grpc`, its runs forked already imported); "
    "`writevue code-server --help` lists its options",
    arg("rest", nargs=argparse.REMAINDER, help="passed to dagster api grpc"),
    audit=False,  # it serves the code location; runs record their own access
    add_help=False,  # --help is Dagster's, which knows its options
)
def code_server(args) -> None:
    from ..processes import restore_signals

    restore_signals()  # stops on SIGTERM and Ctrl-C even when started by a background job
    # Replaced by the server's own process, so that its runs' main module is the server's
    # (a forked run would otherwise import this command line again).
    argv = [sys.executable, "-m", "writevue_pipelines.code_server", *args.rest]
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 -- a fixed program, the operator's arguments
