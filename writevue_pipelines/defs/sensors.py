"""Sensors that keep each source's connection partitions equal to the registry."""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
from dagster import (
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .. import registry
from .assets import SOURCE_ASSETS, SourceAssets
from .partitions import CONNECTION_PARTITIONS
from .resources import WriteVueResource


def build_connection_partitions_sensor(source: str, assets: SourceAssets) -> SensorDefinition:
    partitions = CONNECTION_PARTITIONS[source]

    @sensor(
        name=f"{source}_connection_partitions",
        description=(
            f"Adds a partition (and requests its first refresh) for every new {source} "
            "connection and removes the partitions of connections that were disabled or deleted."
        ),
        target=assets.both,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def connection_partitions(
        context: SensorEvaluationContext, writevue: WriteVueResource
    ) -> SensorResult | SkipReason:
        with writevue.runtime.db.session() as session:
            wanted = {
                c.id for c in registry.list_connections(session, source=source, active_only=True)
            }
        present = set(context.instance.get_dynamic_partitions(partitions.name))
        added = sorted(wanted - present)
        removed = sorted(present - wanted)
        if not added and not removed:
            return SkipReason(f"{len(present)} {source} connections, none added or removed")
        requests = []
        if added:
            requests.append(partitions.build_add_request(added))
        if removed:
            requests.append(partitions.build_delete_request(removed))
        return SensorResult(
            run_requests=[RunRequest(partition_key=key) for key in added],
            dynamic_partitions_requests=requests,
        )

    return connection_partitions


CONNECTION_SENSORS = {
    source: build_connection_partitions_sensor(source, assets)
    for source, assets in SOURCE_ASSETS.items()
}

defs = Definitions(sensors=list(CONNECTION_SENSORS.values()))
