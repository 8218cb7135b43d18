"""The Dagster code location: per-connection partitions, the asset pair, sensors, refresh_now.

Schedules, batching, failure isolation and the instance configuration are in
test_orchestration.py.

Everything runs for real: a SQLite warehouse under a temporary WRITEVUE_HOME, the
sandbox provider over HTTP on loopback, and Dagster instances on disk.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    SensorEvaluationContext,
    SensorResult,
    build_sensor_context,
    materialize,
    serialize_value,
)
from support import (
    add_stripe_connection,
    apply_partition_requests,
    connection_info,
    new_stripe_key,
)

from writevue_pipelines import warehouse
from writevue_pipelines.defs import defs
from writevue_pipelines.defs.assets import SOURCE_ASSETS
from writevue_pipelines.defs.batches import RANGE_END_TAG as RANGE_END
from writevue_pipelines.defs.batches import RANGE_START_TAG as RANGE_START
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.defs.refresh_now import refresh_now
from writevue_pipelines.defs.resources import WriteVueResource
from writevue_pipelines.defs.sensors import CONNECTION_SENSORS
from writevue_pipelines.models import Connection
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import SOURCES
from writevue_sandbox import SandboxServer

REPO = Path(__file__).resolve().parents[1]
STRIPE = SOURCE_ASSETS["stripe"]
STRIPE_PARTITIONS = CONNECTION_PARTITIONS["stripe"]
RESOURCES = {"writevue": WriteVueResource()}
# Distinctive, so a hit in the Dagster instance cannot be a coincidence.
TENANT_NAME = "Quillfeather Haberdashery Ltd"
TENANT_EMAIL = "accounts@quillfeather-haberdashery.example"


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer() as server:
        yield server


def materialize_stripe(instance: DagsterInstance, connection_id: str, **kwargs):
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, [connection_id])
    return materialize(
        [STRIPE.refresh],
        instance=instance,
        resources=RESOURCES,
        partition_key=connection_id,
        raise_on_error=False,
        **kwargs,
    )


def fact_count(runtime: Runtime, connection_id: str) -> tuple[int, int]:
    with runtime.db.session() as session:
        return (
            warehouse.connection_fact_count(session, connection_id),
            warehouse.duplicate_keys(session, connection_id),
        )


def test_every_source_has_partitions_an_asset_pair_and_a_sensor():
    graph = defs.resolve_asset_graph()
    for source in SOURCES:
        assert CONNECTION_PARTITIONS[source].name == f"{source}_connections"
        fetch = graph.get(SOURCE_ASSETS[source].fetch_key)
        metrics = graph.get(SOURCE_ASSETS[source].daily_metrics_key)
        assert fetch.key.to_user_string() == f"{source}_fetch"
        assert metrics.key.to_user_string() == f"{source}_daily_metrics"
        assert metrics.parent_keys == {fetch.key}
        assert fetch.partitions_def == metrics.partitions_def == CONNECTION_PARTITIONS[source]
        assert defs.resolve_sensor_def(f"{source}_connection_partitions") is not None
        assert defs.resolve_sensor_def(f"{source}_failing_connections") is not None
        assert defs.resolve_schedule_def(f"{source}_refresh").execution_timezone == "UTC"
        checks = {key.name for key in graph.asset_check_keys if key.asset_key == metrics.key}
        assert checks == {
            "refreshed",
            "keys_unique",
            "values_sane",
            "fresh",
            "volume_steady",
            "values_usual",
        }
        assert fetch.description and metrics.description


def test_both_assets_write_facts_for_a_connection(runtime, sandbox, instance):
    _, connection_id = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
    )

    result = materialize_stripe(instance, connection_id)

    assert result.success
    facts, duplicates = fact_count(runtime, connection_id)
    assert facts > 0 and duplicates == 0
    refreshed = connection_info(runtime, connection_id)
    assert refreshed.status == "active" and refreshed.last_refreshed_at is not None
    # Raw records are transient: the staging folder is gone once aggregated.
    assert not (runtime.settings.staging_dir / connection_id).exists()
    events = {
        event.asset_key.to_user_string(): event.materialization
        for event in result.get_asset_materialization_events()
    }
    assert events.keys() == {"stripe_fetch", "stripe_daily_metrics"}
    assert {m.partition for m in events.values()} == {connection_id}
    assert events["stripe_fetch"].metadata["records"].value > 0
    assert events["stripe_daily_metrics"].metadata["facts"].value == facts


def test_rematerialising_writes_no_duplicate_rows(runtime, sandbox, instance):
    _, connection_id = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
    )
    assert materialize_stripe(instance, connection_id).success
    first = fact_count(runtime, connection_id)

    assert materialize_stripe(instance, connection_id).success

    assert fact_count(runtime, connection_id) == first
    assert first[1] == 0


def test_a_partition_range_fetches_all_its_connections_in_one_run(runtime, sandbox, instance):
    tenant_id, first = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
    )
    _, second = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), tenant_id=tenant_id)
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, [first, second])

    result = materialize(
        [STRIPE.refresh],
        instance=instance,
        resources=RESOURCES,
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": second,
        },
    )

    assert result.success
    by_partition = {
        (e.asset_key.to_user_string(), e.materialization.partition): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    for connection_id in (first, second):
        facts, duplicates = fact_count(runtime, connection_id)
        assert facts > 0 and duplicates == 0
        # Each partition carries its own connection's counts, not the run's total.
        assert by_partition[("stripe_daily_metrics", connection_id)]["facts"].value == facts


def test_dagster_instance_holds_no_tenant_name_email_or_key(runtime, sandbox, instance):
    good_key, bad_key = new_stripe_key(), "bad_key_" + secrets.token_hex(12)
    tenant_id, good = add_stripe_connection(
        runtime, sandbox.url, good_key, name=TENANT_NAME, email=TENANT_EMAIL
    )
    _, bad = add_stripe_connection(runtime, sandbox.url, bad_key, tenant_id=tenant_id)
    runs = [materialize_stripe(instance, good).run_id, materialize_stripe(instance, bad).run_id]

    stored = [serialize_value(instance.get_run_by_id(run_id)) for run_id in runs]
    for run_id in runs:
        stored += [
            serialize_value(r.event_log_entry) for r in instance.get_records_for_run(run_id).records
        ]
    stored.append(repr(instance.get_dynamic_partitions(STRIPE_PARTITIONS.name)))
    # Every byte the instance wrote to disk: run and event storage, compute logs.
    for path in Path(instance.root_directory).rglob("*"):
        if path.is_file():
            stored.append(path.read_bytes().decode("utf-8", "replace"))
    text = "\n".join(stored)

    assert good in text and bad in text  # the search does look at the right records
    for secret in (TENANT_NAME, TENANT_EMAIL, good_key, bad_key, bad_key[-12:]):
        assert secret not in text


def test_a_run_of_one_failing_connection_fails_with_a_clean_message(runtime, sandbox, instance):
    _, connection_id = add_stripe_connection(
        runtime, sandbox.url, "bad_key", name=TENANT_NAME, email=TENANT_EMAIL
    )

    result = materialize_stripe(instance, connection_id)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "stripe_refresh"
    message = failure.step_failure_data.user_failure_data.description
    # Both Stripe lists are read at once; whichever answers first names the endpoint.
    assert re.fullmatch(
        rf"needs reconnect: connection {connection_id}: /v1/(balance_transactions|customers) "
        r"refused the credentials \(HTTP 401\); reconnect the source",
        message,
    )
    failed = connection_info(runtime, connection_id)
    assert failed.status == "needs_reauth"
    assert failed.last_error == message
    assert "bad_key" not in failed.last_error
    assert fact_count(runtime, connection_id) == (0, 0)


def sensor_tick(instance: DagsterInstance, source: str, cursor: str | None = None):
    """One evaluation as the sensor daemon runs it: by instance ref, run requests resolved."""
    repository = defs.get_repository_def()
    sensor = CONNECTION_SENSORS[source]
    with SensorEvaluationContext(
        instance_ref=instance.get_ref(),
        repository_name=repository.name,
        repository_def=repository,
        sensor_name=sensor.name,
        resources=defs.resources,
        cursor=cursor,
    ) as context:
        return sensor.evaluate_tick(context)


def test_the_sensor_keeps_partitions_equal_to_active_connections(runtime, sandbox, instance):
    tenant_id, first = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
    )
    _, second = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), tenant_id=tenant_id)

    added = sensor_tick(instance, "stripe")
    # One first refresh (history backfill) for both new connections: a partition range.
    (request,) = added.run_requests
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == tuple(sorted([first, second]))
    apply_partition_requests(instance, added)
    assert set(instance.get_dynamic_partitions(STRIPE_PARTITIONS.name)) == {first, second}
    # The cursor remembers the registry it saw: nothing changed, nothing is asked of Dagster.
    unchanged = sensor_tick(instance, "stripe", added.cursor)
    assert unchanged.skip_message and not unchanged.dynamic_partitions_requests

    with runtime.db.session() as session:
        session.get(Connection, second).status = "disabled"
    removed = sensor_tick(instance, "stripe", unchanged.cursor)
    assert removed.run_requests == []
    apply_partition_requests(instance, removed)
    assert instance.get_dynamic_partitions(STRIPE_PARTITIONS.name) == [first]


def test_the_sensor_can_be_built_with_build_sensor_context(runtime, sandbox, instance):
    _, connection_id = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
    )
    instance.add_dynamic_partitions(STRIPE_PARTITIONS.name, ["not-a-connection-any-more"])

    # A context manager, so the resource's runtime is closed after the tick.
    with build_sensor_context(instance=instance, resources=RESOURCES) as context:
        result = CONNECTION_SENSORS["stripe"](context)

    assert isinstance(result, SensorResult)
    (delete, add) = result.dynamic_partitions_requests
    assert add.partition_keys == [connection_id]
    assert delete.partition_keys == ["not-a-connection-any-more"]
    assert [r.partition_key for r in result.run_requests] == [connection_id]


def test_refresh_now_reports_each_connection_and_never_raises_for_one(runtime, sandbox):
    tenant_a, good = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
    )
    _, bad = add_stripe_connection(
        runtime, sandbox.url, "bad_key", name=TENANT_NAME, email=TENANT_EMAIL
    )

    only_a = refresh_now(runtime, tenant_id=tenant_a)
    assert [(c.connection_id, c.ok) for c in only_a.connections] == [(good, True)]
    assert only_a.partitions_added == 1 and only_a.ok
    assert only_a.facts == fact_count(runtime, good)[0] > 0

    everyone = refresh_now(None)
    outcome = {c.connection_id: c for c in everyone.connections}
    assert outcome.keys() == {good, bad}
    assert everyone.partitions_added == 1
    assert outcome[good].ok and not outcome[bad].ok
    assert "refused the credentials" in outcome[bad].error
    assert "bad_key" not in outcome[bad].error
    assert [c.connection_id for c in everyone.failures] == [bad]
    assert (everyone.failed, everyone.total) == (1, 2)
    lines = "\n".join(everyone.lines())
    assert good in lines and bad in lines
    assert TENANT_NAME not in lines and TENANT_EMAIL not in lines

    # The runs live in WRITEVUE_HOME's Dagster instance, where the UI shows them.
    with DagsterInstance.from_config(str(runtime.settings.dagster_home)) as home_instance:
        run_ids = {run.run_id for run in home_instance.get_runs()}
        assert {c.run_id for c in only_a.connections + everyone.connections} <= run_ids
        assert set(home_instance.get_dynamic_partitions(STRIPE_PARTITIONS.name)) == {good, bad}


def test_workspace_passes_dagster_definitions_validate(tmp_path):
    env = os.environ | {
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "WRITEVUE_HOME": str(tmp_path / "home"),
    }
    (tmp_path / "dagster").mkdir()
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
