"""The production Dagster instance (deploy/dagster.yaml) keeps its PostgreSQL connections.

dagster-postgres opens a new connection for every event it stores (SQLAlchemy's
``NullPool``), and every new connection is a PostgreSQL backend forked for it: a batch
run's 520 events cost more CPU in forks than the run's own work (docs/operations.md).
WriteVue's storage class keeps one connection per process for the event log.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, make_new_run_id
from support import deploy_dagster_home

from writevue_pipelines.dagster_storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
)

EVENTS = 40


def _sessions(postgres_url: str) -> int:
    """Connections ever made to the URL's database (PostgreSQL's own count)."""
    database = urlsplit(postgres_url).path.lstrip("/")
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return row[0]


def test_a_process_stores_and_reads_over_kept_connections(monkeypatch, postgres_url, tmp_path):
    home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster")
    instance = DagsterInstance.from_config(str(home))
    try:
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        assert isinstance(instance.run_storage, PooledPostgresRunStorage)
        assert isinstance(instance.schedule_storage, PooledPostgresScheduleStorage)
        run = instance.add_run(DagsterRun(job_name="storage_test", run_id=make_new_run_id()))
        instance.report_engine_event("warm-up", run)
        before = _sessions(postgres_url)
        for index in range(EVENTS):
            instance.report_engine_event(f"event {index}", run)
            instance.get_runs_count()  # the daemon polls the runs every second
            instance.all_instigator_state()  # and its schedules and sensors
        made = _sessions(postgres_url) - before - 1  # the count's own connection
        stored = [e for e in instance.all_logs(run.run_id) if e.message.startswith("event ")]
    finally:
        instance.dispose()
    assert len(stored) == EVENTS
    assert made <= 3, f"{made} connections made for {EVENTS} events and {2 * EVENTS} reads"


def test_a_kept_connection_the_server_dropped_is_replaced(monkeypatch, postgres_url, tmp_path):
    """A server restart or an idle timeout ends the kept connection: the next event is
    stored over a new one, not lost to an error."""
    home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster")
    instance = DagsterInstance.from_config(str(home))
    database = urlsplit(postgres_url).path.lstrip("/")
    try:
        run = instance.add_run(DagsterRun(job_name="storage_test", run_id=make_new_run_id()))
        instance.report_engine_event("before", run)
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            ended = connection.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()[0]
        assert ended >= 1  # the kept connection was there, and is gone
        instance.report_engine_event("after", run)
        messages = [e.message for e in instance.all_logs(run.run_id)]
    finally:
        instance.dispose()
    assert "before" in messages and "after" in messages


def test_the_storage_class_loads_nothing_of_writevue_but_the_package():
    """The webserver and the daemon import it from dagster.yaml; neither loads the code
    location (a code server does), and neither should for its storage."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, writevue_pipelines.dagster_storage\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('writevue'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [
        "writevue_pipelines",
        "writevue_pipelines.dagster_storage",
        "writevue_pipelines.redaction",
    ]
