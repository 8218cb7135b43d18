"""What a run process needs, imported once by the code server's forkserver (``code_server``).

Importing this module loads Dagster's run machinery, the storages an instance may name
and WriteVue's definitions, and resolves the definitions into their repository, so that
a run forked from the forkserver starts with all of it in memory. Nothing here opens a
file, a connection or a thread: the forkserver forks every run from this state.

If anything here fails, the forkserver still starts (it ignores a failed preload) and
each run imports what it needs itself, as a spawned run would, and reports any error
in its own log.
"""

from __future__ import annotations

import contextlib
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


def _preload() -> None:
    for name in DAGSTER_MODULES:
        importlib.import_module(name)
    from .defs import defs

    defs.get_repository_def()


# See the docstring: if this fails, each run does it again and its log says why.
with contextlib.suppress(Exception):
    _preload()
