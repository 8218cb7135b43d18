"""Orchestration at scale: batched schedule runs, failure isolation, retries, the instances.

Runs execute in process (the tests are about how connections are grouped into runs and
what each run records); the bench (`python -m bench.orchestration`) drives the same
schedule through a real daemon and run launcher. History is kept to three days so a
refresh of 120 sandbox connections takes seconds.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import pytest
from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    DagsterRunStatus,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
    serialize_value,
)
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from sqlalchemy import delete
from support import (
    apply_partition_requests,
    connection_info,
    deploy_dagster_home,
    new_stripe_key,
    remember_secret,
    stripe_connections,
)

from writevue_pipelines import registry
from writevue_pipelines.defs import defs, sensors
from writevue_pipelines.defs.assets import SOURCE_ASSETS
from writevue_pipelines.defs.batches import RANGE_END_TAG, RANGE_START_TAG, TRIGGER_TAG
from writevue_pipelines.defs.checks import (
    FRESH,
    REFRESHED,
    VALUES_SANE,
    VOLUME_STEADY,
    volume_drops,
)
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.defs.resources import WriteVueResource
from writevue_pipelines.defs.schedules import REFRESH_SCHEDULES
from writevue_pipelines.defs.sensors import CONNECTION_SENSORS, FAILING_SENSORS
from writevue_pipelines.home import init_home
from writevue_pipelines.models import Connection, Credential, Fact
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings
from writevue_sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[1]
STRIPE = SOURCE_ASSETS["stripe"]
STRIPE_PARTITIONS = CONNECTION_PARTITIONS["stripe"]
RESOURCES = {"writevue": WriteVueResource()}
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
TENANT_NAME = "Marchbanks Velvet Cartography Co"
TENANT_EMAIL = "ledger@marchbanks-velvet.example"
TICK = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer() as server:
        yield server


@pytest.fixture(autouse=True)
def short_history(monkeypatch):
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "3")


def add_connections(runtime: Runtime, sandbox_url: str, keys: list[str]) -> list[str]:
    """One tenant with a Stripe connection per key, in one transaction."""
    return stripe_connections(runtime, sandbox_url, keys, TENANT_NAME, TENANT_EMAIL)


def run(instance: DagsterInstance, request):
    """Execute a run request in process, as the run launcher would out of process."""
    return materialize(
        [STRIPE.refresh],
        instance=instance,
        resources=RESOURCES,
        selection=request.asset_selection,
        partition_key=request.partition_key,
        tags=request.tags,
        run_config=QUIET,
        raise_on_error=False,
    )


def schedule_tick(instance: DagsterInstance):
    with build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        repository_def=defs.get_repository_def(),
        resources=RESOURCES,
    ) as context:
        return REFRESH_SCHEDULES["stripe"].evaluate_tick(context).run_requests


def check_results(result, name: str) -> dict[str, object]:
    return {e.partition: e for e in result.get_asset_check_evaluations() if e.check_name == name}


def test_a_scheduled_refresh_of_120_connections_takes_3_runs(runtime, sandbox, instance):
    connection_ids = add_connections(runtime, sandbox.url, [new_stripe_key() for _ in range(120)])
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, connection_ids)

    requests = schedule_tick(instance)

    assert len(requests) == 3
    assert [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in requests] == [
        (connection_ids[0], connection_ids[49]),
        (connection_ids[50], connection_ids[99]),
        (connection_ids[100], connection_ids[119]),
    ]
    assert all(r.tags[TRIGGER_TAG] == "schedule" for r in requests)
    results = [run(instance, request) for request in requests]
    assert all(result.success for result in results)
    for key in STRIPE.keys:
        assert instance.get_materialized_partitions(key) == set(connection_ids)
    events = [e for result in results for e in result.get_asset_materialization_events()]
    assert len(events) == 240  # one per connection and asset, each with its own counts
    assert all(e.materialization.metadata for e in events)
    assert len(instance.get_runs()) == 3
    assert all(connection_info(runtime, cid).status == "active" for cid in connection_ids[::40])


def test_one_poisoned_connection_fails_alone_and_is_retried_alone(
    runtime, sandbox, instance, monkeypatch
):
    # A source that answers garbage for this account: a failure that a retry may cure
    # (a refused key is not retried: it needs reconnecting, see the test below).
    poison = new_stripe_key() + "__f_malformed"
    good_keys = [new_stripe_key() for _ in range(4)]
    ids = add_connections(runtime, sandbox.url, [*good_keys[:2], poison, *good_keys[2:]])
    poisoned = ids[2]

    # A new batch of connections: one first-refresh run for all five.
    with build_sensor_context(instance=instance, resources=RESOURCES) as context:
        added = CONNECTION_SENSORS["stripe"](context)
    apply_partition_requests(instance, added)
    (request,) = added.run_requests
    result = run(instance, request)

    assert result.success  # the batch is not failed by one connection
    metrics = STRIPE.daily_metrics_key
    assert instance.get_materialized_partitions(metrics) == set(ids) - {poisoned}
    refreshed = check_results(result, REFRESHED)
    assert {p for p, e in refreshed.items() if not e.passed} == {poisoned}
    assert "not JSON" in refreshed[poisoned].description
    assert poison not in refreshed[poisoned].description
    failing = connection_info(runtime, poisoned)
    assert failing.status == "failing" and poison not in failing.last_error
    assert "not JSON" in failing.last_error
    assert all(connection_info(runtime, cid).status == "active" for cid in ids if cid != poisoned)

    # Retried alone, once its first wait is over, and cured by a new key.
    now = 1_900_000_000.0
    monkeypatch.setattr(sensors, "_now", lambda: now)
    cursor = tick_failing(instance).cursor
    monkeypatch.setattr(sensors, "_now", lambda: now + 16 * 60)
    retry = tick_failing(instance, cursor)
    (request,) = retry.run_requests
    assert request.partition_key == poisoned and request.tags[TRIGGER_TAG] == "retry"
    with runtime.db.session() as session:
        registry.put_secret(
            session, runtime.keys, failing.tenant_id, poisoned, "api_key", new_stripe_key()
        )
    retried = run(instance, request)
    assert retried.success
    assert {e.materialization.partition for e in retried.get_asset_materialization_events()} == {
        poisoned
    }
    assert connection_info(runtime, poisoned).status == "active"
    assert tick_failing(instance, retry.cursor).skip_reason is not None

    # Nothing personal or secret reached the instance: runs, tags, events, files.
    stored = [serialize_value(r) for r in instance.get_runs()]
    for run_record in instance.get_runs():
        stored += [
            serialize_value(r.event_log_entry)
            for r in instance.get_records_for_run(run_record.run_id).records
        ]
    for path in Path(instance.root_directory).rglob("*"):
        if path.is_file():
            stored.append(path.read_bytes().decode("utf-8", "replace"))
    text = "\n".join(stored)
    assert poisoned in text
    for secret in (TENANT_NAME, TENANT_EMAIL, poison, poison[-12:], *good_keys):
        assert secret not in text


def test_with_check_results_problems_a_batch_reports_only_what_fails_or_recovers(
    runtime, sandbox, instance, monkeypatch
):
    # Each reported check result is an event the instance stores one write at a time; with
    # WRITEVUE_CHECK_RESULTS=problems a healthy connection reports none (by default every
    # result is reported: tests/test_operator_experience.py).
    monkeypatch.setenv("WRITEVUE_CHECK_RESULTS", "problems")
    healthy, broken, recovering = add_connections(
        runtime, sandbox.url, [new_stripe_key() for _ in range(3)]
    )
    long_ago = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=60)
    with runtime.db.session() as session:
        # A negative count on a day before the refresh window, which the refresh keeps.
        session.add(
            Fact(
                tenant_id=registry.get_connection(session, broken).tenant_id,
                connection_id=broken,
                metric="charges",
                dimension="",
                day=long_ago,
                value=-1.0,
            )
        )
        registry.record_refresh_result(session, recovering, error="the source said no")
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, [healthy, broken, recovering])
    (request,) = schedule_tick(instance)

    result = run(instance, request)

    assert result.success
    assert instance.get_materialized_partitions(STRIPE.daily_metrics_key) == {
        healthy,
        broken,
        recovering,
    }
    reported = {
        (e.partition, e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
        # whether the sandbox's seeded days dip is not this test's business
        if e.check_name != VOLUME_STEADY
    }
    assert reported == {
        (broken, VALUES_SANE): False,
        (recovering, REFRESHED): True,
        (recovering, FRESH): True,
    }
    assert connection_info(runtime, recovering).status == "active"


def test_a_connection_deleted_since_the_tick_does_not_fail_its_batch(runtime, sandbox, instance):
    ids = add_connections(runtime, sandbox.url, [new_stripe_key() for _ in range(3)])
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, ids)
    (request,) = schedule_tick(instance)
    with runtime.db.session() as session:
        session.execute(delete(Credential).where(Credential.connection_id == ids[1]))
        session.execute(delete(Connection).where(Connection.id == ids[1]))

    result = run(instance, request)

    assert result.success
    assert instance.get_materialized_partitions(STRIPE.daily_metrics_key) == {ids[0], ids[2]}


def tick_failing(instance: DagsterInstance, cursor: str | None = None):
    with build_sensor_context(instance=instance, resources=RESOURCES, cursor=cursor) as context:
        return FAILING_SENSORS["stripe"](context)


def test_a_refused_key_needs_reconnect_and_is_not_retried(runtime, sandbox, instance, monkeypatch):
    refused = remember_secret("bad_key_" + secrets.token_hex(12))
    (connection_id,) = add_connections(runtime, sandbox.url, [refused])
    with build_sensor_context(instance=instance, resources=RESOURCES) as context:
        added = CONNECTION_SENSORS["stripe"](context)
    apply_partition_requests(instance, added)
    (request,) = added.run_requests

    result = run(instance, request)

    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("needs reconnect: ") and "refused the credentials" in message
    assert refused not in message
    (check,) = check_results(result, REFRESHED).values()
    assert not check.passed and check.description == message
    stored = connection_info(runtime, connection_id)
    assert stored.status == "needs_reauth" and stored.last_error == message
    # The same key would be refused again: the failing-connections sensor leaves it alone.
    monkeypatch.setattr(sensors, "_now", lambda: 1_900_000_000.0 + 24 * 3600)
    assert not tick_failing(instance).run_requests
    # The operator re-enters a working key; the next refresh finds the connection active.
    with runtime.db.session() as session:
        registry.put_secret(
            session, runtime.keys, stored.tenant_id, connection_id, "api_key", new_stripe_key()
        )
    assert run(instance, request).success
    assert connection_info(runtime, connection_id).status == "active"


def test_a_connection_that_keeps_failing_is_flagged_once(runtime, sandbox, instance, monkeypatch):
    monkeypatch.setenv("WRITEVUE_RETRY_ATTEMPTS", "1")
    (connection_id,) = add_connections(runtime, sandbox.url, [new_stripe_key()])
    with runtime.db.session() as session:
        registry.record_refresh_result(session, connection_id, error="the source said no")
    start = 1_900_000_000.0
    cursor = None
    outcomes = []
    for minutes in (0, 16, 16 + 31, 16 + 62):
        monkeypatch.setattr(sensors, "_now", lambda m=minutes: start + m * 60)
        result = tick_failing(instance, cursor)
        cursor = result.cursor
        outcomes.append((len(result.run_requests), len(result.asset_events)))

    # wait, retry once, flag, then stay quiet until a refresh succeeds
    assert outcomes == [(0, 0), (1, 0), (0, 1), (0, 0)]


def test_the_flag_is_a_failed_refreshed_check_for_that_connection(runtime, sandbox, monkeypatch):
    monkeypatch.setenv("WRITEVUE_RETRY_ATTEMPTS", "1")
    (connection_id,) = add_connections(runtime, sandbox.url, [new_stripe_key()])
    with runtime.db.session() as session:
        registry.record_refresh_result(session, connection_id, error="the source said no")
    cursor = f'{{"{connection_id}": [1, 0, 0]}}'
    with instance_for_test() as instance:
        result = tick_failing(instance, cursor)
    (flag,) = result.asset_events
    assert (flag.asset_key, flag.check_name, flag.partition) == (
        STRIPE.daily_metrics_key,
        REFRESHED,
        connection_id,
    )
    assert not flag.passed and flag.severity == AssetCheckSeverity.ERROR


def test_volume_drop_compares_the_last_whole_day_with_the_week_before():
    today = dt.date(2026, 3, 10)
    week = [("charges", today - dt.timedelta(days=n), 10.0) for n in range(2, 9)]
    assert (
        volume_drops([*week, ("charges", today - dt.timedelta(days=1), 9.0)], ["charges"], today)
        == []
    )
    assert volume_drops(
        [*week, ("charges", today - dt.timedelta(days=1), 2.0)], ["charges"], today
    ) == ["charges"]
    # today is still filling up; a short history says nothing
    assert volume_drops([*week, ("charges", today, 0.0)], ["charges"], today) == []
    assert volume_drops(week[-2:], ["charges"], today) == []


def test_writevue_init_writes_a_queued_instance_with_provider_pools(home):
    settings = Settings.from_env()
    init_home(settings)

    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 2
        assert config.pool_config.pool_granularity.value == "run"
        assert config.run_queue_config.max_concurrent_runs == 4
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_coordinator.dequeue_interval_seconds == 0.5
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert Path(instance.root_directory) == settings.dagster_home


def _queue_wait(instance: DagsterInstance, deadline_s: float, end_a_run=None) -> float:
    """How long the queue daemon's wait between passes lasted (seconds), with a run ended
    (``end_a_run``) while it waits."""
    import logging
    import threading
    import time

    from writevue_pipelines.dagster_coordinator import _until_next_pass

    started = time.monotonic()
    waiting = _until_next_pass(
        instance, threading.Event(), time.time() + deadline_s, logging.getLogger("queue")
    )
    next(waiting)  # its first sleep
    if end_a_run is not None:
        end_a_run()
    for _ in waiting:
        pass
    return time.monotonic() - started


def _remote_origin(job_name: str):
    """Where the queue finds a job of the code location, as a queued run names it."""
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="writevue_pipelines.defs"), location_name="writevue"
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job_name)


def _runs(instance: DagsterInstance, *statuses):
    """Runs of the Stripe refresh in these states, as the queue stores them."""
    job = defs.resolve_job_def("refresh_stripe")
    origin = _remote_origin(job.name)
    return [
        instance.create_run_for_job(job_def=job, status=status, remote_job_origin=origin)
        for status in statuses
    ]


def test_the_queue_daemon_looks_again_once_a_run_ends_while_others_wait(home):
    """Between two passes of the run queue, the daemon waits its interval, unless runs are
    queued and one under way ends: then it looks at once (tests/test_code_server.py
    watches the real daemon start the run waiting for that slot)."""
    settings = Settings.from_env()
    init_home(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        running, _queued = _runs(instance, DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED)
        waited = _queue_wait(instance, 60, lambda: instance.report_run_canceled(running))
    assert waited < 10, f"the daemon waited {waited:.1f} s after a slot was freed"


def test_with_nothing_queued_the_queue_daemon_waits_its_interval(home):
    """No run waits: a run that ends frees no slot anyone needs, and the daemon sleeps until
    its next pass, as Dagster's does (no counting meanwhile)."""
    settings = Settings.from_env()
    init_home(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        (running,) = _runs(instance, DagsterRunStatus.STARTED)
        waited = _queue_wait(instance, 1.5, lambda: instance.report_run_canceled(running))
    assert waited >= 1.4, f"the daemon looked again after {waited:.2f} s, not at its interval"


def test_the_queue_daemon_sleeps_its_interval_when_it_cannot_count_the_runs(home, caplog):
    """The run storage failing while runs wait (here its table gone): the daemon's wait is
    its interval, as Dagster's, with one warning; its next pass reports the storage's
    error as Dagster's does."""
    import sqlite3

    settings = Settings.from_env()
    init_home(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        _runs(instance, DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED)
        runs_db = Path(instance.root_directory) / "storage" / "history" / "runs.db"

        def break_the_storage() -> None:
            with sqlite3.connect(runs_db) as db:
                db.execute("ALTER TABLE runs RENAME TO runs_gone")

        waited = _queue_wait(instance, 1.5, break_the_storage)
    assert waited >= 1.4, f"the daemon looked again after {waited:.2f} s"
    warnings = [r.getMessage() for r in caplog.records if r.name == "queue"]
    assert warnings == ["could not count the runs under way; looking again later"]


def test_queueing_a_run_stores_its_pools_default_limit_and_keeps_an_operators(home):
    """The first run of a provider queued on a fresh instance brings its pool's default limit
    with it (tests/test_code_server.py watches the daemon's pass keep to it); a limit the
    operator set is left as it was."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from writevue_pipelines.defs.assets import REFRESH_JOBS, pool_name

    repository = ReconstructableRepository.for_module("writevue_pipelines.defs", "defs")
    settings = Settings.from_env()
    init_home(settings)
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(pool_name("github"), 1)  # the operator's
        for source in ("stripe", "github"):
            job = defs.resolve_job_def(REFRESH_JOBS[source].name)
            run = instance.create_run_for_job(
                job_def=job,
                remote_job_origin=_remote_origin(job.name),
                job_code_origin=repository.get_reconstructable_job(job.name).get_python_origin(),
            )
            instance.submit_run(run.run_id, workspace=None)
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.QUEUED
        limits = {
            limit.name: (limit.limit, limit.from_default) for limit in storage.get_pool_limits()
        }
    assert limits == {pool_name("stripe"): (2, True), pool_name("github"): (1, False)}


def test_a_schedule_tick_and_its_runs_on_the_postgres_instance_of_deploy(
    runtime, sandbox, postgres_url, tmp_path, monkeypatch
):
    dagster_home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster-pg")
    monkeypatch.setenv("WRITEVUE_REFRESH_BATCH", "2")
    assert "password" not in (dagster_home / "dagster.yaml").read_text().split("env:")[0]
    connection_ids = add_connections(runtime, sandbox.url, [new_stripe_key() for _ in range(3)])

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        # dagster-postgres' storage, each part keeping its connections (dagster_storage)
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
        with build_sensor_context(instance=instance, resources=RESOURCES) as context:
            apply_partition_requests(instance, CONNECTION_SENSORS["stripe"](context))
        requests = schedule_tick(instance)
        assert len(requests) == 2  # three connections, batches of two
        assert all(run(instance, request).success for request in requests)
        assert instance.get_materialized_partitions(STRIPE.daily_metrics_key) == set(connection_ids)
        assert len(instance.get_runs()) == 2
