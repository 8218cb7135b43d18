"""Dagster's instances keep their database connections: the production one
(deploy/dagster.yaml, PostgreSQL) and the embedded one ``writevue init`` writes (SQLite).

dagster-postgres opens a new connection for every event it stores (SQLAlchemy's
``NullPool``), and every new connection is a PostgreSQL backend forked for it: a batch
run's 520 events cost more CPU in forks than the run's own work (docs/operations.md).
Dagster's SQLite storages do the same with files: an engine, a connection and, on its
close, a WAL checkpoint for every statement, two or three per event. WriteVue's storage
classes keep one connection per process and database.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import pytest
from dagster import AssetCheckEvaluation, AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, make_new_run_id
from support import COUNT_MIGRATION_READS, deploy_dagster_home

from writevue_pipelines.dagster_storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
    PooledPostgresScheduleStorage,
    PooledSqliteEventLogStorage,
    PooledSqliteRunStorage,
    PooledSqliteScheduleStorage,
)
from writevue_pipelines.home import init_home
from writevue_pipelines.settings import Settings

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


def test_the_production_event_log_asks_for_its_tables_once(monkeypatch, postgres_url, tmp_path):
    """Dagster asks whether the checks' table exists before storing each check result; the
    answer is remembered, not asked of the server's catalog each time."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster")
    instance = DagsterInstance.from_config(str(home))
    asked: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if "pg_catalog" in statement:
            asked.append(statement)

    try:
        check = AssetCheckEvaluation(asset_key=AssetKey("warm_up"), check_name="ok", passed=True)
        instance.report_runless_asset_event(check)
        event.listen(Engine, "before_cursor_execute", count)
        try:
            for index in range(EVENTS):
                instance.report_runless_asset_event(
                    AssetCheckEvaluation(
                        asset_key=AssetKey(f"asset_{index}"), check_name="ok", passed=True
                    )
                )
        finally:
            event.remove(Engine, "before_cursor_execute", count)
    finally:
        instance.dispose()
    assert asked == [], f"{len(asked)} catalog queries for {EVENTS} check results"


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


def test_the_storage_and_queue_classes_load_nothing_of_writevue_but_the_package():
    """The webserver and the daemon import them from dagster.yaml; neither loads the code
    location (a code server does), and neither should for its storage or run queue."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, writevue_pipelines.dagster_storage\n"
        "import writevue_pipelines.dagster_coordinator\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('writevue'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [
        "writevue_pipelines",
        "writevue_pipelines.dagster_coordinator",
        "writevue_pipelines.dagster_storage",
        "writevue_pipelines.redaction",
    ]


# -- the embedded instance (writevue init) ------------------------------------------------------


@pytest.fixture
def embedded_instance(home):
    """The Dagster instance of a home ``writevue init`` laid out, and a count of the SQLite
    connections opened from then on (SQLAlchemy's ``connect`` event, every engine)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    settings = Settings.from_env()
    init_home(settings)
    opened: list[str] = []

    def count(dbapi_connection, record):
        opened.append(threading.current_thread().name)

    instance = DagsterInstance.from_config(str(settings.dagster_home))
    event.listen(Engine, "connect", count)
    try:
        yield instance, opened
    finally:
        event.remove(Engine, "connect", count)
        instance.dispose()


def test_the_embedded_instance_stores_and_reads_over_kept_connections(embedded_instance):
    instance, opened = embedded_instance
    assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
    assert isinstance(instance.run_storage, PooledSqliteRunStorage)
    assert isinstance(instance.schedule_storage, PooledSqliteScheduleStorage)
    run = instance.add_run(DagsterRun(job_name="storage_test", run_id=make_new_run_id()))
    instance.report_engine_event("warm-up", run)
    instance.report_runless_asset_event(AssetMaterialization(AssetKey("warm_up")))
    instance.report_runless_asset_event(
        AssetCheckEvaluation(asset_key=AssetKey("warm_up"), check_name="ok", passed=True)
    )
    instance.all_instigator_state()
    before = len(opened)
    for index in range(EVENTS):
        instance.report_engine_event(f"event {index}", run)  # the run's own file
        # an asset event: the run's file and the index, and the asset's tables
        instance.report_runless_asset_event(AssetMaterialization(AssetKey(f"asset_{index}")))
        # a check result: Dagster asks whether the checks' table exists before each
        instance.report_runless_asset_event(
            AssetCheckEvaluation(asset_key=AssetKey(f"asset_{index}"), check_name="ok", passed=True)
        )
        instance.get_runs_count()  # the daemon polls the runs every second
        instance.all_instigator_state()  # and its schedules and sensors
    made = len(opened) - before
    stored = [e for e in instance.all_logs(run.run_id) if e.message.startswith("event ")]
    assert len(stored) == EVENTS
    assert instance.get_latest_materialization_event(AssetKey(f"asset_{EVENTS - 1}"))
    assert made == 0, f"{made} connections opened for {3 * EVENTS} events and {2 * EVENTS} reads"


def test_the_embedded_instance_keeps_a_few_run_files_open_and_forgets_wiped_ones(
    embedded_instance,
):
    """The daemon and the webserver move from run to run: they keep the last few runs'
    files open, not every run's; a wipe deletes the files, and a run stored after it is
    written to a new file, not to a deleted one still held open."""
    from writevue_pipelines.dagster_storage import SQLITE_SHARDS_KEPT

    instance, _opened = embedded_instance
    storage = instance.event_log_storage
    runs = [
        instance.add_run(DagsterRun(job_name="storage_test", run_id=make_new_run_id()))
        for _ in range(SQLITE_SHARDS_KEPT + 3)
    ]
    for run in runs:
        instance.report_engine_event("stored", run)
    assert len(storage._engines) == SQLITE_SHARDS_KEPT + 1  # and the index
    assert all(e.message == "stored" for e in instance.all_logs(runs[0].run_id)[-1:])
    instance.wipe()
    run = instance.add_run(DagsterRun(job_name="storage_test", run_id=make_new_run_id()))
    instance.report_engine_event("after the wipe", run)
    again = DagsterInstance.from_config(instance.root_directory)  # another process's view
    try:
        messages = [e.message for e in again.all_logs(run.run_id)]
    finally:
        again.dispose()
    assert "after the wipe" in messages


def test_the_embedded_run_storage_serves_threads_at_once(embedded_instance):
    """The daemon's threads (schedules, sensors, the run queue) use the run storage at once."""
    instance, _opened = embedded_instance
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                instance.add_run(DagsterRun(job_name="storage_test", run_id=make_new_run_id()))
                instance.get_runs_count()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert instance.get_runs_count() == 80


PLANNED = 30


def test_the_embedded_instance_stores_a_runs_planned_events_in_one_batch(embedded_instance):
    """Creating a run stores a planned event per asset (per partition, for a batch run);
    Dagster hands them over as one batch, stored in one transaction per file, with what
    one by one would have stored: each in the run's log and in the asset's index."""
    from dagster import AssetSpec, DagsterEventType, Definitions, define_asset_job, multi_asset
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @multi_asset(specs=[AssetSpec(f"planned_{index}") for index in range(PLANNED)])
    def many():
        return None

    job = Definitions(assets=[many], jobs=[define_asset_job("many_job")]).resolve_job_def(
        "many_job"
    )
    instance, _opened = embedded_instance
    commits: list[int] = []

    def count(conn) -> None:
        if "/history/runs/" in str(conn.engine.url):  # the event log's files, not the runs'
            commits.append(1)

    event.listen(Engine, "commit", count)
    try:
        run = instance.create_run_for_job(job)
    finally:
        event.remove(Engine, "commit", count)
    planned = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ).records
    assert sorted(r.asset_key.path[0] for r in planned) == sorted(
        f"planned_{index}" for index in range(PLANNED)
    )
    for index in range(PLANNED):  # the cross-run index has each asset's planned run
        info = instance.get_latest_planned_materialization_info(AssetKey(f"planned_{index}"))
        assert info is not None and info.run_id == run.run_id
    # the run's new file laid out, then one transaction in it and one in the index
    # (one by one: two per event)
    assert len(commits) <= 5, f"{len(commits)} event log commits for {PLANNED} planned events"


CHECKS = 100


@pytest.fixture(params=["sqlite", "postgres"])
def either_instance(request, monkeypatch, tmp_path):
    """The embedded instance (``writevue init``'s) or the production one (deploy/).
    (On SQLite, statements are counted at their commits.)"""
    if request.param == "sqlite":
        yield request.getfixturevalue("embedded_instance")[0]
        return
    home = deploy_dagster_home(
        monkeypatch, request.getfixturevalue("postgres_url"), tmp_path / "dagster"
    )
    instance = DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


def _own_transaction(conn) -> bool:
    """Whether a statement on PostgreSQL is a transaction of its own: sent on a connection
    in autocommit (dagster-postgres' engines are), not in a transaction begun for it."""
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


@contextmanager
def _event_log_transactions(instance):
    """The event log's transactions meanwhile (a list, one item each): on SQLite its
    files' commits, on PostgreSQL the statements sent outside a transaction."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    transactions: list[int] = []

    def committed(conn) -> None:
        if "/history/runs/" in str(conn.engine.url):  # the event log's files
            transactions.append(1)

    def executed(conn, cursor, statement, parameters, context, executemany) -> None:
        if _own_transaction(conn):
            transactions.append(1)

    sqlite = isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
    name, count = ("commit", committed) if sqlite else ("before_cursor_execute", executed)
    event.listen(Engine, name, count)
    try:
        yield transactions
    finally:
        event.remove(Engine, name, count)


def test_a_runs_check_results_are_stored_together(either_instance):
    """A batch run reports its check results in a row (six per connection): they are
    stored together when the run's next event comes, in one transaction (per file on
    SQLite) instead of two or three per result, each as Dagster would have stored it (the
    check's latest execution, passed or failed, for the run); and a read in the meantime
    finds them stored."""
    from dagster import (
        AssetCheckKey,
        AssetCheckSpec,
        AssetSpec,
        materialize,
        multi_asset,
    )
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    key = AssetKey("checked")
    read_meanwhile = []

    # as WriteVue's refresh is declared (defs.assets): materialisations and check results
    # reported as events, no output required
    @multi_asset(
        specs=[AssetSpec(key, skippable=True)],
        check_specs=[AssetCheckSpec(f"c{i}", asset=key) for i in range(CHECKS)],
        can_subset=True,
    )
    def checked(context):
        yield AssetMaterialization(key)
        for i in range(CHECKS):
            # as a batch run reports them (writevue_pipelines.defs.checks.evaluate)
            yield AssetCheckEvaluation(
                asset_key=key, check_name=f"c{i}", passed=i % 3 != 0, metadata={"i": i}
            )
        latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(key, f"c{CHECKS - 1}")]
        )
        read_meanwhile.append(latest.get(AssetCheckKey(key, f"c{CHECKS - 1}")))

    instance = either_instance
    with _event_log_transactions(instance) as transactions:
        result = materialize([checked], instance=instance)
    assert result.success
    assert read_meanwhile[0] is not None and read_meanwhile[0].run_id == result.run_id
    storage = instance.event_log_storage
    latest = storage.get_latest_asset_check_execution_by_key(
        [AssetCheckKey(key, f"c{i}") for i in range(CHECKS)]
    )
    statuses = {check.name: record.status for check, record in latest.items()}
    assert statuses == {
        f"c{i}": AssetCheckExecutionRecordStatus.SUCCEEDED
        if i % 3
        else AssetCheckExecutionRecordStatus.FAILED
        for i in range(CHECKS)
    }
    assert {record.run_id for record in latest.values()} == {result.run_id}
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == CHECKS
    # one by one: two or three transactions per result, 200-300 for these alone
    assert len(transactions) < CHECKS, f"{len(transactions)} transactions for {CHECKS} results"


MATERIALISATIONS = 60


def test_a_runs_materialisations_are_stored_together_and_read_back_meanwhile(either_instance):
    """A batch run reports a materialisation per connection in a row. On SQLite they are
    stored together when the run's next other event comes, in one transaction per file
    instead of two or three each, so another process sees them only then; on PostgreSQL
    as they come (a transaction holding the asset's row for them all kept other runs
    waiting), so another process sees them at once. Either way each is stored as Dagster
    would have stored it (the partition's latest materialisation, its metadata, the
    asset's last run), and a read in the meantime in the run's own process (the checks'
    targets: the latest per partition) finds them all, in order."""
    from dagster import (
        AssetSpec,
        DagsterEventType,
        DynamicPartitionsDefinition,
        materialize,
        multi_asset,
    )

    key = AssetKey("kept")
    partitions = DynamicPartitionsDefinition(name="kept_partitions")
    keys = [f"p{index:03d}" for index in range(MATERIALISATIONS)]
    read_meanwhile: dict[str, int] = {}
    seen_elsewhere: list[int] = []

    # as WriteVue's refresh reports its connections (defs.assets)
    @multi_asset(specs=[AssetSpec(key, skippable=True)], partitions_def=partitions, can_subset=True)
    def kept(context):
        for partition in context.partition_keys:
            yield AssetMaterialization(key, partition=partition, metadata={"n": int(partition[1:])})
        with DagsterInstance.from_ref(context.instance.get_ref()) as elsewhere:  # a process
            found = elsewhere.get_latest_storage_id_by_partition(
                key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(keys)
            )
            seen_elsewhere.append(len(found))
        read_meanwhile.update(
            context.instance.get_latest_storage_id_by_partition(
                key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(keys)
            )
        )

    instance = either_instance
    instance.add_dynamic_partitions(partitions.name, keys)
    with _event_log_transactions(instance) as transactions:
        result = materialize(
            [kept],
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
        )
    assert result.success
    assert sorted(read_meanwhile, key=read_meanwhile.__getitem__) == keys
    records = instance.fetch_materializations(key, limit=MATERIALISATIONS + 1).records
    assert {
        record.partition_key: record.asset_materialization.metadata["n"].value for record in records
    } == {partition: int(partition[1:]) for partition in keys}
    assert {record.run_id for record in records} == {result.run_id}
    assert instance.get_materialized_partitions(key) == set(keys)
    (asset,) = instance.get_asset_records([key])
    assert asset.asset_entry.last_materialization_record.run_id == result.run_id
    if isinstance(instance.event_log_storage, PooledSqliteEventLogStorage):
        assert seen_elsewhere == [0]
        # one by one: two or three transactions per materialisation, 120-180 for these
        assert len(transactions) < MATERIALISATIONS, (
            f"{len(transactions)} transactions for {MATERIALISATIONS} materialisations"
        )
    else:
        assert seen_elsewhere == [MATERIALISATIONS]


# -- Dagster's migration scripts -------------------------------------------------------------

#: in a process of its own (nothing read yet): opens the instance of DAGSTER_HOME three
#: times, each storing an event of a new run (SQLite: a new file of the run's, created and
#: stamped), and prints how often Dagster's migration scripts were read and each store's
#: (stored, newest) migration
_READS_MIGRATIONS = (
    COUNT_MIGRATION_READS
    + """
import json
from alembic.runtime.migration import MigrationContext
from dagster import DagsterInstance
from dagster._core.storage.dagster_run import DagsterRun, make_new_run_id

versions = []
for _ in range(3):
    instance = DagsterInstance.get()
    run = instance.add_run(DagsterRun(job_name="migrations", run_id=make_new_run_id()))
    instance.report_engine_event("stored", run)
    assert [e.message for e in instance.all_logs(run.run_id)] == ["stored"]
    for store in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        versions.append(list(store.alembic_version()))
    with instance.event_log_storage.run_connection(run.run_id) as conn:  # SQLite: its file
        versions.append([MigrationContext.configure(conn).get_current_revision(), versions[-1][1]])
    instance.dispose()
print(json.dumps({"reads": reads, "versions": versions}))
"""
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_process_reads_dagsters_migration_scripts_once(kind, request, monkeypatch, tmp_path):
    """Dagster checks each store's migration against the newest of its ~90 scripts, which
    it reads (executing each file) at every check: three or four times for every run, in
    the daemon that launches it and in the run itself, about 35 ms of CPU each time. The
    scripts of an installed Dagster do not change while a process runs: read once."""
    import json
    import subprocess
    import sys

    if kind == "sqlite":
        request.getfixturevalue("home")
        init_home(Settings.from_env())
    else:
        home = deploy_dagster_home(monkeypatch, request.getfixturevalue("postgres_url"), tmp_path)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
    result = subprocess.run(
        [sys.executable, "-c", _READS_MIGRATIONS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert len(out["reads"]) == 1, out["reads"]
    # every store is at Dagster's newest migration, the new runs' files included
    assert len(out["versions"]) == 12
    for stored, newest in out["versions"]:
        assert stored and stored == newest
