"""Per-connection checks on every source's daily metrics, evaluated by the refresh itself.

A batch run refreshes many connections in one step, so each check is partitioned by
connection and its result is reported for each connection of the run: the Dagster UI
shows which connection failed which check. Results carry counts and metric names
only, never a tenant's name, an email, a credential or a URL.
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import datetime as dt
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DynamicPartitionsDefinition,
    PreviewWarning,
)

from .. import refresh, registry, warehouse
from ..errors import NotFound
from ..models import utcnow
from ..runtime import Runtime
from ..sources import Source

REFRESHED = "refreshed"
KEYS_UNIQUE = "keys_unique"
VALUES_SANE = "values_sane"
FRESH = "fresh"
VOLUME_STEADY = "volume_steady"

#: Metrics that may legitimately be negative (a refund-heavy day's net volume).
SIGNED_METRICS = frozenset({"net"})
#: A metric's latest day below this share of its trailing mean is a volume drop.
VOLUME_DROP_RATIO = 0.5
VOLUME_BASELINE_DAYS = 7
VOLUME_MIN_BASELINE_DAYS = 4

_DESCRIPTIONS = {
    REFRESHED: "The connection's latest refresh succeeded; a failure carries its sanitised error.",
    KEYS_UNIQUE: "Each (metric, dimension, day) appears once in the warehouse.",
    VALUES_SANE: "Every value is a finite number, and no count or volume is negative.",
    FRESH: "The connection refreshed successfully within WRITEVUE_FRESHNESS_HOURS.",
    VOLUME_STEADY: (
        "Warns when a metric's latest whole day falls below half of its mean over the "
        "seven days before (given at least four of them)."
    ),
}


@dataclass(frozen=True)
class ConnectionState:
    failing: bool
    fresh: bool


def check_specs(
    asset_key: AssetKey, partitions: DynamicPartitionsDefinition
) -> list[AssetCheckSpec]:
    with warnings.catch_warnings():
        # Partitioned checks are a preview feature; they are what gives per-connection status.
        warnings.simplefilter("ignore", PreviewWarning)
        return [
            AssetCheckSpec(name, asset=asset_key, description=text, partitions_def=partitions)
            for name, text in _DESCRIPTIONS.items()
        ]


def nonnegative_metrics(source: Source) -> list[str]:
    # A declarative source's metrics come from an operator's spec: only finiteness is known.
    declared = getattr(source, "signed_metrics", None)
    signed = SIGNED_METRICS if declared is None else frozenset(declared)
    return sorted(set(source.metrics) - signed)


def connection_states(runtime: Runtime, connection_ids: list[str]) -> dict[str, ConnectionState]:
    """Each existing connection's standing before a refresh, to report only what changed."""
    fresh_after = utcnow() - dt.timedelta(hours=runtime.settings.freshness_hours)
    with runtime.db.session() as session:
        states = {}
        for connection_id in connection_ids:
            try:
                info = registry.get_connection(session, connection_id)
            except NotFound:
                continue  # deleted since its partition was added; the sensor removes it
            last = info.last_refreshed_at
            states[connection_id] = ConnectionState(
                failing=info.status == "failing", fresh=last is not None and last >= fresh_after
            )
        return states


def evaluate(
    runtime: Runtime,
    source: Source,
    asset_key: AssetKey,
    before: Mapping[str, ConnectionState],
    failures: Mapping[str, BaseException],
) -> Iterator[AssetCheckEvaluation]:
    """The checks of every connection of a run.

    The data checks are reported for every connection that refreshed. ``refreshed`` and
    ``fresh`` are reported when they fail and when they recover: a healthy connection's
    fresh success is already its new materialisation, and each check result is an event
    the instance stores, so a batch of thousands stays cheap to record.
    """
    nonnegative = nonnegative_metrics(source)
    fresh_after = utcnow() - dt.timedelta(hours=runtime.settings.freshness_hours)
    today = dt.datetime.now(dt.UTC).date()
    since = today - dt.timedelta(days=VOLUME_BASELINE_DAYS + 1)

    def result(name, connection_id, passed, *, severity=AssetCheckSeverity.ERROR, **kw):
        return AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=name,
            passed=passed,
            partition=connection_id,
            severity=severity,
            **kw,
        )

    with runtime.db.session() as session:
        for connection_id, was in before.items():
            exc = failures.get(connection_id)
            if exc is not None or was.failing:
                yield result(
                    REFRESHED,
                    connection_id,
                    exc is None,
                    description=None if exc is None else refresh.safe_error(exc),
                )
            if exc is not None or not was.fresh:
                last = registry.get_connection(session, connection_id).last_refreshed_at
                yield result(
                    FRESH,
                    connection_id,
                    last is not None and last >= fresh_after,
                    metadata={"last_refreshed_at": last.isoformat() if last else "never"},
                )
            if exc is not None:
                continue
            duplicates = warehouse.duplicate_keys(session, connection_id)
            yield result(
                KEYS_UNIQUE, connection_id, duplicates == 0, metadata={"duplicates": duplicates}
            )
            nonfinite, negative = warehouse.value_problems(session, connection_id, nonnegative)
            yield result(
                VALUES_SANE,
                connection_id,
                nonfinite == 0 and negative == 0,
                metadata={"non_finite": nonfinite, "negative": negative},
            )
            dropped = volume_drops(
                warehouse.daily_totals(session, connection_id, since), nonnegative, today
            )
            yield result(
                VOLUME_STEADY,
                connection_id,
                not dropped,
                severity=AssetCheckSeverity.WARN,
                metadata={"dropped_metrics": ", ".join(dropped)},
            )


def volume_drops(
    totals: list[tuple[str, dt.date, float]], metrics: list[str], today: dt.date
) -> list[str]:
    """Metrics whose latest whole day is below VOLUME_DROP_RATIO of the mean of the days before.

    Today is still filling up, so it is never compared.
    """
    by_metric: dict[str, dict[dt.date, float]] = defaultdict(dict)
    for metric, day, total in totals:
        if metric in metrics and day < today:
            by_metric[metric][day] = total
    dropped = []
    for metric, days in sorted(by_metric.items()):
        latest = max(days)
        window = [latest - dt.timedelta(days=n) for n in range(1, VOLUME_BASELINE_DAYS + 1)]
        seen = [days[day] for day in window if day in days]
        if len(seen) < VOLUME_MIN_BASELINE_DAYS:
            continue  # too little history to call anything a drop
        baseline = sum(seen) / len(seen)
        if baseline > 0 and days[latest] < VOLUME_DROP_RATIO * baseline:
            dropped.append(metric)
    return dropped
