"""What a sensor tick costs the code server when nothing changed.

The sensor daemon asks the code server to evaluate each sensor every 30 or 60 s. A sensor
that declares a Dagster resource gets a ``DagsterInstance`` built from the instance's ref
on every tick, before its body runs (on the embedded SQLite instance that is an Alembic
revision check, 0.1-0.25 s of CPU each time: most of an idle code server's CPU). The
frequent sensors need the instance only when there is something to do, so an unchanged
registry costs a registry query and no instance.
"""

from __future__ import annotations

import pytest
from dagster import DagsterInstance
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._grpc.impl import get_external_sensor_execution
from support import add_stripe_connection, new_stripe_key

from writevue_pipelines.defs import defs
from writevue_pipelines.defs.privacy.erasure import erasure_requests
from writevue_pipelines.defs.sensors import CONNECTION_SENSORS, FAILING_SENSORS, fingerprint

#: the sensors that tick every 30 or 60 s whatever happens
FREQUENT = [
    *CONNECTION_SENSORS.values(),
    *FAILING_SENSORS.values(),
    erasure_requests,
]


def tick(instance: DagsterInstance, sensor, cursor: str | None = None):
    """One evaluation as the code server runs it for the daemon (its gRPC call's body): by
    instance ref, with the resources the sensor requires."""
    result = get_external_sensor_execution(
        defs.get_repository_def(), None, instance.get_ref(), sensor.name, None, None, cursor,
        None, None,
    )  # fmt: skip
    assert isinstance(result, SensorExecutionData), result
    return result


@pytest.fixture
def no_instance_built(monkeypatch):
    """Fail a tick that builds a DagsterInstance from its ref."""

    def refused(*args, **kwargs):
        raise AssertionError("the tick built a DagsterInstance")

    monkeypatch.setattr(DagsterInstance, "from_ref", refused)


@pytest.mark.parametrize("sensor", FREQUENT, ids=lambda s: s.name)
def test_a_frequent_sensor_takes_no_resource(sensor):
    assert not sensor.required_resource_keys


def test_unchanged_ticks_build_no_instance(runtime, sandbox, instance, no_instance_built):
    _, connection_id = add_stripe_connection(runtime, sandbox.url, new_stripe_key())

    unchanged = tick(instance, CONNECTION_SENSORS["stripe"], fingerprint([connection_id]))
    nothing_failing = tick(instance, FAILING_SENSORS["stripe"])
    no_request = tick(instance, erasure_requests)

    assert unchanged.skip_message == "1 stripe connection, unchanged"
    assert "0 failing stripe connections" in nothing_failing.skip_message
    assert no_request.skip_message == "no erasure requests"


def test_a_changed_registry_still_adds_its_partitions(runtime, sandbox, instance):
    _, connection_id = add_stripe_connection(runtime, sandbox.url, new_stripe_key())

    result = tick(instance, CONNECTION_SENSORS["stripe"])

    assert result.skip_message is None
    (add,) = result.dynamic_partitions_requests
    assert add.partition_keys == [connection_id]
    assert [r.partition_key for r in result.run_requests] == [connection_id]
