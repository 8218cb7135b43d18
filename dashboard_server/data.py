"""What a client's dashboard shows, read from the warehouse only (never a source API).

Plain functions, testable without a browser or a server. A view costs one small
registry read (the tenant's name and its connections' status, which also says
when its data last changed) and at most one warehouse query for the facts of the
period shown and the period before it; the facts are cached under the tenant, the
period and the tenant's last refresh, so a new refresh is seen at once and one
tenant's cached facts can never answer another tenant's view.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import threading
from dataclasses import dataclass

import polars as pl

from writevue_pipelines import registry, warehouse
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import SOURCES
from writevue_pipelines.spreadsheet import csv_text

STALE_AFTER = dt.timedelta(hours=36)
MONEY_METRICS = frozenset({"gross_volume", "net", "fees", "refunds"})
PRESET_DAYS = (7, 30, 90, 365)
MAX_DAYS = 731
#: how far back a period may start: ten years, far more than any source keeps for a client
HISTORY = dt.timedelta(days=3653)
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class PeriodError(ValueError):
    """A period a client asked for that no dashboard shows; the text says what to do."""


def _today(today: dt.date | None) -> dt.date:
    return today or dt.datetime.now(dt.UTC).date()


def oldest_day(today: dt.date | None = None) -> dt.date:
    """The first day a period may show."""
    return _today(today) - HISTORY


def newest_day(today: dt.date | None = None) -> dt.date:
    """The last day a period may show: today in UTC, or tomorrow where the client already is."""
    return _today(today) + dt.timedelta(days=1)


@dataclass(frozen=True)
class Period:
    """The days shown (inclusive) and the equally long period before them."""

    start: dt.date
    end: dt.date

    @classmethod
    def last(cls, days: int, today: dt.date | None = None) -> Period:
        today = today or dt.datetime.now(dt.UTC).date()
        return cls(today - dt.timedelta(days=days - 1), today)

    @classmethod
    def between(cls, start: dt.date, end: dt.date, today: dt.date | None = None) -> Period:
        """A custom period from the picker, whatever its days: put in order, kept between
        ``oldest_day`` and ``newest_day``, capped at two years (``MAX_DAYS``)."""
        oldest, newest = oldest_day(today), newest_day(today)
        days = (day.date() if isinstance(day, dt.datetime) else day for day in (start, end))
        start, end = sorted(min(max(day, oldest), newest) for day in days)
        return cls(max(start, end - dt.timedelta(days=MAX_DAYS - 1)), end)

    @classmethod
    def parse(cls, start: str, end: str, today: dt.date | None = None) -> Period:
        """The period a request names by its first and last day (``YYYY-MM-DD``), or a
        ``PeriodError`` saying what is wrong: nothing is put in order or capped silently."""
        first, last = _parse_day(start), _parse_day(end)
        oldest, newest = oldest_day(today), newest_day(today)
        if first > last:
            raise PeriodError(f"The period ends ({last}) before it starts ({first}). {_CHOOSE}")
        if first < oldest or last > newest:
            raise PeriodError(f"A period must lie between {oldest} and {newest}. {_CHOOSE}")
        if (last - first).days + 1 > MAX_DAYS:
            raise PeriodError(f"A period can be at most {MAX_DAYS} days long. {_CHOOSE}")
        return cls(first, last)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def previous_start(self) -> dt.date:
        return self.start - dt.timedelta(days=self.days)

    @property
    def label(self) -> str:
        return f"{self.start:%d %b %Y} to {self.end:%d %b %Y}"


_CHOOSE = "Choose the period on the dashboard, then download its figures from there."


def _parse_day(text: str) -> dt.date:
    try:
        if _DAY.match(text):
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    raise PeriodError(f"A period's first and last days are written YYYY-MM-DD. {_CHOOSE}")


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
    def previous_text(self) -> str:
        return format_value(self.metric, self.dimension, self.previous)

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
class TenantHeader:
    tenant_name: str
    last_updated: dt.datetime | None
    sources: list[SourceStatus]
    #: changes whenever the tenant's facts may have changed; part of the cache key
    version: tuple


@dataclass(frozen=True)
class DashboardData:
    tenant_name: str
    last_updated: dt.datetime | None
    period: Period
    sources: list[SourceStatus]
    kpis: list[Kpi]
    #: metric, dimension, day, value for the period shown
    series: pl.DataFrame

    @property
    def start(self) -> dt.date:
        return self.period.start

    @property
    def end(self) -> dt.date:
        return self.period.end


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
    if connection.status == "needs_reauth":  # a refused or unreadable credential
        what = "sign-in" if connection.auth_kind == "oauth2" else "credentials"
        return SourceStatus(
            connection.source,
            title,
            "needs_reconnect",
            f"Reconnect {title}: it no longer accepts WriteVue's {what}, so these figures "
            "stopped updating. Ask your WriteVue contact for a connect link.",
        )
    if connection.last_refreshed_at is None or now - connection.last_refreshed_at > STALE_AFTER:
        return SourceStatus(
            connection.source,
            title,
            "stale",
            "Data may be out of date; WriteVue is retrying. No action needed yet.",
        )
    return SourceStatus(connection.source, title, "fresh", "Up to date.")


class LruCache:
    """A process-wide least-recently-used cache, bounded by entries and by total size.

    One instance serves every session of a process (it lives in ``pn.state.cache``),
    which is why callers lead every key with the tenant id.
    """

    def __init__(self, max_entries: int = 512, max_size: int | None = None, size=None):
        self.max_entries, self.max_size = max_entries, max_size
        self._size_of = size or (lambda value: 0)
        self._entries: collections.OrderedDict[tuple, object] = collections.OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple, value) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._total -= self._size_of(old)
            self._entries[key] = value
            self._total += self._size_of(value)
            while len(self._entries) > self.max_entries or (
                self.max_size is not None and self._total > self.max_size and self._entries
            ):
                _, dropped = self._entries.popitem(last=False)
                self._total -= self._size_of(dropped)

    def __len__(self) -> int:
        return len(self._entries)


class FactCache(LruCache):
    """Facts per (tenant, its data version, period)."""


def load_header(runtime: Runtime, tenant_id: str) -> TenantHeader:
    now = dt.datetime.now(dt.UTC)
    with runtime.db.session() as session:
        tenant = registry.get_tenant(session, runtime.keys, tenant_id)
        connections = registry.list_connections(session, tenant_id=tenant_id, active_only=True)
    refreshed = [c.last_refreshed_at for c in connections if c.last_refreshed_at is not None]
    version = tuple(sorted((c.id, c.last_refreshed_at, c.status) for c in connections))
    return TenantHeader(
        tenant_name=tenant.name,
        last_updated=max(refreshed) if refreshed else None,
        sources=[_source_status(c, now) for c in connections],
        version=version,
    )


def load_facts(
    runtime: Runtime,
    tenant_id: str,
    period: Period,
    version: tuple,
    cache: FactCache | None = None,
) -> pl.DataFrame:
    """The tenant's facts for the period and the one before it: one query, or none if cached."""
    key = (tenant_id, version, period.previous_start, period.end)
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached
    with runtime.db.session() as session:
        facts = warehouse.tenant_facts(session, tenant_id, period.previous_start, period.end)
    if cache is not None:
        cache.put(key, facts)
    return facts


def summarise(header: TenantHeader, period: Period, facts: pl.DataFrame) -> DashboardData:
    current = facts.filter(pl.col("day") >= period.start)
    earlier = facts.filter(pl.col("day") < period.start)
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
    return DashboardData(
        tenant_name=header.tenant_name,
        last_updated=header.last_updated,
        period=period,
        sources=header.sources,
        kpis=kpis,
        series=current.sort("metric", "dimension", "day"),
    )


def load_dashboard(
    runtime: Runtime,
    tenant_id: str,
    *,
    days: int = 30,
    period: Period | None = None,
    today: dt.date | None = None,
    cache: FactCache | None = None,
) -> DashboardData:
    period = period or Period.last(days, today)
    header = load_header(runtime, tenant_id)
    return summarise(header, period, load_facts(runtime, tenant_id, period, header.version, cache))


CSV_COLUMNS = ("day", "metric", "label", "dimension", "value")


def dashboard_csv(data: DashboardData) -> str:
    """Exactly the daily figures the dashboard shows for its period, one row per day and metric.

    Metrics and dimensions come from sources (a REST spec may map any value to them):
    every text cell is neutralised for spreadsheets (``spreadsheet.csv_text``); the
    value stays a number.
    """
    rows = (
        (day.isoformat(), metric, metric_label(metric, dimension), dimension, float(value))
        for metric, dimension, day, value in data.series.sort(
            "day", "metric", "dimension"
        ).iter_rows()
    )
    return csv_text(CSV_COLUMNS, rows)


def csv_filename(data: DashboardData) -> str:
    return f"writevue-{data.start:%Y%m%d}-{data.end:%Y%m%d}.csv"


def headline_texts(runtime: Runtime, tenant_id: str) -> list[str]:
    """The KPI figures a client must see on first load; used by `writevue demo --check`."""
    return [kpi.text for kpi in load_dashboard(runtime, tenant_id).kpis]
