"""What a run process needs, imported once by the code server's forkserver (``code_server``).

Importing this module loads Dagster's run machinery, the storages an instance may name,
WriteVue's definitions and what its runs import when they start, and resolves the
definitions into their repository, so that a run forked from the forkserver starts with
all of it in memory, Dagster's migration scripts read. Nothing here opens a connection
or keeps a file open: the forkserver forks every run from this state. (polars starts its
allocator's and spill cleaner's threads when imported; a forked run has only the thread
that forked, and polars works in it.)

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
    "writevue_pipelines.dagster_coordinator",
)

#: what Dagster imports only when a run opens its instance and executes (the instance's
#: factory, secrets loader (dotenv), compute logs and storage of its definitions' state
#: (``upath``, which imports fsspec), the execution plan's and executor's modules, the
#: code pointer's loader), PostgreSQL's driver (the production instance's storage) and
#: httpx's certificates: each run imported them itself, about 0.05 s of CPU a run
#: (tests/test_code_server.py watches a run, on either instance, for imports)
RUN_START_MODULES = (
    "dagster._core.instance.factory",
    "dagster._core.secrets.env_file",
    "dagster._core.secrets.loader",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.root",
    "dagster._core.storage.migration.utils",
    "dagster._core.storage.defs_state.blob_storage_state_storage",
    "dagster._core.execution.plan.active",
    "dagster._core.executor.in_process",
    "dagster._core.system_config.composite_descent",
    "dagster._core.utility_ops",
    "dagster._core.workspace.autodiscovery",
    "dagster._utils.temp_file",
    "dagster._utils.test",
    "dagster._utils.test.definitions",
    "upath.core",
    "upath.implementations.local",
    "watchdog.observers.polling",
    "psycopg2.extras",
    "psycopg2.errors",
    "psycopg2._ipaddress",
    "certifi",
    "importlib.readers",
    "importlib.resources.readers",
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
    for name in (*DAGSTER_MODULES, *RUN_START_MODULES):
        importlib.import_module(name)
    from .dagster_storage import read_dagster_migrations

    # Dagster checks every store's migration when a run opens its instance
    read_dagster_migrations()
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
