"""Past one machine: a run's connections are steps that two real Celery workers execute.

The workers are `celery -A writevue_pipelines.defs.celery_app worker`, the command an
operator starts on each machine (deploy/systemd/writevue-refresh-worker@.service's, run
from the unit file), against the RabbitMQ server on 127.0.0.1:5672, on a
queue of their own per test (so no stray worker takes a task). The run is what the run
launcher starts (`dagster job execute` in its own process); the Dagster instance they
share is deploy/dagster.yaml's on the PostgreSQL server (its pools, as shipped), the
warehouse a SQLite file, the provider the sandbox.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, RunsFilter
from support import (
    connection_info,
    deploy_dagster_home,
    new_stripe_key,
    remember_secret,
    stripe_connections,
)

from bench.orchestration import most_at_once
from writevue_devtools.production_check import unit_command
from writevue_pipelines import warehouse
from writevue_pipelines.defs import defs
from writevue_pipelines.defs.assets import SOURCE_ASSETS
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.defs.scaleout import mapping_key, run_config
from writevue_pipelines.processes import spawn, wait_until
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import ConfigError, Settings
from writevue_sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STRIPE = SOURCE_ASSETS["stripe"]
JOB = "stripe_refresh_steps"
STEP = "stripe_refresh_connection"
BROKER = "pyamqp://guest@127.0.0.1:5672//"
#: tasks each worker runs at once; two workers take four, the pool's default limit is two
WORKER_CONCURRENCY = 2
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer() as server:
        yield server


@pytest.fixture(autouse=True)
def short_history(monkeypatch):
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "3")


def add_connections(runtime: Runtime, sandbox_url: str, keys: list[str]) -> list[str]:
    return stripe_connections(runtime, sandbox_url, keys, "Scale Co", "ops@scale.test")


def fact_count(runtime: Runtime, connection_id: str) -> int:
    with runtime.db.session() as session:
        return warehouse.connection_fact_count(session, connection_id)


def step_key(connection_id: str) -> str:
    return f"{STEP}[{mapping_key(connection_id)}]"


def step_statuses(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    return {s.step_key: s.status.value for s in instance.get_run_step_stats(run_id)}


def test_each_connection_is_a_step_of_its_own_in_process(runtime, sandbox, instance):
    poison = new_stripe_key() + "__f_malformed"
    ids = add_connections(runtime, sandbox.url, [new_stripe_key(), poison, new_stripe_key()])
    instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, ids)

    result = defs.get_job_def(JOB).execute_in_process(
        run_config={**run_config("stripe", ids), **QUIET}, instance=instance, raise_on_error=False
    )

    assert not result.success  # one step failed: the poisoned connection's
    statuses = step_statuses(instance, result.run_id)
    assert statuses[step_key(ids[1])] == "FAILURE"
    assert {statuses[step_key(cid)] for cid in (ids[0], ids[2])} == {"SUCCESS"}
    assert instance.get_materialized_partitions(STRIPE.daily_metrics_key) == {ids[0], ids[2]}
    assert instance.get_materialized_partitions(STRIPE.fetch_key) == {ids[0], ids[2]}
    assert connection_info(runtime, ids[1]).status == "failing"
    assert all(connection_info(runtime, cid).status == "active" for cid in (ids[0], ids[2]))
    assert fact_count(runtime, ids[0]) > 0 and fact_count(runtime, ids[1]) == 0
    refreshed = {
        e.partition: e.passed
        for e in result.get_asset_check_evaluations()
        if e.check_name == "refreshed"
    }
    assert refreshed[ids[1]] is False  # per connection, in the asset graph too
    assert all(passed for cid, passed in refreshed.items() if cid != ids[1])
    run = instance.get_run_by_id(result.run_id)
    assert poison not in str(run.tags) + str(run.run_config)


def test_no_connection_ids_means_every_active_connection_of_the_source(runtime, sandbox, instance):
    ids = add_connections(runtime, sandbox.url, [new_stripe_key(), new_stripe_key()])
    result = defs.get_job_def(JOB).execute_in_process(run_config=QUIET, instance=instance)

    assert set(step_statuses(instance, result.run_id)) == {
        "stripe_pick_connections",
        *(step_key(cid) for cid in ids),
    }


def test_every_refresh_step_holds_its_providers_pool():
    for source in SOURCE_ASSETS:
        job = defs.get_job_def(f"{source}_refresh_steps")
        pools = {node.name: node.definition.pool for node in job.nodes}
        assert pools[f"{source}_refresh_connection"] == f"{source}_api"


def test_the_celery_executor_is_chosen_by_the_environment_and_needs_a_broker():
    settings = Settings.from_env({"WRITEVUE_EXECUTOR": "celery", "WRITEVUE_CELERY_BROKER": BROKER})
    assert settings.refresh_executor == "celery" and settings.celery_queue == "writevue"
    assert BROKER not in repr(settings)
    assert Settings.from_env({}).refresh_executor == "in_process"
    with pytest.raises(ConfigError, match="WRITEVUE_CELERY_BROKER"):
        Settings.from_env({"WRITEVUE_EXECUTOR": "celery"})
    with pytest.raises(ConfigError, match="in_process or celery"):
        Settings.from_env({"WRITEVUE_EXECUTOR": "kubernetes"})


# -- two real Celery workers ---------------------------------------------------------------------


@pytest.fixture
def celery_layout(runtime, postgres_url, tmp_path, monkeypatch):
    """Two Celery workers (two tasks at a time each: more than the provider pool's two
    slots, so the pool is what holds the steps back) on a queue of this test's own, the
    production instance (deploy/dagster.yaml) on the PostgreSQL server, and the
    environment a run needs; the workers are stopped with their process groups."""
    (BIN / "celery").exists() or pytest.fail("celery is not installed in the environment")
    dagster_home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster")
    queue = f"writevue-test-{secrets.token_hex(6)}"
    env = {
        **os.environ,
        "WRITEVUE_HOME": str(runtime.settings.home),
        "DAGSTER_HOME": str(dagster_home),
        "WRITEVUE_EXECUTOR": "celery",
        "WRITEVUE_CELERY_BROKER": BROKER,
        "WRITEVUE_CELERY_QUEUE": queue,
        "WRITEVUE_WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "PYTHONPATH": str(REPO),
    }
    env.pop("WRITEVUE_DATABASE_URL", None)
    workers = []
    try:
        for name in ("a", "b"):
            # the command deploy/systemd/writevue-refresh-worker@.service runs
            command = unit_command(
                "writevue-refresh-worker@.service", env, instance=f"{name}-{queue}"
            )
            worker = spawn(
                f"celery worker {name}",
                command,
                env=env,
                cwd=REPO,
                log_path=tmp_path / f"worker-{name}.log",
            )
            workers.append(worker)
        for worker in workers:
            wait_until(
                lambda worker=worker: " ready." in worker.tail(200),
                timeout=120,
                what=worker.name,
                child=worker,
            )
        yield dagster_home, env, workers
    finally:
        for worker in workers:
            worker.stop()
        assert not any(worker.alive() for worker in workers)


def launch(env: dict[str, str], folder: Path, connection_ids: list[str]):
    """A run of the steps job in its own process, as a run launcher starts it."""
    config = folder / f"run-{secrets.token_hex(4)}.yaml"
    config.write_text(yaml.safe_dump(run_config("stripe", connection_ids)))
    command = ["job", "execute", "-m", "writevue_pipelines.defs", "-a", "defs", "-j", JOB]
    return subprocess.run(
        [str(BIN / "dagster"), *command, "-c", str(config), "--tags", '{"writevue/trigger": "t"}'],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def step_intervals(instance: DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each refresh step's start and end, as the instance recorded them."""
    starts, ends = {}, {}
    for record in instance.get_records_for_run(run_id, limit=10_000).records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None or not (entry.step_key or "").startswith(STEP):
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[entry.step_key] = entry.timestamp
    return {key: (starts[key], ends[key]) for key in starts}


def test_two_celery_workers_refresh_a_runs_connections_step_by_step(
    runtime, sandbox, celery_layout, tmp_path
):
    dagster_home, env, workers = celery_layout
    poison = remember_secret(new_stripe_key() + "__f_malformed")
    keys = [new_stripe_key() for _ in range(4)]
    ids = add_connections(runtime, sandbox.url, [keys[0], keys[1], poison, keys[2], keys[3]])
    poisoned, good = ids[2], [cid for cid in ids if cid != ids[2]]

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, ids)
        finished = launch(env, tmp_path, ids)
        assert finished.returncode != 0  # the poisoned connection's step failed

        (run,) = instance.get_runs(RunsFilter(job_name=JOB))
        assert run.status.value == "FAILURE"
        statuses = step_statuses(instance, run.run_id)
        assert statuses[step_key(poisoned)] == "FAILURE"
        assert {statuses[step_key(cid)] for cid in good} == {"SUCCESS"}

        # Every good connection's aggregates were written, and recorded per partition.
        assert all(fact_count(runtime, cid) > 0 for cid in good)
        assert fact_count(runtime, poisoned) == 0
        assert instance.get_materialized_partitions(STRIPE.daily_metrics_key) == set(good)
        assert connection_info(runtime, poisoned).status == "failing"
        assert all(connection_info(runtime, cid).status == "active" for cid in good)

        # The steps ran in both workers, never in the run's own process.
        records = instance.get_records_for_run(run.run_id, limit=10_000).records
        hostnames = {
            str(entry.dagster_event.engine_event_data.metadata["Celery worker"].value)
            for entry in (r.event_log_entry for r in records)
            if entry.dagster_event is not None
            and entry.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
            and "Celery worker" in entry.dagster_event.engine_event_data.metadata
        }
        assert {name.split("@")[0] for name in hostnames} == {
            f"refresh-{n}-{env['WRITEVUE_CELERY_QUEUE']}" for n in ("a", "b")
        }  # RabbitMQ hands a queue's tasks to its consumers in turn
        step_pids = {
            entry.dagster_event.pid
            for entry in (r.event_log_entry for r in records)
            if entry.dagster_event is not None
            and entry.dagster_event.event_type == DagsterEventType.STEP_START
            and (entry.step_key or "").startswith(STEP)
        }
        run_pids = {
            entry.dagster_event.pid
            for entry in (r.event_log_entry for r in records)
            if entry.dagster_event is not None
            and entry.dagster_event.event_type == DagsterEventType.RUN_START
        }
        assert len(step_pids) >= 2 and not step_pids & run_pids

        # The provider's pool held the steps back: five ready at once, four worker slots,
        # the pool's two (deploy/dagster.yaml's default_limit, claimed per step).
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        assert "stripe_api" in instance.event_log_storage.get_concurrency_keys()
        # The run hands a step to Celery only once it holds a slot: two went at once, the
        # third only after a step had ended (without the pool all five go together).
        intervals = step_intervals(instance, run.run_id)
        first_end = min(end for _, end in intervals.values())
        submitted = [
            entry.timestamp
            for entry in (r.event_log_entry for r in records)
            if entry.dagster_event is not None
            and entry.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
            and (entry.dagster_event.message or "").startswith(
                f'Submitting celery task for step "{STEP}['
            )
        ]
        assert len(submitted) == len(ids)
        assert sum(1 for at in submitted if at < first_end) == 2
        assert most_at_once(list(intervals.values())) <= 2

        # With the pool at one slot, the two workers take its connections one at a time.
        instance.event_log_storage.set_concurrency_slots("stripe_api", 1)
        again = launch(env, tmp_path, good[:3])
        assert again.returncode == 0, again.stderr[-2000:]
        latest = instance.get_runs(RunsFilter(job_name=JOB), limit=1)[0]
        intervals = step_intervals(instance, latest.run_id)
        assert len(intervals) == 3 and most_at_once(list(intervals.values())) == 1

    # Nothing secret reached the run's process or the workers' output.
    for text in (finished.stdout, finished.stderr, *(w.tail(10_000) for w in workers)):
        for secret in (poison, *keys):
            assert secret not in text
