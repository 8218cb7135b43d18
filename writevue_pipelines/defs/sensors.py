"""Sensors per source: keep the connection partitions equal to the registry, retry failures.

- ``{source}_connection_partitions`` adds a partition for every new connection (and
  requests its first refresh, which backfills its history, in batches) and removes the
  partitions of connections that were disabled or deleted. Its cursor is a fingerprint
  of the active connections, so an unchanged registry costs one query and no write.
- ``{source}_failing_connections`` retries each failing connection alone, after a
  doubling wait, and flags one whose retries are used up: its ``refreshed`` check fails
  with a note that retries stopped, until a refresh succeeds again.
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import hashlib
import json
import time

from dagster import (
    AssetCheckEvaluation,
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
from . import checks
from .assets import REFRESH_JOBS, SOURCE_ASSETS, SourceAssets
from .batches import SOURCE_TAG, TENANT_TAG, TRIGGER_TAG, batch_run_requests
from .partitions import CONNECTION_PARTITIONS
from .resources import tick_runtime

ATTEMPT_TAG = "writevue/attempt"
#: At most this many single-connection retries start per tick; the rest wait their turn.
RETRIES_PER_TICK = 20


def _now() -> float:
    return time.time()


def _connections(count: int, kind: str) -> str:
    return f"{count} {kind} connection{'' if count == 1 else 's'}"


def fingerprint(connection_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(connection_ids)).encode()).hexdigest()


def build_connection_partitions_sensor(source: str, assets: SourceAssets) -> SensorDefinition:
    partitions = CONNECTION_PARTITIONS[source]

    @sensor(
        name=f"{source}_connection_partitions",
        description=(
            f"Adds a partition for every new {source} connection and requests its first "
            "refresh (its whole history, batched), and removes the partitions of connections "
            "that were disabled or deleted."
        ),
        job=REFRESH_JOBS[source],
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def connection_partitions(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        with tick_runtime() as runtime, runtime.db.session() as session:
            batch = runtime.settings.refresh_batch
            tenant_of = {
                c.id: c.tenant_id
                for c in registry.list_connections(session, source=source, active_only=True)
            }
        wanted = list(tenant_of)
        marker = fingerprint(wanted)
        if context.cursor == marker:
            return SkipReason(f"{_connections(len(wanted), source)}, unchanged")
        present = set(context.instance.get_dynamic_partitions(partitions.name))
        added = sorted(set(wanted) - present)
        removed = sorted(present - set(wanted))
        if not added and not removed:
            return SensorResult(skip_reason=_connections(len(present), source), cursor=marker)
        requests = []
        if removed:
            requests.append(partitions.build_delete_request(removed))
        if added:
            # Appended in this order, so each batch is a contiguous partition range.
            requests.append(partitions.build_add_request(added))
        return SensorResult(
            run_requests=batch_run_requests(
                assets,
                added,
                batch=batch,
                trigger="new_connection",
                tenant_of=tenant_of,
            ),
            dynamic_partitions_requests=requests,
            cursor=marker,
        )

    return connection_partitions


def build_failing_connections_sensor(source: str, assets: SourceAssets) -> SensorDefinition:
    @sensor(
        name=f"{source}_failing_connections",
        description=(
            f"Retries each failing {source} connection alone after a doubling wait "
            "(WRITEVUE_RETRY_BASE_MINUTES, WRITEVUE_RETRY_ATTEMPTS times), then flags it on "
            "its `refreshed` check until a refresh succeeds."
        ),
        job=REFRESH_JOBS[source],
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def failing_connections(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        with tick_runtime() as runtime, runtime.db.session() as session:
            settings = runtime.settings
            tenant_of = {
                c.id: c.tenant_id
                for c in registry.list_connections(session, source=source, status="failing")
            }
        failing = list(tenant_of)
        # connection id -> [retries made, not before (epoch s), flagged (0/1)]
        before = json.loads(context.cursor) if context.cursor else {}
        now = _now()
        wait = settings.retry_base_minutes * 60
        state, requests, flagged_now = {}, [], {}
        for connection_id in failing:
            attempts, not_before, flagged = before.get(connection_id, [0, now + wait, 0])
            due = now >= not_before
            if due and attempts < settings.retry_attempts and len(requests) < RETRIES_PER_TICK:
                attempts += 1
                requests.append(
                    RunRequest(
                        run_key=f"{connection_id}:{attempts}:{int(not_before)}",
                        asset_selection=assets.keys,
                        partition_key=connection_id,
                        tags={
                            SOURCE_TAG: source,
                            TRIGGER_TAG: "retry",
                            TENANT_TAG: tenant_of[connection_id],
                            ATTEMPT_TAG: str(attempts),
                        },
                    )
                )
                not_before = now + wait * 2**attempts
            elif due and attempts >= settings.retry_attempts and not flagged:
                flagged = 1
                context.log.warning(
                    f"connection {connection_id} still fails after {attempts} retries; "
                    "retries stopped until it refreshes (fix or reconnect it)"
                )
                flagged_now[connection_id] = attempts
            state[connection_id] = [attempts, not_before, flagged]
        # Against each flagged connection's latest materialisation, as a run's results are:
        # else the flag would count for none, and hide the failure it repeats.
        targets = (
            checks.latest_materializations(
                context.instance, assets.daily_metrics_key, list(flagged_now)
            )
            if flagged_now
            else {}
        )
        events = [
            AssetCheckEvaluation(
                asset_key=assets.daily_metrics_key,
                check_name=checks.REFRESHED,
                passed=False,
                partition=connection_id,
                description=(
                    f"still failing after {attempts} retries; retries stopped until "
                    "a refresh succeeds"
                ),
                metadata={"retries": attempts},
                target_materialization_data=targets.get(connection_id),
            )
            for connection_id, attempts in flagged_now.items()
        ]
        cursor = json.dumps(state, sort_keys=True)
        if not requests and not events:
            return SensorResult(
                skip_reason=f"{_connections(len(failing), f'failing {source}')}, none due",
                cursor=cursor,
            )
        return SensorResult(run_requests=requests, asset_events=events, cursor=cursor)

    return failing_connections


CONNECTION_SENSORS = {
    source: build_connection_partitions_sensor(source, assets)
    for source, assets in SOURCE_ASSETS.items()
}
FAILING_SENSORS = {
    source: build_failing_connections_sensor(source, assets)
    for source, assets in SOURCE_ASSETS.items()
}

defs = Definitions(sensors=[*CONNECTION_SENSORS.values(), *FAILING_SENSORS.values()])
