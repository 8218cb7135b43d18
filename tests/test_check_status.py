"""What the Dagster UI shows for each connection's checks after a batch refresh.

The UI's partition view of a check (and the asset's check status) counts a result only
if it was evaluated against the partition's latest materialization: a result without
that target, or older than the latest materialization, is "not evaluated". So each
result names the materialization it judged (the one its refresh just recorded, or for a
failed refresh the connection's previous one). A check result a run plans but does not
report shows as skipped: which is why every result is reported, passes included
(``WRITEVUE_CHECK_RESULTS=all``, the default).
"""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import (
    AssetCheckKey,
    DagsterInstance,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from support import new_stripe_key, stripe_connections

from writevue_pipelines import registry
from writevue_pipelines.defs import defs
from writevue_pipelines.defs.assets import SOURCE_ASSETS
from writevue_pipelines.defs.checks import FRESH, KEYS_UNIQUE, REFRESHED, VALUES_SANE
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.defs.resources import WriteVueResource
from writevue_pipelines.defs.scaleout import run_config
from writevue_pipelines.defs.schedules import REFRESH_SCHEDULES
from writevue_pipelines.defs.sensors import FAILING_SENSORS
from writevue_sandbox import SandboxServer

STRIPE = SOURCE_ASSETS["stripe"]
STRIPE_PARTITIONS = CONNECTION_PARTITIONS["stripe"]
RESOURCES = {"writevue": WriteVueResource()}
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
TICK = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
SUCCEEDED = AssetCheckExecutionRecordStatus.SUCCEEDED
FAILED = AssetCheckExecutionRecordStatus.FAILED


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer() as server:
        yield server


@pytest.fixture(autouse=True)
def short_history(monkeypatch):
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "3")


def poisoned_key() -> str:
    """A Stripe key whose every answer the sandbox garbles: that connection's refresh fails."""
    return new_stripe_key() + "__f_malformed"


def connections(runtime, instance: DagsterInstance, sandbox, keys: list[str]) -> list[str]:
    """One tenant's Stripe connection per key, each a partition of the instance; their ids."""
    ids = stripe_connections(runtime, sandbox.url, keys, "Check Status Ltd", "a@b.example")
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, ids)
    return ids


def scheduled_batch(instance: DagsterInstance):
    """The schedule's one run request for the instance's connections, executed in process."""
    with build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        repository_def=defs.get_repository_def(),
        resources=RESOURCES,
    ) as context:
        (request,) = REFRESH_SCHEDULES["stripe"].evaluate_tick(context).run_requests
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


def shown(instance: DagsterInstance, check: str) -> dict[str, AssetCheckExecutionRecordStatus]:
    """Per connection, the check's status as the UI counts it: its latest result, if that
    result was evaluated against the partition's latest materialization."""
    key = AssetCheckKey(STRIPE.daily_metrics_key, check)
    return {
        info.partition_key: info.latest_execution_status
        for info in instance.event_log_storage.get_asset_check_partition_info([key])
        if info.is_current
    }


def test_each_connection_s_checks_count_for_its_latest_materialization(runtime, sandbox, instance):
    *healthy, poisoned = connections(
        runtime, instance, sandbox, [new_stripe_key(), new_stripe_key(), poisoned_key()]
    )

    for _ in range(2):  # and again: the second run's results replace the first's
        assert scheduled_batch(instance).success

        assert shown(instance, REFRESHED) == {
            healthy[0]: SUCCEEDED,
            healthy[1]: SUCCEEDED,
            poisoned: FAILED,
        }
        for check in (KEYS_UNIQUE, VALUES_SANE, FRESH):
            assert {p: s for p, s in shown(instance, check).items() if p in healthy} == {
                healthy[0]: SUCCEEDED,
                healthy[1]: SUCCEEDED,
            }, check


def test_a_step_per_connection_counts_its_checks_too(runtime, sandbox, instance):
    # The scale-out job (``stripe_refresh_steps``): one op step per connection.
    healthy, poisoned = connections(runtime, instance, sandbox, [new_stripe_key(), poisoned_key()])

    for _ in range(2):
        result = defs.get_job_def("stripe_refresh_steps").execute_in_process(
            run_config={**run_config("stripe", [healthy, poisoned]), **QUIET},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success  # the poisoned connection's step failed

        assert shown(instance, REFRESHED) == {healthy: SUCCEEDED, poisoned: FAILED}
        for check in (KEYS_UNIQUE, VALUES_SANE, FRESH):
            assert shown(instance, check).get(healthy) == SUCCEEDED, check


def test_with_problems_only_a_healthy_connection_s_checks_show_no_pass(
    runtime, sandbox, instance, monkeypatch
):
    # Why "all" is the default: a result a run plans and does not report is "skipped".
    monkeypatch.setenv("WRITEVUE_CHECK_RESULTS", "problems")
    connections(runtime, instance, sandbox, [new_stripe_key()])  # a healthy one

    assert scheduled_batch(instance).success

    assert shown(instance, REFRESHED) == {}


def test_a_connection_flagged_by_the_retry_sensor_still_shows_failed(
    runtime, sandbox, instance, monkeypatch
):
    monkeypatch.setenv("WRITEVUE_RETRY_ATTEMPTS", "1")
    (connection_id,) = connections(runtime, instance, sandbox, [new_stripe_key()])
    assert scheduled_batch(instance).success  # refreshed once: the partition has data
    with runtime.db.session() as session:
        registry.record_refresh_result(session, connection_id, error="the source said no")

    # its one retry made, its wait over: the sensor flags it on `refreshed`
    cursor = f'{{"{connection_id}": [1, 0, 0]}}'
    with build_sensor_context(instance=instance, resources=RESOURCES, cursor=cursor) as context:
        (flag,) = FAILING_SENSORS["stripe"](context).asset_events
    instance.report_runless_asset_event(flag)  # as the sensor daemon stores it

    assert shown(instance, REFRESHED) == {connection_id: FAILED}
