"""Per-connection checks on every source's daily metrics, evaluated by the refresh itself.

A batch run refreshes many connections in one step, so each check is partitioned by
connection: the Dagster UI shows which connection failed which check. Every check is
evaluated and reported for every connection of the run, passes included, so a healthy
connection shows its checks passed; each result carries the figures it was judged on
(counts, thresholds, days, metric names) and a check without enough history to judge
yet passes with a note that says so. Results never carry a tenant's name, an email, a
credential, a URL or the client's own figures (Dagster's event log outlives an erasure).

Each result names the connection's latest materialisation as the one it judged: Dagster
counts a partition's check result (the UI's partition view, the asset's check status) for
that materialisation only, and a result without one would read as "not evaluated" as
soon as the connection's partition is materialised.

Each result is an event the instance stores (WriteVue's storages keep a run's results
until its step ends and store them in one transaction: about 0.7 ms of CPU each on the
embedded instance's ``dagster_storage.PooledSqliteStorage``; ``python -m
bench.orchestration`` measures it);
``WRITEVUE_CHECK_RESULTS=problems`` reports only failures, warnings and a failing
connection's recovery, and Dagster then shows a healthy connection's checks as skipped
(docs/operations.md, "Checks").
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
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DynamicPartitionsDefinition,
    PreviewWarning,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as Target,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import refresh, registry
from ..errors import CredentialRejected, NotFound
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

#: Shown in the UI beside each check.
_DESCRIPTIONS = {
    REFRESHED: (
        "The connection's refresh succeeded. Fails with the one-line error and what to do "
        "(metadata: http_status, needs_reconnect) when it did not."
    ),
    KEYS_UNIQUE: (
        "Each (metric, dimension, day) appears once in the warehouse. Metadata: facts "
        "checked, duplicates found."
    ),
    VALUES_SANE: (
        "Every value is a finite number, and no count or volume is negative. Metadata: "
        "facts checked, non-finite and negative values found."
    ),
    FRESH: (
        "The connection refreshed successfully within WRITEVUE_FRESHNESS_HOURS. Metadata: "
        "when it last did, the threshold."
    ),
    VOLUME_STEADY: (
        "Warns when a metric's latest whole day falls below half of its mean over the "
        "seven days before (given at least four of them, with no empty day since it first "
        "appeared: a sparse metric, for which a quiet day is usual, is not judged). The "
        "check passes naming what it could not judge yet. Metadata: the thresholds, the "
        "metrics judged, a dropped metric's share of its mean."
    ),
    VALUES_USUAL: (
        "Warns when a metric's latest whole day lies outside what its own history predicts: "
        "the median of the same weekday over the eight weeks before, ± 3.5 robust spreads "
        "(1.4826 times the MAD). The warning names the metric, the day, the direction and the "
        "score (the figures themselves are on the client's chart, not in Dagster). A metric "
        "with fewer than four earlier same weekdays is not judged yet; the check passes "
        "saying so."
    ),
}


@dataclass
class DataFigures:
    """What the data checks look at, for one connection: counts and daily totals only."""

    facts: int = 0
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


def latest_materializations(
    instance: DagsterInstance, asset_key: AssetKey, connection_ids: list[str]
) -> dict[str, Target]:
    """Each connection's latest materialisation of the asset (none for one never
    materialised), in two queries for the whole run: what its check results judge.

    Dagster counts a partition's check result (the UI's partition view, the asset's check
    status) only if the result names the partition's latest materialisation as its target;
    one without a target reads as "not evaluated" as soon as the partition is materialised.
    """
    if not connection_ids:
        return {}
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(connection_ids)
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, storage_ids=list(latest.values())),
        limit=len(latest),
    ).records
    return {
        record.partition_key: Target(
            storage_id=record.storage_id,
            run_id=record.run_id,
            timestamp=record.timestamp,
        )
        for record in records
        if record.partition_key is not None
    }


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
    *,
    report_passes: bool = True,
    targets: Mapping[str, Target] | None = None,
) -> Iterator[AssetCheckEvaluation]:
    """Every check's result for every connection of a run, with the figures it used.

    ``targets`` (``latest_materializations``) names the materialisation each connection's
    results judge, without which Dagster does not count them for the partition.

    A connection that failed gets ``refreshed`` and ``fresh`` (its data checks cannot
    run); one that refreshed gets all six. A check that cannot judge yet (too little
    history) passes with a note saying so. With ``report_passes`` off
    (``WRITEVUE_CHECK_RESULTS=problems``) only failures, warnings and a failing
    connection's recovery are reported, which stores fewer events per run.
    """
    nonnegative = nonnegative_metrics(source)
    fresh_after = utcnow() - dt.timedelta(hours=runtime.settings.freshness_hours)
    today = dt.datetime.now(dt.UTC).date()
    since = today - dt.timedelta(days=HISTORY_DAYS)

    targets = targets or {}

    def result(name, connection_id, passed, *, severity=AssetCheckSeverity.ERROR, **kw):
        return AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=name,
            passed=passed,
            partition=connection_id,
            severity=severity,
            target_materialization_data=targets.get(connection_id),
            **kw,
        )

    def wanted(evaluation: AssetCheckEvaluation, recovered: bool = False) -> bool:
        return report_passes or not evaluation.passed or recovered

    with runtime.db.session() as session:
        refreshed = [cid for cid in before if cid not in failures]
        figures = data_figures(session, refreshed, nonnegative, since)
        for connection_id, was in before.items():
            exc = failures.get(connection_id)
            connection = registry.get_connection(session, connection_id)
            last = connection.last_refreshed_at
            for evaluation in (
                result(
                    REFRESHED,
                    connection_id,
                    exc is None,
                    description=(
                        refresh.safe_error(exc)
                        if exc is not None
                        else "recovered: refreshed after failing"
                        if was.failing
                        else "refreshed"
                    ),
                    metadata=_refreshed_metadata(exc),
                ),
                _fresh(
                    result,
                    connection_id,
                    last,
                    fresh_after,
                    runtime.settings.freshness_hours,
                    paused=connection.status == registry.PAUSED,
                ),
            ):
                if wanted(evaluation, recovered=was.failing or exc is not None):
                    yield evaluation
            if exc is not None:
                continue
            found = figures.get(connection_id, DataFigures())
            for evaluation in _data_checks(result, connection_id, found, nonnegative, today):
                if wanted(evaluation):
                    yield evaluation


def _fresh(
    result,
    connection_id: str,
    last: dt.datetime | None,
    fresh_after: dt.datetime,
    freshness_hours: int,
    *,
    paused: bool,
) -> AssetCheckEvaluation:
    """``fresh``: refreshed within the threshold. A paused connection (a run under way
    when it was paused, or launched by hand) is not stale: nothing is meant to refresh
    it, and its dashboard says its figures are as of its pause."""
    metadata = {
        "last_refreshed_at": last.isoformat() if last else "never",
        "freshness_hours": freshness_hours,
        "paused": paused,
    }
    if paused:
        return result(
            FRESH,
            connection_id,
            True,
            description="paused: not refreshed while paused, so not judged stale",
            metadata=metadata,
        )
    if last is None:
        return result(FRESH, connection_id, False, description="never refreshed", metadata=metadata)
    age_hours = (utcnow() - last).total_seconds() / 3600
    return result(
        FRESH,
        connection_id,
        last >= fresh_after,
        description=f"refreshed {age_hours:.1f} h ago (at most {freshness_hours} h allowed)",
        metadata=metadata,
    )


def _refreshed_metadata(exc: BaseException | None) -> dict[str, object]:
    if exc is None:
        return {}
    metadata: dict[str, object] = {"needs_reconnect": isinstance(exc, CredentialRejected)}
    status = getattr(exc, "status", None)
    if status is not None:
        metadata["http_status"] = status
    return metadata


def _data_checks(
    result, connection_id: str, found: "DataFigures", nonnegative: list[str], today: dt.date
) -> Iterator[AssetCheckEvaluation]:
    """The four data checks of one refreshed connection: counts, thresholds and days only."""
    yield result(
        KEYS_UNIQUE,
        connection_id,
        not found.duplicates,
        description=f"{_facts(found.facts)}, "
        + (
            f"{found.duplicates} (metric, dimension, day) stored more than once"
            if found.duplicates
            else "no (metric, dimension, day) twice"
        ),
        metadata={"facts": found.facts, "duplicates": found.duplicates},
    )
    yield result(
        VALUES_SANE,
        connection_id,
        not (found.non_finite or found.negative),
        description=f"{_facts(found.facts)}, "
        + (
            f"{found.non_finite} not finite, {found.negative} negative"
            if found.non_finite or found.negative
            else "all finite, none negative"
        ),
        metadata={
            "facts": found.facts,
            "non_finite": found.non_finite,
            "negative": found.negative,
            "nonnegative_metrics": ", ".join(nonnegative),
        },
    )
    # Names, the day, which way and how far: never the client's figures, which Dagster's
    # event log would keep past an erasure (they are in metric_anomalies, and on the
    # client's chart).
    usual = unusual_values_judged(found.daily_totals, today)
    unusual = [(metric, v) for metric, v in usual.verdicts if v.anomalous]
    usual_metadata = {
        "day": (today - dt.timedelta(days=1)).isoformat(),
        "metrics_judged": len(usual.verdicts),
        "metrics_without_enough_history": len(usual.unjudged),
        "weeks": anomaly.WEEKS,
        "min_same_weekdays": anomaly.MIN_POINTS,
        "threshold_robust_score": anomaly.DEFAULT_THRESHOLD,
    }
    if unusual:
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
                **usual_metadata,
                "unusual_metrics": ", ".join(metric for metric, _ in unusual),
                **{
                    metric: {"direction": _direction(v), "score": round(v.score, 1)}
                    for metric, v in unusual
                },
            },
        )
    else:
        yield result(
            VALUES_USUAL,
            connection_id,
            True,
            severity=AssetCheckSeverity.WARN,
            description=_judged_note(
                len(usual.verdicts), usual.unjudged, "usual range", "too little history yet"
            ),
            metadata=usual_metadata,
        )
    volume = volume_judged(found.daily_totals, nonnegative, today)
    volume_metadata = {
        "drop_below_share_of_mean": VOLUME_DROP_RATIO,
        "baseline_days": VOLUME_BASELINE_DAYS,
        "min_baseline_days": VOLUME_MIN_BASELINE_DAYS,
        "metrics_judged": len(volume.judged),
        "metrics_without_enough_history": len(volume.unjudged),
    }
    if volume.dropped:
        yield result(
            VOLUME_STEADY,
            connection_id,
            False,
            severity=AssetCheckSeverity.WARN,
            description="; ".join(
                f"{metric} on {volume.latest[metric]:%d %b}: {share:.0%} of its mean over "
                f"the {VOLUME_BASELINE_DAYS} days before"
                for metric, share in volume.dropped.items()
            ),
            metadata={
                **volume_metadata,
                "dropped_metrics": ", ".join(volume.dropped),
                **{f"{m}_share_of_mean": round(v, 2) for m, v in volume.dropped.items()},
            },
        )
    else:
        yield result(
            VOLUME_STEADY,
            connection_id,
            True,
            severity=AssetCheckSeverity.WARN,
            description=_judged_note(
                len(volume.judged),
                volume.unjudged,
                "usual volume",
                "too little history yet (or too sparse)",
            ),
            metadata=volume_metadata,
        )


def _facts(count: int) -> str:
    return f"{count} fact{'' if count == 1 else 's'}"


def _judged_note(judged: int, unjudged: list[str], what: str, why: str) -> str:
    """A passing check's note: how many metrics it judged, and which it could not yet."""
    note = f"{judged} metric{'' if judged == 1 else 's'} within {what}"
    if unjudged:
        note += f"; {why} to judge {', '.join(unjudged)}, which pass until it can"
    return note


def data_figures(
    session: Session, connection_ids: list[str], nonnegative: list[str], since: dt.date
) -> dict[str, DataFigures]:
    """The data checks' figures for a run's connections, in five queries for the whole run.

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
        select(Fact.connection_id, func.count()).where(of_run).group_by(Fact.connection_id)
    ):
        figures.setdefault(connection_id, DataFigures()).facts = count
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


@dataclass(frozen=True)
class UsualJudgement:
    """The unusual-value check's verdict per metric it could judge, and those it could not."""

    verdicts: list[tuple[str, anomaly.Verdict]]
    unjudged: list[str]


def unusual_values_judged(
    totals: list[tuple[str, dt.date, float]], today: dt.date
) -> UsualJudgement:
    """Each metric's latest whole day (yesterday) against its own history, where it has one."""
    by_metric: dict[str, dict[dt.date, float]] = defaultdict(dict)
    for metric, day, total in totals:
        if day < today:
            by_metric[metric][day] = total
    yesterday = today - dt.timedelta(days=1)
    verdicts, unjudged = [], []
    for metric, days in sorted(by_metric.items()):
        verdict = anomaly.detect(days, yesterday, min_spread=1.0)
        if verdict is None:
            unjudged.append(metric)
        else:
            verdicts.append((metric, verdict))
    return UsualJudgement(verdicts, unjudged)


def unusual_values(
    totals: list[tuple[str, dt.date, float]], today: dt.date
) -> list[tuple[str, anomaly.Verdict]]:
    """Metrics whose latest whole day (yesterday) is anomalous against their own history."""
    return [(m, v) for m, v in unusual_values_judged(totals, today).verdicts if v.anomalous]


@dataclass(frozen=True)
class VolumeJudgement:
    """The volume check per metric: dropped ones (with their latest day's share of the
    mean), the ones it judged, and the ones with too little history to judge."""

    dropped: dict[str, float]
    judged: list[str]
    unjudged: list[str]
    latest: dict[str, dt.date]


def volume_judged(
    totals: list[tuple[str, dt.date, float]], metrics: list[str], today: dt.date
) -> VolumeJudgement:
    """Each metric's latest whole day against VOLUME_DROP_RATIO of the mean of the days before.

    Today is still filling up, so it is never compared (nor is a day a source has not
    reported yet: GA4's yesterday may come a day late). A metric is judged once it has
    VOLUME_MIN_BASELINE_DAYS of the week before its latest day and no day without a value
    since it first appeared in that week: a sparse metric (refunds, say), for which a
    quiet day is usual, cannot be said to drop.
    """
    by_metric: dict[str, dict[dt.date, float]] = defaultdict(dict)
    for metric, day, total in totals:
        if metric in metrics and day < today:
            by_metric[metric][day] = total
    dropped, judged, unjudged, latest_days = {}, [], [], {}
    for metric, days in sorted(by_metric.items()):
        latest = latest_days[metric] = max(days)
        window = [latest - dt.timedelta(days=n) for n in range(VOLUME_BASELINE_DAYS, 0, -1)]
        seen = [days.get(day) for day in window]
        first = next((i for i, value in enumerate(seen) if value), None)
        recent = seen[first:] if first is not None else []
        if len(recent) < VOLUME_MIN_BASELINE_DAYS or not all(recent):
            unjudged.append(metric)  # too little history, or sparse: a quiet day is usual
            continue
        judged.append(metric)
        baseline = sum(recent) / len(recent)
        if baseline > 0 and days[latest] < VOLUME_DROP_RATIO * baseline:
            dropped[metric] = days[latest] / baseline
    return VolumeJudgement(dropped, judged, unjudged, latest_days)


def volume_drops(
    totals: list[tuple[str, dt.date, float]], metrics: list[str], today: dt.date
) -> list[str]:
    """Metrics whose latest whole day is below VOLUME_DROP_RATIO of the mean of the days before."""
    return list(volume_judged(totals, metrics, today).dropped)
