"""What loading the code location imports.

Every Dagster run's process imports ``writevue_pipelines.defs`` before it starts (and the
code server once): a module that definitions do not need is CPU that every refresh run
pays again (``bench.orchestration`` counts it as Dagster's overhead). The notification
modules are needed only by the ``notifications`` job's op and sensor, which import them
when they run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what the data checks use from the notifications package (its anomaly detector)
CHECKS_USE = {"writevue_pipelines.notifications", "writevue_pipelines.notifications.anomaly"}


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    env = {k: v for k, v in os.environ.items() if k != "WRITEVUE_DATABASE_URL"}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_loading_the_code_location_leaves_the_notification_modules_out():
    loaded = modules_after("import writevue_pipelines.defs")

    notification_modules = {m for m in loaded if m.startswith("writevue_pipelines.notifications")}
    assert notification_modules <= CHECKS_USE


def test_the_notifications_job_and_sensor_are_still_defined():
    loaded = modules_after(
        "from writevue_pipelines.defs import defs\n"
        "assert defs.resolve_job_def('notifications') is not None\n"
        "assert defs.resolve_sensor_def('notifications') is not None"
    )

    assert "writevue_pipelines.defs.notifications" in loaded


def test_a_notifications_run_on_sqlite_loads_neither_psycopg_nor_httpx_command_line():
    """A run's start-up is paid by every batch (``bench.notifications`` counts it): on
    SQLite it has no use for PostgreSQL's driver, and nothing of WriteVue runs httpx's
    command-line client (which would bring rich and click along)."""
    loaded = modules_after(
        "from writevue_pipelines.notifications import runner, delivery\n"
        "from writevue_pipelines import refresh, warehouse\n"
        "import httpx\n"
        "assert callable(httpx.main)"
    )

    assert "httpx" in loaded and "writevue_pipelines.warehouse" in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"psycopg", "rich", "click"}}


def test_polars_runs_on_one_thread_unless_the_operator_says_otherwise():
    """Every WriteVue process that works (a refresh or notifications run, a refresh worker,
    the dashboard server) is one of as many as there are cores, and its polars queries are
    small: a second thread of polars' pool only spins, about 15% more CPU for the same
    query on this machine. ``POLARS_MAX_THREADS`` set by the operator wins."""
    code = "import writevue_pipelines, polars\nassert polars.thread_pool_size() == {}"
    env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}

    subprocess.run([sys.executable, "-c", code.format(1)], cwd=REPO, env=env, check=True)
    subprocess.run(
        [sys.executable, "-c", code.format(2)],
        cwd=REPO,
        env={**env, "POLARS_MAX_THREADS": "2"},
        check=True,
    )


def test_polars_runs_queries_on_its_in_memory_engine_unless_the_operator_says_otherwise():
    """polars' default ("auto") runs a lazy query on its streaming engine, whose set-up
    costs some 150 µs of CPU per query here where the in-memory engine's costs 15 µs; a
    WriteVue process runs many small queries (a connection's load about fifteen).
    ``POLARS_ENGINE_AFFINITY`` set by the operator wins."""
    code = (
        "import writevue_pipelines, polars\n"
        "from polars._plr import get_engine_affinity\n"  # what collect() resolves "auto" to
        "assert get_engine_affinity() == {!r}, get_engine_affinity()"
    )
    env = {k: v for k, v in os.environ.items() if k != "POLARS_ENGINE_AFFINITY"}

    subprocess.run([sys.executable, "-c", code.format("in-memory")], cwd=REPO, env=env, check=True)
    subprocess.run(
        [sys.executable, "-c", code.format("streaming")],
        cwd=REPO,
        env={**env, "POLARS_ENGINE_AFFINITY": "streaming"},
        check=True,
    )
