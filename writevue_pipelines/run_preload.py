"""What a run process needs, imported once by the code server's forkserver (``code_server``).

Importing this module loads Dagster's run machinery, the storages an instance may name,
WriteVue's definitions and what its runs import when they start, and resolves the
definitions into their repository, so that a run forked from the forkserver starts with
all of it in memory. Nothing here opens a file or a connection: the forkserver forks
every run from this state. (polars starts its allocator's and spill cleaner's threads
when imported; a forked run has only the thread that forked, and polars works in it.)

If anything here fails, the forkserver still starts (it ignores a failed preload) and
each run imports what it needs itself, as a spawned run would, and reports any error
in its own log.

What it imported is then frozen (``gc.freeze``): a forked run shares those pages with
the forkserver instead of copying them when its garbage collector runs.
"""

from __future__ import annotations

import contextlib
import gc
import importlib

#: Dagster's run entry point and execution, and the storages an instance may name
DAGSTER_MODULES = (
    "dagster._grpc.impl",
    "dagster._core.execution.api",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "writevue_pipelines.dagster_storage",
)

#: what a run imports when it starts rather than when the code location loads (a
#: notifications run's modules, numpy for its merged series, the mail client): imported
#: here once, a run forked from the forkserver starts without importing them itself
RUN_MODULES = (
    "numpy",
    "writevue_pipelines.notifications.runner",
    "writevue_pipelines.notifications.smtp",
)


def _preload() -> None:
    for name in DAGSTER_MODULES:
        importlib.import_module(name)
    from .defs import defs

    defs.get_repository_def()
    for name in RUN_MODULES:
        importlib.import_module(name)


# See the docstring: if this fails, each run does it again and its log says why.
with contextlib.suppress(Exception):
    _preload()
# What was imported is kept out of the collector's reach: a forked run's collections would
# otherwise walk (and so copy) every page of it, and a run would own about 35 MB more of
# the forkserver's memory (measured with bench.orchestration's runs: 112 MB against 78 MB
# of private memory each).
gc.freeze()
