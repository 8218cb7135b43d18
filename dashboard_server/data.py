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
import functools
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl
from sqlalchemy import select

from writevue_pipelines import figures, formatting, registry, warehouse
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import SOURCES, connection_metas
from writevue_pipelines.sources.base import MetricMeta
from writevue_pipelines.spreadsheet import csv_text
from writevue_pipelines.vault import Binding

from .branding import brand_view_of

STALE_AFTER = dt.timedelta(hours=36)
COMPARISONS = ("previous", "last_year")
#: how far before the period shown a goal's start is read
GOAL_LOOKBACK = dt.timedelta(days=400)
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


# -- what a dashboard shows -----------------------------------------------------------------


@dataclass(frozen=True)
class GoalView:
    """A goal on a card: how far along it is, and whether the pace is on track."""

    target: float
    current: float | None
    fraction: float | None
    expected_fraction: float | None
    on_track: bool | None
    period: str
    text: str


@dataclass(frozen=True)
class Kpi:
    """One card: a metric (or one of its dimension values) over the period shown."""

    metric: str
    dimension: str
    label: str
    value: float | None
    previous: float | None
    ref: str = ""
    kind: str = "counter"
    polarity: str = "up_good"
    unit: str = "count"
    currency: str | None = None
    locale: str = "en"
    #: the comparison: "previous period" / "same period last year"; empty: none possible
    compare_label: str = "previous period"
    #: why there is no comparison, when there is none
    no_compare_reason: str = ""
    #: daily values over the period (None: no data that day), for the sparkline
    series: tuple[float | None, ...] = ()
    chart: str = "number"
    goal: GoalView | None = None
    #: the period ends today: its last day is not over
    partial: bool = False
    #: with a partial period: its value over the whole days, which the comparison uses
    compared: float | None = None

    @property
    def text(self) -> str:
        return formatting.compact(self.value, self.unit, self.currency, self.locale)

    @property
    def exact_text(self) -> str:
        return formatting.exact(self.value, self.unit, self.currency, self.locale)

    @property
    def previous_text(self) -> str:
        return formatting.exact(self.previous, self.unit, self.currency, self.locale)

    @property
    def change(self) -> float | None:
        current = self.compared if self.compared is not None else self.value
        return figures.change(current, self.previous)

    @property
    def sentiment(self) -> str:
        return figures.sentiment(self.polarity, self.change)

    @property
    def change_text(self) -> str:
        return figures.change_text(
            self.previous,
            self.change,
            previous_text=self.previous_text,
            label=self.compare_label,
            reason=self.no_compare_reason,
            partial=self.partial,
            locale=self.locale,
        )


@dataclass(frozen=True)
class Chart:
    """One metric's daily values over the period: a line (or bars) per dimension."""

    ref: str
    label: str
    kind: str
    unit: str
    currency: str | None
    style: str  # line | bar
    days: tuple[dt.date, ...]
    #: (dimension, daily values); "" for the total
    lines: tuple[tuple[str, tuple[float | None, ...]], ...]
    partial: bool
    locale: str = "en"
    #: unusual days of the period shown (``notifications.anomaly``), to mark on the lines
    marks: tuple[Mark, ...] = ()


@dataclass(frozen=True)
class Mark:
    """An unusual day on a chart: the day's index, the line (dimension) it is on, its
    value and the range its history predicted."""

    index: int
    dimension: str
    value: float
    expected: float
    low: float
    high: float


@dataclass(frozen=True)
class Detail:
    """A per-dimension table: one row per dimension value (a repository), a column per
    metric, each combined over the period by its kind."""

    title: str
    columns: tuple[Kpi, ...]  # one per metric: label, unit (its values are per row)
    rows: tuple[tuple[str, tuple[Kpi, ...]], ...]


@dataclass(frozen=True)
class Group:
    """A section of the dashboard: a source (automatic layout) or a template's section."""

    title: str
    #: which accounts it reads (two GitHub connections are told apart by their owner)
    accounts: tuple[str, ...]
    kpis: tuple[Kpi, ...]
    charts: tuple[Chart, ...]
    details: tuple[Detail, ...]


@dataclass(frozen=True)
class DashboardData:
    tenant_name: str
    last_updated: dt.datetime | None
    period: Period
    sources: list[SourceStatus]
    groups: tuple[Group, ...]
    #: metric, dimension, day, value: the stored daily facts of the period shown (CSV)
    series: pl.DataFrame
    comparison: str = "previous"
    locale: str = "en"
    partial: bool = False
    brand: object | None = None
    #: source -> kind of each metric, for the CSV
    kinds: Mapping[str, str] = field(default_factory=dict)

    @property
    def kpis(self) -> list[Kpi]:
        return [kpi for group in self.groups for kpi in group.kpis]

    @property
    def start(self) -> dt.date:
        return self.period.start

    @property
    def end(self) -> dt.date:
        return self.period.end


@dataclass(frozen=True)
class SourceStatus:
    source: str
    title: str
    state: str  # fresh, stale, needs_reconnect, paused
    advice: str
    #: which account the connection reads ("acme" for a GitHub owner), when it says
    account: str = ""


def _source_status(connection: registry.ConnectionInfo, now: dt.datetime) -> SourceStatus:
    source = SOURCES.get(connection.source)
    title = source.title if source else connection.source
    account = source.account_label(connection) if source else ""
    if connection.status == registry.PAUSED:  # the operator paused it: no error, no banner
        when = connection.last_refreshed_at
        as_of = f"figures as of {when:%d %b %Y}" if when else "no figures yet"
        return SourceStatus(
            connection.source, title, "paused", f"Updates paused; {as_of}.", account
        )
    if connection.status == "needs_reauth":  # a refused or unreadable credential
        what = "sign-in" if connection.auth_kind == "oauth2" else "credentials"
        return SourceStatus(
            connection.source,
            title,
            "needs_reconnect",
            f"Reconnect {title}: it no longer accepts the {what} it was given, so these "
            "figures stopped updating. Ask for a connect link.",
            account,
        )
    if connection.last_refreshed_at is None or now - connection.last_refreshed_at > STALE_AFTER:
        return SourceStatus(
            connection.source,
            title,
            "stale",
            "Data may be out of date; it is being retried. No action needed yet.",
            account,
        )
    return SourceStatus(connection.source, title, "fresh", "Up to date.", account)


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


@dataclass(frozen=True)
class ViewSettings:
    """What the operator set for this tenant's dashboard (defaults without a row)."""

    locale: str = "en"
    comparison: str | None = None
    polarity: tuple[tuple[str, str], ...] = ()
    template: object | None = None  # a writevue_pipelines.templates.Template
    goals: tuple = ()  # writevue_pipelines.goals.GoalInfo
    #: the template's id and last change, for cache keys
    template_key: tuple = ()


@dataclass(frozen=True)
class TenantHeader:
    tenant_name: str
    last_updated: dt.datetime | None
    sources: list[SourceStatus]
    #: changes whenever the tenant's facts may have changed; part of the cache key
    version: tuple
    #: connection id -> (source, its metrics' meta): what the facts mean
    connections: tuple[tuple[str, str], ...] = ()
    metas: Mapping[str, Mapping[str, MetricMeta]] = field(default_factory=dict)
    settings: ViewSettings = ViewSettings()
    brand: object | None = None
    #: (metric ref, dimension, day, value, expected, low, high) of the tenant's unusual
    #: days, newest first (``notifications.evaluate.detect_anomalies`` records them)
    anomalies: tuple[tuple, ...] = ()

    @property
    def cache_key(self) -> tuple:
        """Everything besides the facts that the page shows, for the page cache."""
        return (
            self.version,
            self.tenant_name,
            self.last_updated,
            tuple(self.sources),
            _settings_key(self.settings),
            repr(self.brand),
            self.anomalies,
        )


def _settings_key(settings: ViewSettings) -> tuple:
    template = settings.template
    return (
        settings.locale,
        settings.comparison,
        settings.polarity,
        settings.template_key if template is not None else None,
        tuple(repr(goal) for goal in settings.goals),
    )


#: parsed templates by (id, last change): a view reads the row, not its validation again
_TEMPLATES = LruCache(max_entries=256)


def _view_settings(session, tenant_id: str, row, tenant_goals: tuple) -> ViewSettings:
    """The tenant's settings, template and goals from its settings row (None without
    one); the template is parsed once per change, not per view."""
    from writevue_pipelines import templates

    if row is None:
        return ViewSettings(goals=tenant_goals)
    template, key = None, ()
    if row.template_id is not None:
        key = (row.template_id, row.template_updated_at)
        template = _TEMPLATES.get(key)
        if template is None:
            template = templates.template_for_tenant(session, tenant_id)
            if template is not None:
                _TEMPLATES.put(key, template)
    return ViewSettings(
        locale=row.locale or "en",
        comparison=row.comparison,
        polarity=tuple(sorted(dict(row.polarity or {}).items())),
        template=template,
        goals=tenant_goals,
        template_key=key,
    )


@functools.cache
def _header_statements() -> tuple:
    """The statements a view's registry read runs, built once (with the tenant as a
    parameter) and run on the session's connection without the ORM: building and loading
    them through the ORM was most of what the read cost, some 1.3 ms a view."""
    from sqlalchemy import bindparam, func

    from writevue_pipelines.models import (
        Brand,
        Connection,
        DashboardTemplate,
        Goal,
        MetricAnomaly,
        Tenant,
        TenantSettings,
    )

    tenant = bindparam("tenant")
    tenants, connections = Tenant.__table__.c, Connection.__table__.c
    chosen, template, brand = (
        TenantSettings.__table__.c,
        DashboardTemplate.__table__.c,
        Brand.__table__.c,
    )
    goals, anomalies = Goal.__table__.c, MetricAnomaly.__table__.c
    # as ``registry.list_connections(active_only=True, with_paused=True)``
    hidden = registry.hidden_statuses(with_paused=True)
    return (
        select(tenants.name_ct).where(tenants.id == tenant),
        select(Connection.__table__)
        .where(connections.tenant_id == tenant, connections.status.not_in(hidden))
        .order_by(connections.created_at, connections.id),
        # the settings, their template's version and the brand shown (the tenant's own,
        # else its template's: ``branding.brand_stamp_for_tenant``), in one row
        select(
            chosen.locale,
            chosen.comparison,
            chosen.polarity,
            template.id.label("template_id"),
            template.updated_at.label("template_updated_at"),
            brand.id.label("brand_id"),
            brand.updated_at.label("brand_updated_at"),
        )
        .select_from(TenantSettings.__table__)
        .outerjoin(DashboardTemplate.__table__, template.id == chosen.template_id)
        .outerjoin(Brand.__table__, brand.id == func.coalesce(chosen.brand_id, template.brand_id))
        .where(chosen.tenant_id == tenant),
        # ``goals.list_goals``: ``GoalInfo``'s fields, by name
        select(
            goals.id,
            goals.tenant_id,
            goals.metric,
            goals.dimension,
            goals.period,
            goals.target,
            goals.starts_on,
            goals.due_on,
        )
        .where(goals.tenant_id == tenant)
        .order_by(goals.metric, goals.dimension),
        select(
            anomalies.metric,
            anomalies.dimension,
            anomalies.day,
            anomalies.value,
            anomalies.expected,
            anomalies.low,
            anomalies.high,
        )
        .where(anomalies.tenant_id == tenant)
        .order_by(anomalies.day.desc())
        .limit(MAX_ANOMALIES),
    )


def load_header(runtime: Runtime, tenant_id: str) -> TenantHeader:
    """Everything a view shows besides the facts: five small statements."""
    from writevue_pipelines.goals import GoalInfo

    name_of, connections_of, settings_of, goals_of, anomalies_of = _header_statements()
    now = dt.datetime.now(dt.UTC)
    params = {"tenant": tenant_id}
    with runtime.db.session() as session:
        connection = session.connection()
        name_ct = connection.execute(name_of, params).scalar()
        if name_ct is None:
            registry.require_tenant(session, tenant_id)  # says which, as ``get_tenant`` does
        tenant_name = runtime.keys.decrypt_text(name_ct, Binding(tenant_id, None, "tenant.name"))
        connections = [
            registry._connection_info(row) for row in connection.execute(connections_of, params)
        ]
        row = connection.execute(settings_of, params).first()
        tenant_goals = tuple(
            GoalInfo(**found._mapping) for found in connection.execute(goals_of, params)
        )
        settings = _view_settings(session, tenant_id, row, tenant_goals)
        stamp = None
        if row is not None and row.brand_id is not None:
            stamp = (row.brand_id, row.brand_updated_at)
        brand = brand_view_of(session, stamp, runtime.settings.default_brand)
        # the recorded unusual days (``MAX_ANOMALIES`` at most; the key starts with the tenant)
        anomalies = tuple(tuple(found) for found in connection.execute(anomalies_of, params))
    refreshed = [c.last_refreshed_at for c in connections if c.last_refreshed_at is not None]
    version = tuple(sorted((c.id, c.last_refreshed_at, c.status) for c in connections))
    metas = connection_metas(connections)
    return TenantHeader(
        tenant_name=tenant_name,
        last_updated=max(refreshed) if refreshed else None,
        sources=[_source_status(c, now) for c in connections],
        version=version,
        connections=tuple(sorted((c.id, c.source) for c in connections)),
        metas=metas,
        settings=settings,
        brand=brand,
        anomalies=anomalies,
    )


#: the most unusual days a view reads (newest first): a year of a daily 1-in-100 event
#: for ~20 metrics is some 70; this bounds a tenant whose data is mostly surprises
MAX_ANOMALIES = 2000


@dataclass(frozen=True)
class Facts:
    """A tenant's facts per connection for the days a view needs, and each connection's
    first day of data."""

    frame: pl.DataFrame
    history: Mapping[str, dt.date]
    first_day: dt.date
    last_day: dt.date

    @property
    def height(self) -> int:
        return self.frame.height


def comparison_mode(header: TenantHeader, asked: str | None = None) -> str:
    """previous or last_year: the client's choice, else the tenant's, else the template's."""
    if asked in COMPARISONS:
        return asked
    if header.settings.comparison in COMPARISONS:
        return header.settings.comparison
    template = header.settings.template
    return getattr(template, "comparison", None) or "previous"


def first_day_needed(
    header: TenantHeader, period: Period, mode: str, today: dt.date | None = None
) -> dt.date:
    """The first day a view must read: its comparison's, and its goals' periods."""
    today = _today(today)
    windows = figures.Windows.of(period.start, period.end, today, mode)
    first = min(windows.compare_start, period.start)
    for goal in header.settings.goals:
        # a goal's calendar period, or the start of a goal by a date (at most ~a year
        # before the period: an older start is read as "no level known then")
        first = min(first, max(figures.goal_window(goal, today)[0], period.start - GOAL_LOOKBACK))
    return max(first, oldest_day(today) - dt.timedelta(days=366))


def load_facts(
    runtime: Runtime,
    tenant_id: str,
    period: Period,
    version: tuple,
    cache: FactCache | None = None,
    *,
    first_day: dt.date | None = None,
) -> Facts:
    """The tenant's facts from ``first_day`` (default: the period before this one) to the
    period's end: one query, or none if cached."""
    first_day = first_day or period.previous_start
    key = (tenant_id, version, first_day, period.end)
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached
    with runtime.db.session() as session:
        frame, history = warehouse.tenant_connection_facts(
            session, tenant_id, first_day, period.end
        )
    facts = Facts(frame, history, first_day, period.end)
    if cache is not None:
        cache.put(key, facts)
    return facts


# -- from facts to cards ----------------------------------------------------------------------


class _Builder:
    """Cards, charts and tables of one view, from ``Figures`` and the tenant's settings."""

    def __init__(self, header: TenantHeader, period: Period, facts: Facts, mode: str, today):
        self.header, self.period, self.today = header, period, today
        self.locale = header.settings.locale
        template = header.settings.template
        # The tenant's own choice over the template's over the source's.
        self.polarity = figures.polarity_overrides(template, dict(header.settings.polarity))
        self.windows = figures.Windows.of(period.start, period.end, today, mode)
        sources = dict(header.connections)
        self.figures = figures.Figures(
            facts.frame, sources, header.metas, facts.history, facts.first_day, facts.last_day
        )
        self.resolver = figures.Resolver(
            self.figures, figures.calculated_defs(template), self.polarity
        )
        self.goals = {(g.metric, g.dimension or ""): g for g in header.settings.goals}
        self.days = self.windows.days
        self.anomalies: dict[tuple[str, str], dict[dt.date, tuple]] = {}
        for ref, dimension, day, *figures_of_day in header.anomalies:
            if period.start <= day <= period.end:
                self.anomalies.setdefault((ref, dimension), {})[day] = tuple(figures_of_day)
        self.compare_label = figures.COMPARE_LABELS.get(mode, "previous period")

    def definition(self, ref: str) -> figures.MetricDef | None:
        return self.resolver.define(ref)

    def kpi(
        self,
        definition: figures.MetricDef,
        dimension: str | None,
        *,
        chart: str = "number",
        label: str | None = None,
    ) -> Kpi:
        ref = definition.ref
        found = self.resolver.compare(ref, dimension, self.windows)
        return Kpi(
            metric=ref.split(".", 1)[1],
            dimension=dimension or "",
            label=figures.card_label(definition, dimension, label),
            value=found.value,
            previous=found.previous,
            compared=found.compared,
            ref=ref,
            kind=definition.kind,
            polarity=definition.polarity,
            unit=definition.unit,
            currency=figures.card_currency(definition, dimension),
            locale=self.locale,
            compare_label=found.label,
            no_compare_reason=found.reason,
            series=tuple(self.resolver.series(ref, dimension, self.days)),
            chart=chart,
            goal=self.goal(definition, dimension),
            partial=found.partial,
        )

    def goal(self, definition: figures.MetricDef, dimension: str | None) -> GoalView | None:
        goal = self.goals.get((definition.ref, dimension or ""))
        if goal is None:
            return None
        from writevue_pipelines import goals as goal_rules

        progress = self.resolver.goal_progress(goal, definition, dimension, self.today)
        target_text = formatting.compact(
            goal.target, definition.unit, definition.currency or dimension or None, self.locale
        )
        text = getattr(progress, "text", "") or ""
        return GoalView(
            target=goal.target,
            current=progress.current,
            fraction=progress.fraction,
            expected_fraction=progress.expected_fraction,
            on_track=progress.on_track,
            period=goal.period,
            text=text.replace(goal_rules.compact(goal.target), target_text, 1)
            if text
            else target_text,
        )

    def split_dimensions(self, definition: figures.MetricDef) -> list[str]:
        """Dimension values, largest first over the period."""
        dims = self.resolver.dimensions(definition.ref)

        def size(d: str) -> float:
            v = self.resolver.value(definition.ref, d, self.windows.start, self.windows.end)
            return -(abs(v) if v is not None else -1)

        return sorted(dims, key=lambda d: (size(d), d))

    def cards_for(self, definition: figures.MetricDef, dimension: str | None, split: bool):
        """The dimensions to show one card each for: one value, each value, or the total
        (never a total of money over currencies: a card per currency instead)."""
        if dimension:
            return [dimension]
        dims = self.resolver.dimensions(definition.ref)
        if split or (definition.unit == "money" and definition.currency is None and dims):
            return self.split_dimensions(definition) if dims else [None]
        if definition.kind == "ratio" and definition.formula is None and len(dims) > 1:
            return self.split_dimensions(definition)
        return [None]

    def chart(self, definition: figures.MetricDef, dims: list[str | None], style: str) -> Chart:
        lines = tuple(
            (d or "", tuple(self.resolver.series(definition.ref, d, self.days))) for d in dims
        )
        currency = definition.currency
        if definition.unit == "money" and currency is None and len(dims) == 1:
            currency = dims[0]
        return Chart(
            definition.ref,
            definition.label,
            definition.kind,
            definition.unit,
            currency,
            style,
            tuple(self.days),
            lines,
            self.windows.partial,
            self.locale,
            self.marks(definition.ref, lines),
        )

    def marks(self, ref: str, lines) -> tuple[Mark, ...]:
        found = []
        for dimension, _values in lines:
            unusual = self.anomalies.get((ref, dimension))
            if not unusual:
                continue
            for index, day in enumerate(self.days):
                if day in unusual:
                    found.append(Mark(index, dimension, *unusual[day]))
        return tuple(found)

    def detail(self, title: str, definitions: list[figures.MetricDef]) -> Detail | None:
        dims: list[str] = []
        for definition in definitions:
            dims += [d for d in self.split_dimensions(definition) if d not in dims]
        if len(dims) < 2:
            return None
        columns = tuple(self.kpi(d, None) for d in definitions)
        rows = tuple((dim, tuple(self.kpi(d, dim) for d in definitions)) for dim in dims)
        return Detail(title, columns, rows)

    # -- layouts ----------------------------------------------------------------------------

    def accounts(self, source: str) -> tuple[str, ...]:
        return tuple(
            sorted({s.account for s in self.header.sources if s.source == source and s.account})
        )

    def automatic(self) -> tuple[Group, ...]:
        """Grouped by source in the order they were connected; within a source, metrics as
        the source lists them; totals first, per-dimension detail in a table below."""
        groups = []
        seen: list[str] = []
        for _cid, source in self.header.connections:
            if source not in seen:
                seen.append(source)
        extra = sorted({ref.split(".", 1)[0] for ref in self.figures.refs()} - set(seen))
        for source in [*sorted(seen, key=_source_order), *extra]:
            metas = self.header.metas.get(source, {})
            refs = [f"{source}.{m}" for m in metas if self.figures.has(f"{source}.{m}")]
            refs += sorted(
                r for r in self.figures.refs() if r.startswith(f"{source}.") and r not in refs
            )
            if not refs:
                continue
            kpis, charts, detailed = [], [], []
            for ref in refs:
                definition = self.definition(ref)
                dims = self.cards_for(definition, None, False)
                kpis += [self.kpi(definition, d) for d in dims]
                charts.append(self.chart(definition, dims, "line"))
                if dims == [None] and len(self.figures.dimensions(ref)) > 1:
                    detailed.append(definition)
            title = SOURCES[source].title if source in SOURCES else source
            by = SOURCES[source].dimension if source in SOURCES else None
            detail_title = f"By {by.name.split()[0]}" if by is not None else "Breakdown"
            detail = self.detail(detail_title, detailed) if detailed else None
            groups.append(
                Group(
                    title,
                    self.accounts(source),
                    tuple(kpis),
                    tuple(charts),
                    (detail,) if detail else (),
                )
            )
        return tuple(groups)

    def from_template(self, template) -> tuple[Group, ...]:
        groups = []
        for section in template.sections:
            kpis, charts, details = [], [], []
            sources: list[str] = []
            for item in section.items:
                definition = self.definition(item.metric)
                if definition is None:
                    continue  # the tenant has no such source: the rest of the layout holds
                if not definition.ref.startswith("calc."):
                    sources.append(definition.source)
                dims = self.cards_for(definition, item.dimension, item.split)
                if item.chart == "table":
                    detail = self.detail(item.label or definition.label, [definition])
                    if detail is not None:
                        details.append(detail)
                        continue
                kpis += [self.kpi(definition, d, chart=item.chart, label=item.label) for d in dims]
                if item.chart in ("line", "bar"):
                    charts.append(self.chart(definition, dims, item.chart))
            if kpis or charts or details:
                accounts = tuple(a for s in dict.fromkeys(sources) for a in self.accounts(s))
                groups.append(
                    Group(section.title, accounts, tuple(kpis), tuple(charts), tuple(details))
                )
        return tuple(groups)


def _source_order(source: str) -> int:
    names = list(SOURCES)
    return names.index(source) if source in names else len(names)


def summarise(
    header: TenantHeader,
    period: Period,
    facts: Facts,
    *,
    comparison: str | None = None,
    today: dt.date | None = None,
) -> DashboardData:
    today = _today(today)
    mode = comparison_mode(header, comparison)
    builder = _Builder(header, period, facts, mode, today)
    template = header.settings.template
    groups = builder.from_template(template) if template is not None else builder.automatic()
    shown = facts.frame.filter((pl.col("day") >= period.start) & (pl.col("day") <= period.end))
    sources = dict(header.connections)
    kinds = {
        f"{sources.get(cid, '')}.{metric}": builder.figures.meta(f"{sources.get(cid, '')}.{metric}")
        for cid, metric in shown.select("connection_id", "metric").unique().iter_rows()
    }
    series = (
        shown.with_columns(
            pl.col("connection_id").replace_strict(sources, default="").alias("source")
        )
        .group_by("source", "metric", "dimension", "day")
        .agg(pl.col("value").sum())
        .sort("source", "metric", "dimension", "day")
    )
    return DashboardData(
        tenant_name=header.tenant_name,
        last_updated=header.last_updated,
        period=period,
        sources=header.sources,
        groups=groups,
        series=series,
        comparison=mode,
        locale=header.settings.locale,
        partial=builder.windows.partial,
        brand=header.brand,
        kinds={ref: (meta.kind if meta else "counter") for ref, meta in kinds.items()},
    )


def load_dashboard(
    runtime: Runtime,
    tenant_id: str,
    *,
    days: int = 30,
    period: Period | None = None,
    today: dt.date | None = None,
    cache: FactCache | None = None,
    comparison: str | None = None,
) -> DashboardData:
    period = period or Period.last(days, today)
    header = load_header(runtime, tenant_id)
    mode = comparison_mode(header, comparison)
    facts = load_facts(
        runtime,
        tenant_id,
        period,
        header.version,
        cache,
        first_day=first_day_needed(header, period, mode, today),
    )
    return summarise(header, period, facts, comparison=mode, today=today)


CSV_COLUMNS = ("day", "source", "metric", "label", "dimension", "kind", "partial", "value")


def dashboard_csv(data: DashboardData) -> str:
    """The daily figures behind the dashboard's period, one row per day, metric and
    dimension (summed over connections), as stored: a gauge's row is its level that day.

    Metrics and dimensions come from sources (a REST spec may map any value to them):
    every text cell is neutralised for spreadsheets (``spreadsheet.csv_text``); the
    value stays a number, counts without decimals. ``partial`` marks today's unfinished day.
    """
    today = _today(None)
    metas: dict[str, MetricMeta | None] = {}

    def meta(source: str, metric: str) -> MetricMeta | None:
        ref = f"{source}.{metric}"
        if ref not in metas:
            known = SOURCES.get(source)
            metas[ref] = known.metric_meta().get(metric) if known else None
        return metas[ref]

    rows = []
    for source, metric, dimension, day, value in data.series.sort(
        "day", "source", "metric", "dimension"
    ).iter_rows():
        found = meta(source, metric)
        rows.append(
            (
                day.isoformat(),
                source,
                metric,
                found.label if found else metric.replace("_", " ").capitalize(),
                dimension,
                data.kinds.get(f"{source}.{metric}", "counter"),
                "true" if day >= today else "false",
                formatting.csv_number(float(value), found.unit if found else "number"),
            )
        )
    return csv_text(CSV_COLUMNS, rows)


def csv_filename(data: DashboardData) -> str:
    return f"dashboard-{data.start:%Y%m%d}-{data.end:%Y%m%d}.csv"


def headline_texts(runtime: Runtime, tenant_id: str) -> list[str]:
    """The KPI figures a client must see on first load; used by `writevue demo --check`."""
    return [kpi.text for kpi in load_dashboard(runtime, tenant_id).kpis]
