"""Per-connection checks on every source's daily metrics, evaluated by the refresh itself.

A batch run refreshes many connections in one step, so each check is partitioned by
connection: the Dagster UI shows which connection failed which check. Every check is
evaluated for every connection of the run, and a result is reported where it says
something: a failure (or a volume warning), and a connection's recovery. Each reported
result is an event the instance stores one write at a time (on SQLite, more than a
connection's own fetch and load cost), so reporting every healthy pass would make
bookkeeping the largest part of a refresh. A partition whose latest refresh raised
nothing shows the check as skipped in that run: a failure shown earlier is cleared by
the connection's next healthy refresh. Results carry counts and metric names only,
never a tenant's name, an email, a credential or a URL.
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import datetime as dt
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DynamicPartitionsDefinition,
    PreviewWarning,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import refresh, registry
from ..errors import NotFound
from ..models import Connection, Fact, utcnow
from ..notifications import anomaly
from ..runtime import Runtime
from ..sources import Source

REFRESHED = "refreshed"
KEYS_UNIQUE = "keys_unique"
VALUES_SANE = "values_sane"
FRESH = "fresh"
VOLUME_STEADY = "volume_steady"
VALUES_USUAL = "values_usual"

#: A metric's latest day below this share of its trailing mean is a volume drop.
VOLUME_DROP_RATIO = 0.5
VOLUME_BASELINE_DAYS = 7
VOLUME_MIN_BASELINE_DAYS = 4
#: the days of daily totals the data checks read: the unusual-value check compares the
#: latest whole day with the same weekday of the eight weeks before
HISTORY_DAYS = 7 * anomaly.WEEKS + 1

#: Shown in the UI; "skipped" there means the refresh found nothing to report.
_DESCRIPTIONS = {
    REFRESHED: (
        "Fails with the sanitised error when the connection's refresh fails; passes when a "
        "failing connection refreshes again. Skipped for a healthy connection's refresh."
    ),
    KEYS_UNIQUE: (
        "Each (metric, dimension, day) appears once in the warehouse. Evaluated on every "
        "refresh, reported when it fails; skipped when it holds."
    ),
    VALUES_SANE: (
        "Every value is a finite number, and no count or volume is negative. Evaluated on "
        "every refresh, reported when it fails; skipped when it holds."
    ),
    FRESH: (
        "The connection refreshed successfully within WRITEVUE_FRESHNESS_HOURS. Reported "
        "with `refreshed`: when a refresh fails, and when a failing connection recovers."
    ),
    VOLUME_STEADY: (
        "Warns when a metric's latest whole day falls below half of its mean over the "
        "seven days before (given at least four of them). Reported when it warns."
    ),
    VALUES_USUAL: (
        "Warns when a metric's latest whole day lies outside what its own history predicts: "
        "the median of the same weekday over the eight weeks before, ± 3.5 robust spreads "
        "(1.4826 times the MAD). The warning names the metric, the day, the direction and the "
        "score (the figures themselves are on the client's chart, not in Dagster). Reported "
        "when it warns."
    ),
}


@dataclass
class DataFigures:
    """What the data checks look at, for one connection: counts and daily totals only."""

    duplicates: int = 0
    non_finite: int = 0
    negative: int = 0
    daily_totals: list[tuple[str, dt.date, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ConnectionState:
    """A connection's standing before its refresh: was its previous refresh a failure?"""

    failing: bool


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
    return sorted(set(source.metrics) - source.signed_metrics)


def connection_states(runtime: Runtime, connection_ids: list[str]) -> dict[str, ConnectionState]:
    """Each existing connection's standing before a refresh, to report its recovery."""
    with runtime.db.session() as session:
        states = {}
        for connection_id in connection_ids:
            try:
                info = registry.get_connection(session, connection_id)
            except NotFound:
                continue  # deleted since its partition was added; the sensor removes it
            states[connection_id] = ConnectionState(failing=info.status == "failing")
        return states


def evaluate(
    runtime: Runtime,
    source: Source,
    asset_key: AssetKey,
    before: Mapping[str, ConnectionState],
    failures: Mapping[str, BaseException],
) -> Iterator[AssetCheckEvaluation]:
    """The check results of a run worth an event: failures, warnings and recoveries.

    ``refreshed`` and ``fresh`` are reported for a connection that failed, and for one
    that was failing and refreshed (its recovery). The data checks are evaluated for
    every connection that refreshed and reported when they fail or warn. A healthy
    connection's news is its new materialisation.
    """
    nonnegative = nonnegative_metrics(source)
    fresh_after = utcnow() - dt.timedelta(hours=runtime.settings.freshness_hours)
    today = dt.datetime.now(dt.UTC).date()
    since = today - dt.timedelta(days=HISTORY_DAYS)

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
        refreshed = [cid for cid in before if cid not in failures]
        figures = data_figures(session, refreshed, nonnegative, since)
        for connection_id, was in before.items():
            exc = failures.get(connection_id)
            if exc is not None or was.failing:
                yield result(
                    REFRESHED,
                    connection_id,
                    exc is None,
                    description=None if exc is None else refresh.safe_error(exc),
                )
                last = registry.get_connection(session, connection_id).last_refreshed_at
                yield result(
                    FRESH,
                    connection_id,
                    last is not None and last >= fresh_after,
                    metadata={"last_refreshed_at": last.isoformat() if last else "never"},
                )
            if exc is not None:
                continue
            found = figures.get(connection_id, DataFigures())
            if found.duplicates:
                yield result(
                    KEYS_UNIQUE, connection_id, False, metadata={"duplicates": found.duplicates}
                )
            if found.non_finite or found.negative:
                yield result(
                    VALUES_SANE,
                    connection_id,
                    False,
                    metadata={"non_finite": found.non_finite, "negative": found.negative},
                )
            unusual = unusual_values(found.daily_totals, today)
            if unusual:
                # Names, the day, which way and how far: never the client's figures, which
                # Dagster's event log would keep past an erasure (they are in
                # metric_anomalies, and on the client's chart).
                yield result(
                    VALUES_USUAL,
                    connection_id,
                    False,
                    severity=AssetCheckSeverity.WARN,
                    description="; ".join(
                        f"{metric} on {v.day:%d %b}: {_direction(v)} its usual range "
                        f"(robust score {v.score:+.1f})"
                        for metric, v in unusual
                    ),
                    metadata={
                        "unusual_metrics": ", ".join(metric for metric, _ in unusual),
                        "day": unusual[0][1].day.isoformat(),
                        **{
                            metric: {"direction": _direction(v), "score": round(v.score, 1)}
                            for metric, v in unusual
                        },
                    },
                )
            dropped = volume_drops(found.daily_totals, nonnegative, today)
            if dropped:
                yield result(
                    VOLUME_STEADY,
                    connection_id,
                    False,
                    severity=AssetCheckSeverity.WARN,
                    metadata={"dropped_metrics": ", ".join(dropped)},
                )


def data_figures(
    session: Session, connection_ids: list[str], nonnegative: list[str], since: dt.date
) -> dict[str, DataFigures]:
    """The data checks' figures for a run's connections, in four queries for the whole run.

    The fact table's key starts with the tenant, so a query for one connection reads its
    whole tenant; per connection that is quadratic in a tenant's connections (an agency
    with hundreds). Grouped by connection, each query reads the run's tenants once.
    """
    figures: dict[str, DataFigures] = {}
    if not connection_ids:
        return figures
    tenants = select(Connection.tenant_id).where(Connection.id.in_(connection_ids))
    of_run = Fact.tenant_id.in_(tenants.scalar_subquery()) & Fact.connection_id.in_(connection_ids)
    repeated = (
        select(Fact.connection_id)
        .where(of_run)
        .group_by(Fact.connection_id, Fact.metric, Fact.dimension, Fact.day)
        .having(func.count() > 1)
        .subquery()
    )
    for connection_id, count in session.execute(
        select(repeated.c.connection_id, func.count()).group_by(repeated.c.connection_id)
    ):
        figures.setdefault(connection_id, DataFigures()).duplicates = count
    huge = 1.0e308
    not_finite = (
        Fact.value.is_(None)
        | (Fact.value != Fact.value)  # NaN is the one value unequal to itself
        | (Fact.value > huge)
        | (Fact.value < -huge)
    )
    for connection_id, count in session.execute(
        select(Fact.connection_id, func.count())
        .where(of_run, not_finite)
        .group_by(Fact.connection_id)
    ):
        figures.setdefault(connection_id, DataFigures()).non_finite = count
    if nonnegative:
        for connection_id, count in session.execute(
            select(Fact.connection_id, func.count())
            .where(of_run, Fact.metric.in_(nonnegative), Fact.value < 0)
            .group_by(Fact.connection_id)
        ):
            figures.setdefault(connection_id, DataFigures()).negative = count
    for connection_id, metric, day, total in session.execute(
        select(Fact.connection_id, Fact.metric, Fact.day, func.sum(Fact.value))
        .where(of_run, Fact.day >= since)
        .group_by(Fact.connection_id, Fact.metric, Fact.day)
    ):
        totals = figures.setdefault(connection_id, DataFigures()).daily_totals
        totals.append((metric, day, float(total or 0.0)))
    return figures


def _direction(verdict: anomaly.Verdict) -> str:
    return "above" if verdict.value > verdict.expected else "below"


def unusual_values(
    totals: list[tuple[str, dt.date, float]], today: dt.date
) -> list[tuple[str, anomaly.Verdict]]:
    """Metrics whose latest whole day (yesterday) is anomalous against their own history."""
    by_metric: dict[str, dict[dt.date, float]] = defaultdict(dict)
    for metric, day, total in totals:
        if day < today:
            by_metric[metric][day] = total
    yesterday = today - dt.timedelta(days=1)
    found = []
    for metric, days in sorted(by_metric.items()):
        verdict = anomaly.detect(days, yesterday, min_spread=1.0)
        if verdict is not None and verdict.anomalous:
            found.append((metric, verdict))
    return found


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
