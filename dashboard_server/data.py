"""What a client's dashboard shows, read from the warehouse only (never a source API).

Plain functions, testable without a browser or a server. One warehouse query per
view for the facts; the tenant's header (name, connection status) is a second,
tiny read of the registry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from writevue_pipelines import registry, warehouse
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import SOURCES

STALE_AFTER = dt.timedelta(hours=36)
MONEY_METRICS = frozenset({"gross_volume", "net", "fees", "refunds"})


@dataclass(frozen=True)
class Kpi:
    metric: str
    dimension: str
    label: str
    value: float
    previous: float

    @property
    def text(self) -> str:
        return format_value(self.metric, self.dimension, self.value)

    @property
    def change(self) -> float | None:
        if self.previous == 0:
            return None
        return (self.value - self.previous) / abs(self.previous)

    @property
    def change_text(self) -> str:
        change = self.change
        if change is None:
            return "no earlier data"
        return f"{change:+.1%} vs previous period"


@dataclass(frozen=True)
class SourceStatus:
    source: str
    title: str
    state: str  # fresh, stale, needs_reconnect
    advice: str


@dataclass(frozen=True)
class DashboardData:
    tenant_name: str
    last_updated: dt.datetime | None
    start: dt.date
    end: dt.date
    sources: list[SourceStatus]
    kpis: list[Kpi]
    #: metric, dimension, day, value for the period shown
    series: pl.DataFrame


def format_value(metric: str, dimension: str, value: float) -> str:
    if metric in MONEY_METRICS:
        return f"{value:,.2f} {dimension.upper()}".strip()
    return f"{value:,.0f}"


def metric_label(metric: str, dimension: str = "") -> str:
    for source in SOURCES.values():
        if metric in source.metrics:
            label = source.metrics[metric]
            break
    else:
        label = metric.replace("_", " ").capitalize()
    return f"{label} ({dimension.upper()})" if dimension else label


def _source_status(connection: registry.ConnectionInfo, now: dt.datetime) -> SourceStatus:
    source = SOURCES.get(connection.source)
    title = source.title if source else connection.source
    if connection.status == "needs_reauth":
        return SourceStatus(
            connection.source,
            title,
            "needs_reconnect",
            f"Reconnect {title}: WriteVue can no longer read it.",
        )
    if connection.last_refreshed_at is None or now - connection.last_refreshed_at > STALE_AFTER:
        return SourceStatus(
            connection.source,
            title,
            "stale",
            "Data may be out of date; WriteVue is retrying. No action needed yet.",
        )
    return SourceStatus(connection.source, title, "fresh", "Up to date.")


def load_dashboard(
    runtime: Runtime, tenant_id: str, *, days: int = 30, today: dt.date | None = None
) -> DashboardData:
    today = today or dt.datetime.now(dt.UTC).date()
    start = today - dt.timedelta(days=days - 1)
    previous_start = start - dt.timedelta(days=days)
    now = dt.datetime.now(dt.UTC)
    with runtime.db.session() as session:
        tenant = registry.get_tenant(session, runtime.keys, tenant_id)
        connections = registry.list_connections(session, tenant_id=tenant_id, active_only=True)
        facts = warehouse.tenant_facts(session, tenant_id, previous_start, today)

    current = facts.filter(pl.col("day") >= start)
    earlier = facts.filter(pl.col("day") < start)
    totals = current.group_by("metric", "dimension").agg(pl.col("value").sum())
    before = {
        (m, d): v
        for m, d, v in earlier.group_by("metric", "dimension")
        .agg(pl.col("value").sum())
        .iter_rows()
    }
    kpis = [
        Kpi(
            metric,
            dimension,
            metric_label(metric, dimension),
            value,
            before.get((metric, dimension), 0.0),
        )
        for metric, dimension, value in totals.sort("metric", "dimension").iter_rows()
    ]
    refreshed = [c.last_refreshed_at for c in connections if c.last_refreshed_at is not None]
    return DashboardData(
        tenant_name=tenant.name,
        last_updated=max(refreshed) if refreshed else None,
        start=start,
        end=today,
        sources=[_source_status(c, now) for c in connections],
        kpis=kpis,
        series=current,
    )


def headline_texts(runtime: Runtime, tenant_id: str) -> list[str]:
    """The KPI figures a client must see on first load; used by `writevue demo --check`."""
    return [kpi.text for kpi in load_dashboard(runtime, tenant_id).kpis]
