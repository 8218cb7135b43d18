"""WriteVue's Dagster code server: ``dagster api grpc`` whose runs start already imported.

    writevue code-server -m writevue_pipelines.defs --location-name writevue -h HOST -p PORT

Dagster's code server starts each run in a new interpreter (multiprocessing's ``spawn``),
which imports Dagster and the code location again before it does anything: about 1.5 s
of CPU and most of a second of wall time per run on a small machine, paid by every
batch a schedule launches. This server is Dagster's own (every option of ``dagster api
grpc``, the same gRPC API, the same run process and events) except that its runs are
forked from a **forkserver**: one process, started with the server, that imports Dagster's
run machinery and WriteVue's definitions once and then forks a run process for each run
it is asked for. The forkserver has only imported (no gRPC, no database connection,
nothing run on polars' thread pool; polars' allocator and spill-cleaner threads, started
by its import, are not carried into a fork), which is what makes forking it safe; each
run process is a child of it, with its own database connections, opened as the run
starts.

A new release still needs a restart of this server (the forkserver holds the code it
imported), as deploy/README.md says for the code server.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import sys
import threading
from collections.abc import Sequence

#: what the forkserver imports before forking runs (see ``writevue_pipelines.run_preload``)
RUN_PRELOAD = "writevue_pipelines.run_preload"


def run_context() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's forkserver context, preloading what a run imports."""
    context = multiprocessing.get_context("forkserver")
    # "__main__" too: a run process otherwise runs the server's main module again
    context.set_forkserver_preload(["__main__", RUN_PRELOAD])
    return context


def _server_class():
    from dagster._grpc.server import DagsterApiServer

    class ForkserverApiServer(DagsterApiServer):
        """Dagster's API server, starting runs from a forkserver instead of by ``spawn``."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._mp_ctx = run_context()
            # Started now, in the background, so that the first run does not wait for
            # the imports (a run started meanwhile waits for the forkserver to answer).
            threading.Thread(
                target=multiprocessing.forkserver.ensure_running,
                name="writevue-forkserver-start",
                daemon=True,
            ).start()

    return ForkserverApiServer


def main(argv: Sequence[str] | None = None) -> int:
    """``dagster api grpc`` with ``argv``, its runs forked from the forkserver."""
    import dagster._grpc.server as grpc_server
    from dagster._cli.api import grpc_command

    # grpc_command imports the server class from its module when it is called.
    grpc_server.DagsterApiServer = _server_class()
    return grpc_command.main(
        args=list(sys.argv[1:] if argv is None else argv),
        prog_name="writevue code-server",
        standalone_mode=True,
    )


if __name__ == "__main__":
    sys.exit(main())
