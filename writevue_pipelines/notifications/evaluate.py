"""Scorecard figures, alert verdicts and anomalies, from the warehouse's aggregates only.

The numbers are the dashboard's: the same ``figures.Figures`` (connections merged, each
metric combined by its kind), the same ``Resolver.compare`` (value and comparison) and
goal progress, the same labels and formatting in the tenant's locale. One facts query
per tenant and call.

Only whole days a refresh has covered are judged: a day counts once every connection
behind a metric was refreshed after it ended (UTC, as the facts are stored). Before
that, a counter's missing rows would read as zeros and fire a "below" alert that is
only a refresh still to come; such a day is *no data*, which leaves an alert as it is.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .. import branding, figures, formatting, goals, registry, templates, warehouse
from ..errors import NotFound
from ..formulas import parse_ref as _parse_ref
from ..models import AlertRule, MetricAnomaly, Scorecard, TenantSettings, utcnow
from ..sources import connection_metas
from ..vault import KeyRing
from . import anomaly, schedule
from .content import AlertContent, BrandInfo, Figure, ScorecardContent

DAY = dt.timedelta(days=1)


@functools.lru_cache(maxsize=4096)
def parse_ref(text: str):
    """A scorecard's metric ref, parsed once per process (a run reads hundreds of the
    same few)."""
    return _parse_ref(text)


#: days a "yesterday" scorecard charts, so that its small chart says something
SHORT_SERIES_DAYS = 14
#: what a scorecard's comparison reads as, by period (calendar periods compare with the
#: calendar period before: last month with the month before it)
_PREVIOUS_LABELS = {
    "last_month": "previous month",
    "month_to_date": "same days last month",
    "last_week": "previous week",
    "week_to_date": "same days last week",
}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# -- a tenant's figures -----------------------------------------------------------------------

#: within ``shared_loads``, the first read of a tenant's facts starts this much earlier
SHARED_MARGIN = 7 * DAY
#: within ``shared_loads``: the one tenant whose settings and facts were loaded last
_SHARED: ContextVar[dict | None] = ContextVar("writevue_evaluate_shared", default=None)


@contextmanager
def shared_loads() -> Iterator[None]:
    """Within it, judging a tenant's anomalies and alerts and rendering its scorecards read
    the tenant's settings and facts once (the widest days any of them needs), not once
    each. One tenant at a time is kept: the next tenant's load replaces it."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


@dataclass
class _Tenant:
    """What one tenant's figures need besides the facts: settings, template, goals,
    connections and what their metrics mean."""

    id: str
    locale: str
    timezone: str
    polarity: dict
    template: object | None
    goals: list
    connections: list
    metas: dict

    @classmethod
    def load(cls, session: Session, tenant_id: str) -> _Tenant:
        shared = _SHARED.get()
        if shared is not None and shared.get("tenant", (None,))[0] == tenant_id:
            return shared["tenant"][1]
        tenant = cls._load(session, tenant_id)
        if shared is not None:
            shared.clear()
            shared["tenant"] = (tenant_id, tenant)
        return tenant

    @classmethod
    def _load(cls, session: Session, tenant_id: str) -> _Tenant:
        settings = session.get(TenantSettings, tenant_id)
        template = templates.template_for_tenant(session, tenant_id) if settings else None
        # a paused connection's metrics still mean what they meant: its figures stay
        connections = registry.list_connections(
            session, tenant_id=tenant_id, active_only=True, with_paused=True
        )
        return cls.of(
            tenant_id, settings, template, goals.list_goals(session, tenant_id), connections
        )

    @classmethod
    def of(cls, tenant_id: str, settings, template, tenant_goals: list, connections: list):
        """From what was read of it (``batch`` reads many tenants' at once)."""
        return cls(
            id=tenant_id,
            locale=(settings.locale if settings else None) or "en",
            timezone=(getattr(settings, "timezone", None) if settings else None) or "UTC",
            polarity=figures.polarity_overrides(template, (settings.polarity if settings else {})),
            template=template,
            goals=tenant_goals,
            connections=connections,
            metas=connection_metas(connections),
        )

    def resolver(self, session: Session, first: dt.date, last: dt.date) -> figures.Resolver:
        """The tenant's figures from ``first`` to ``last``: one query; within
        ``shared_loads``, none when the days loaded for this tenant already cover them."""
        shared = _SHARED.get()
        if shared is None:
            return self._resolver(session, first, last)
        loaded = shared.get("facts")
        if loaded is not None and loaded[0] <= first and last <= loaded[1]:
            return loaded[2]
        if loaded is not None:
            first, last = min(first, loaded[0]), max(last, loaded[1])
        else:
            # the first read of a tenant (its anomalies') reaches back far enough for its
            # daily alert rules and a weekly scorecard too, so they need no second one
            first -= SHARED_MARGIN
        resolver = self._resolver(session, first, last)
        shared["facts"] = (first, last, resolver)
        return resolver

    def _resolver(self, session: Session, first: dt.date, last: dt.date) -> figures.Resolver:
        frame, history = warehouse.tenant_connection_facts(session, self.id, first, last)
        sources = {c.id: c.source for c in self.connections}
        found = figures.Figures(frame, sources, self.metas, history, first, last)
        return figures.Resolver(found, figures.calculated_defs(self.template), self.polarity)

    def complete_through(self, resolver: figures.Resolver, ref: str) -> dt.date | None:
        """The last day every connection behind ``ref`` has been refreshed past (asked
        once per ref of a resolver)."""
        known = resolver.__dict__.setdefault("_complete_through", {})
        if ref not in known:
            known[ref] = self._complete_through(resolver, ref)
        return known[ref]

    def _complete_through(self, resolver: figures.Resolver, ref: str) -> dt.date | None:
        definition = resolver.define(ref)
        if definition is None:
            return None
        sources = (
            {r.source for r in definition.formula.refs}
            if definition.formula is not None
            else {definition.source}
        )
        days = []
        for source in sources:
            if source == "calc":
                continue
            found = [c for c in self.connections if c.source == source]
            if not found or any(c.last_refreshed_at is None for c in found):
                return None
            days.append(min(c.last_refreshed_at for c in found).astimezone(dt.UTC).date() - DAY)
        return min(days) if days else None


def _brand(session: Session, tenant_id: str) -> BrandInfo:
    found = branding.brand_for_tenant(session, tenant_id)
    if found is None:
        return BrandInfo()
    return BrandInfo(
        display_name=found.display_name,
        primary=found.color("primary"),
        logo=found.logo,
        logo_type=found.logo_type,
    )


def _text(value: float | None, unit: str, currency: str | None, locale: str) -> str:
    """A figure in a sentence: exact, without ".00" on a whole amount."""
    text = formatting.exact(value, unit, currency, locale)
    if value is not None and math.isfinite(value) and float(value).is_integer():
        point = formatting.separators(locale)[1]
        for tail in (point + "00",):
            if tail in text:
                text = text.replace(tail, "", 1)
    return text


def _min_spread(unit: str) -> float:
    """The smallest spread worth a verdict: one unit of a count or of money."""
    return {"count": 1.0, "money": 1.0, "percent": 0.005}.get(unit, 0.0)


# -- scorecards --------------------------------------------------------------------------------


def _compare_window(
    period: str, start: dt.date, end: dt.date, mode: str
) -> tuple[dt.date, dt.date]:
    if mode == "last_year":
        first = figures.shift_year(start)
        return first, first + (end - start)
    if period in ("last_week", "week_to_date"):
        return start - 7 * DAY, end - 7 * DAY
    if period == "last_month":
        last = start - DAY
        return last.replace(day=1), last
    if period == "month_to_date":
        last_of_before = start - DAY
        first = last_of_before.replace(day=1)
        return first, min(first + (end - start), last_of_before)
    days = (end - start).days + 1
    return start - days * DAY, start - DAY


def scorecard_content(
    session: Session,
    keys: KeyRing,
    scorecard_id: str,
    *,
    scheduled_for: dt.datetime,
    base_url_link: str | None,
    today: dt.date | None = None,
) -> ScorecardContent:
    """What the scorecard says when sent at ``scheduled_for``: its period seen from the
    tenant's time zone at that moment (``today`` overrides the local date), each metric's
    value and comparison as the dashboard computes them, formatted in the tenant's
    locale. ``base_url_link``: the dashboard link, only when the tenant opted in."""
    row = session.get(Scorecard, scorecard_id)
    if row is None:
        raise NotFound(
            f"No scorecard with id {scorecard_id}; `writevue scorecard list TENANT` shows them."
        )
    tenant = _Tenant.load(session, row.tenant_id)
    first, last = scorecard_days(row, tenant, scheduled_for, today)
    resolver = tenant.resolver(session, first, last)
    return build_scorecard(
        row,
        tenant,
        resolver,
        scheduled_for=scheduled_for,
        base_url_link=base_url_link,
        today=today,
        tenant_name=registry.get_tenant(session, keys, row.tenant_id).name,
        brand=_brand(session, row.tenant_id),
    )


@dataclass(frozen=True)
class _CardWindows:
    start: dt.date
    end: dt.date
    compare_start: dt.date
    compare_end: dt.date
    series_start: dt.date
    mode: str


def _card_windows(row: Scorecard, tenant: _Tenant, scheduled_for, today) -> _CardWindows:
    local = today or schedule.local_today(tenant.timezone, scheduled_for)
    start, end = schedule.period_window(row.period, local)
    mode = "last_year" if row.comparison == "last_year" else "previous"
    compare_start, compare_end = _compare_window(row.period, start, end, mode)
    series_start = min(start, end - (SHORT_SERIES_DAYS - 1) * DAY) if start == end else start
    return _CardWindows(start, end, compare_start, compare_end, series_start, mode)


def scorecard_days(
    row: Scorecard, tenant: _Tenant, scheduled_for: dt.datetime, today: dt.date | None = None
) -> tuple[dt.date, dt.date]:
    """The days of facts the scorecard's figures read when sent at ``scheduled_for``."""
    w = _card_windows(row, tenant, scheduled_for, today)
    wanted = {(ref.metric, ref.dimension or "") for ref in map(parse_ref, row.metrics)}
    first = min(w.compare_start, w.series_start)
    for goal in tenant.goals:
        if (goal.metric, goal.dimension or "") in wanted:
            first = min(first, figures.goal_window(goal, w.end)[0])
    return max(first, w.end - 3660 * DAY), w.end


def build_scorecard(
    row: Scorecard,
    tenant: _Tenant,
    resolver: figures.Resolver,
    *,
    scheduled_for: dt.datetime,
    base_url_link: str | None,
    today: dt.date | None,
    tenant_name: str,
    brand: BrandInfo,
) -> ScorecardContent:
    """``scorecard_content`` from what was read: ``resolver`` covers ``scorecard_days``."""
    w = _card_windows(row, tenant, scheduled_for, today)
    start, end, mode = w.start, w.end, w.mode
    refs = [parse_ref(text) for text in row.metrics]
    tenant_goals = {(g.metric, g.dimension or ""): g for g in tenant.goals}
    windows = figures.Windows(start, end, end, w.compare_start, w.compare_end, mode)
    label = {"last_year": "same period last year", "goal": "goal"}.get(
        row.comparison, _PREVIOUS_LABELS.get(row.period, "previous period")
    )
    series_days = figures.Windows.of(w.series_start, end, end + DAY, mode).days

    shown: list[Figure] = []
    for ref in refs:
        definition = resolver.define(ref.metric)
        if definition is None:
            shown.append(
                Figure(
                    ref.metric,
                    ref.dimension or "",
                    ref.metric,
                    None,
                    "no data",
                    change_text="no data",
                )
            )
            continue
        dims: list[str | None] = [ref.dimension]
        if ref.dimension is None and definition.unit == "money" and definition.currency is None:
            # never a total over currencies: a figure per currency, largest first
            split = resolver.dimensions(definition.ref)
            if split:
                size = {d: abs(resolver.value(definition.ref, d, start, end) or 0) for d in split}
                dims = sorted(split, key=lambda d: (-size[d], d))
        for dimension in dims:
            shown.append(
                _figure(
                    resolver,
                    definition,
                    dimension,
                    windows,
                    series_days,
                    row.comparison,
                    label,
                    tenant_goals.get((definition.ref, dimension or "")),
                    end,
                    tenant.locale,
                )
            )
    return ScorecardContent(
        tenant_id=row.tenant_id,
        scorecard_id=row.id,
        title=row.name,
        tenant_name=tenant_name,
        period_start=start,
        period_end=end,
        period_label=schedule.period_label(start, end),
        comparison_label=label,
        figures=tuple(shown),
        brand=brand,
        dashboard_url=base_url_link,
        locale=tenant.locale,
    )


def _figure(
    resolver: figures.Resolver,
    definition: figures.MetricDef,
    dimension: str | None,
    windows: figures.Windows,
    series_days: list[dt.date],
    comparison: str,
    label: str,
    goal,
    end: dt.date,
    locale: str,
) -> Figure:
    ref = definition.ref
    currency = figures.card_currency(definition, dimension)
    found = resolver.compare(ref, dimension, windows)
    value_text = (
        "no data"
        if found.value is None
        else formatting.compact(found.value, definition.unit, currency, locale)
    )
    goal_text = ""
    progress = None
    if goal is not None:
        # as of the period's last day: the goal's calendar period is the one holding it
        progress = resolver.goal_progress(goal, definition, dimension, end)
        target_text = formatting.compact(goal.target, definition.unit, currency, locale)
        goal_text = progress.text.replace(goals.compact(goal.target), target_text, 1)
    if comparison == "goal":
        if goal is None:
            previous, change, change_text, sentiment = None, None, "no goal set", "neutral"
        else:
            previous, change, change_text = goal.target, None, goal_text
            sentiment = {True: "good", False: "bad"}.get(progress.on_track, "neutral")
    else:
        previous, change = found.previous, found.change
        change_text = figures.change_text(
            found.previous,
            found.change,
            # read only when there is no percentage to show
            previous_text=""
            if found.change is not None
            else formatting.exact(found.previous, definition.unit, currency, locale),
            label=label,
            reason=found.reason,
            locale=locale,
        )
        sentiment = figures.sentiment(definition.polarity, change)
    return Figure(
        ref=ref,
        dimension=dimension or "",
        label=figures.card_label(definition, dimension),
        value=found.value,
        value_text=value_text,
        previous=previous,
        previous_text=""
        if previous is None
        else formatting.compact(previous, definition.unit, currency, locale),
        change=change,
        change_text=change_text,
        sentiment=sentiment,
        series=tuple(resolver.series(ref, dimension, series_days)),
        goal_text=goal_text,
    )


# -- anomalies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anomaly:
    """An unusual day of one of a tenant's metrics (a ``Verdict`` with what it is about)."""

    tenant_id: str
    #: the metric ref ("stripe.charges") and the dimension ("" for the total)
    metric: str
    dimension: str
    day: dt.date
    value: float
    expected: float
    low: float
    high: float
    score: float


def _judged(
    resolver: figures.Resolver,
    extra: Iterable[tuple[str, str]],
    skip: Collection[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The series worth judging: each stored metric as its chart shows it by default (the
    total; a line per currency for money, per dimension for a stored ratio) and the series
    alert rules name; but those in ``skip`` (series a caller knows have no day to judge)."""
    found: list[tuple[str, str]] = []
    for ref in resolver.figures.refs():
        if (ref, "") in skip and all((ref, d) in skip for d in resolver.figures.dimensions(ref)):
            continue
        definition = resolver.define(ref)
        if definition is None:
            continue
        dims = resolver.dimensions(ref)
        split = (definition.unit == "money" and definition.currency is None and dims) or (
            definition.kind == "ratio" and len(dims) > 1
        )
        found += [(ref, d) for d in dims] if split else [(ref, "")]
    for key in extra:
        if key not in found and key not in skip and resolver.define(key[0]) is not None:
            found.append(key)
    return [key for key in found if key not in skip]


def _history_start(today: dt.date, days: int, window: int = 1) -> dt.date:
    return today - (days + 7 * anomaly.WEEKS + window + 1) * DAY


def detect_anomalies(
    session: Session, tenant_ids: Iterable[str], *, today: dt.date, days: int = 7
) -> dict[str, list[Anomaly]]:
    """Judge the last ``days`` whole days (before ``today``, UTC) of each tenant's metrics
    and of its alert rules' series; record the anomalous days in ``metric_anomalies`` and
    remove recorded days that are no longer anomalous (a corrected refresh). The unusual
    days found, per tenant."""
    result: dict[str, list[Anomaly]] = {}
    first_judged, last_judged = today - days * DAY, today - DAY
    for tenant_id in tenant_ids:
        tenant = _Tenant.load(session, tenant_id)
        rules = session.scalars(select(AlertRule).where(AlertRule.tenant_id == tenant_id)).all()
        history_start = _history_start(today, days)
        resolver = tenant.resolver(session, history_start, last_judged)
        found: list[Anomaly] = []
        judged: set[tuple[str, str]] = set()
        for ref, dimension in _judged(resolver, ((r.metric, r.dimension or "") for r in rules)):
            definition = resolver.define(ref)
            through = tenant.complete_through(resolver, ref)
            if through is None:
                continue
            judged.add((ref, dimension))
            # the judged days and the eight weeks before them: what the method reads
            needed = [d for d in resolver.figures.days() if d >= history_start]
            values = dict(zip(needed, resolver.series(ref, dimension or None, needed), strict=True))
            day = first_judged
            spread = _min_spread(definition.unit)
            while day <= min(last_judged, through):
                if not anomaly.may_be_anomalous(values, day, min_spread=spread):
                    day += DAY
                    continue
                verdict = anomaly.detect(values, day, min_spread=spread)
                if verdict is not None and verdict.anomalous:
                    found.append(
                        Anomaly(
                            tenant_id,
                            ref,
                            dimension,
                            day,
                            verdict.value,
                            verdict.expected,
                            verdict.low,
                            verdict.high,
                            verdict.score,
                        )
                    )
                day += DAY
        # what these days said before is replaced by what they say now
        session.execute(
            delete(MetricAnomaly).where(
                MetricAnomaly.tenant_id == tenant_id,
                MetricAnomaly.day >= first_judged,
                MetricAnomaly.day <= last_judged,
            )
        )
        now = utcnow()
        session.add_all(
            MetricAnomaly(
                tenant_id=tenant_id,
                metric=a.metric,
                dimension=a.dimension,
                day=a.day,
                value=a.value,
                expected=a.expected,
                low=a.low,
                high=a.high,
                detected_at=now,
            )
            for a in found
        )
        session.flush()
        result[tenant_id] = found
    return result


# -- alerts ------------------------------------------------------------------------------------


def _window_value(resolver, ref, dimension, end: dt.date, window: int) -> float | None:
    return resolver.value(ref, dimension, end - (window - 1) * DAY, end)


def _when(day: dt.date, window: int) -> str:
    label = schedule.period_label(day, day)
    return f"on {label}" if window == 1 else f"in the {window} days to {label}"


def evaluate_alerts(
    session: Session, keys: KeyRing, tenant_ids: Iterable[str], *, today: dt.date
) -> list[AlertContent]:
    """Judge each unpaused alert rule of these tenants on the last whole day before
    ``today`` (or the last 7 whole days) and move its episode on: an alert that starts
    to hold is returned (to be sent) and marked firing; one that keeps holding stays
    silent; one that stops holding is cleared; a day without data changes nothing.
    Evaluating the same day twice fires once."""
    fired: list[AlertContent] = []
    day = today - DAY
    for tenant_id in tenant_ids:
        rules = session.scalars(
            select(AlertRule)
            .where(AlertRule.tenant_id == tenant_id, AlertRule.paused_at.is_(None))
            .order_by(AlertRule.created_at, AlertRule.id)
        ).all()
        if not rules:
            continue
        tenant = _Tenant.load(session, tenant_id)
        widest = max(r.window_days or 1 for r in rules)
        resolver = tenant.resolver(
            session, _history_start(today, 1, widest) - 7 * widest * DAY, day
        )
        for rule in rules:
            verdict = _judge(tenant, resolver, rule, day)
            if verdict is None:
                continue  # no data: the episode stays as it is
            holds, value, sentence = verdict
            rule.last_day, rule.last_value = day, value
            if not holds:
                rule.state, rule.firing_since = "ok", None
                continue
            if rule.state == "firing":
                continue
            rule.state, rule.firing_since = "firing", day
            fired.append(
                _alert_content(session, keys, tenant, resolver, rule, day, value, sentence)
            )
        session.flush()
    return fired


def _alert_content(
    session: Session,
    keys: KeyRing,
    tenant: _Tenant,
    resolver: figures.Resolver,
    rule: AlertRule,
    day: dt.date,
    value: float | None,
    sentence: str,
) -> AlertContent:
    return build_alert(
        tenant,
        resolver,
        rule,
        day,
        value,
        sentence,
        tenant_name=registry.get_tenant(session, keys, tenant.id).name,
        brand=_brand(session, tenant.id),
    )


def build_alert(
    tenant: _Tenant,
    resolver: figures.Resolver,
    rule: AlertRule,
    day: dt.date,
    value: float | None,
    sentence: str,
    *,
    tenant_name: str,
    brand: BrandInfo,
) -> AlertContent:
    """An alert's message from what was read (``_alert_content`` reads the rest)."""
    definition = resolver.define(rule.metric)
    window = rule.window_days or 1
    series_days = [day - (SHORT_SERIES_DAYS - 1 - i) * DAY for i in range(SHORT_SERIES_DAYS)]
    return AlertContent(
        tenant_id=tenant.id,
        alert_id=rule.id,
        tenant_name=tenant_name,
        label=figures.card_label(definition, rule.dimension or None)
        if definition is not None
        else rule.metric,
        condition=rule.condition,
        day=day,
        value=value,
        sentence=sentence,
        series=tuple(
            _window_value(resolver, rule.metric, rule.dimension or None, d, window)
            for d in series_days
        )
        if definition is not None
        else (),
        brand=brand,
        locale=tenant.locale,
    )


def alert_test_content(
    session: Session, keys: KeyRing, alert_id: str, *, today: dt.date
) -> AlertContent:
    """What the rule says of the last whole day, as a test message (``writevue alert
    test``): judged like ``evaluate_alerts`` but its episode left as it is."""
    rule = session.get(AlertRule, alert_id)
    if rule is None:
        raise NotFound(f"No alert with id {alert_id}; `writevue alert list TENANT` shows them.")
    day = today - DAY
    tenant = _Tenant.load(session, rule.tenant_id)
    window = rule.window_days or 1
    resolver = tenant.resolver(session, _history_start(today, 1, window) - 7 * window * DAY, day)
    verdict = _judge(tenant, resolver, rule, day)
    if verdict is None:
        sentence = f"Test message: {rule.metric} has no complete data for {_when(day, window)} yet."
        value = None
    else:
        holds, value, said = verdict
        state = "the alert would fire" if holds else "the alert would not fire"
        sentence = f"Test message: {said} ({state})"
    return _alert_content(session, keys, tenant, resolver, rule, day, value, sentence)


def _judge(
    tenant: _Tenant,
    resolver: figures.Resolver,
    rule: AlertRule,
    day: dt.date,
    *,
    say: bool = True,
    usual: bool = False,
) -> tuple[bool, float, str] | None:
    """(holds, the value judged, the sentence) or None without data.

    ``say=False``: the sentence is left empty (a rule that does not fire says nothing;
    ``batch`` asks again for the sentence of one that does). ``usual``: the caller's
    screen (``anomaly.screen`` over the rule's series, at its threshold) found the day
    cannot be anomalous, so an anomaly rule only asks whether there is a verdict at all
    (``anomaly.has_verdict``) and does not hold; its sentence is empty too."""
    definition = resolver.define(rule.metric)
    through = tenant.complete_through(resolver, rule.metric)
    if definition is None or through is None or through < day:
        return None
    window = rule.window_days or 1
    dimension = rule.dimension or None
    value = _window_value(resolver, rule.metric, dimension, day, window)
    if value is None:
        return None
    currency = figures.card_currency(definition, dimension)

    def text(number: float) -> str:
        return _text(number, definition.unit, currency, tenant.locale)

    def opening() -> str:
        label = figures.card_label(definition, dimension)
        return f"{label} was {text(value)} {_when(day, window)}" if say else ""

    condition, threshold = rule.condition, rule.threshold
    if condition in ("above", "below"):
        if threshold is None:
            return None
        holds = value > threshold if condition == "above" else value < threshold
        said = f"{opening()}, {condition} your threshold of {text(threshold)}." if say else ""
        return holds, value, said
    if condition == "change":
        previous = _window_value(resolver, rule.metric, dimension, day - window * DAY, window)
        fraction = figures.change(value, previous)
        if fraction is None or threshold is None:
            return None
        holds = abs(fraction) * 100 > threshold
        if not say:
            return holds, value, ""
        before = "the day before" if window == 1 else f"the {window} days before"
        limit = _text(threshold, "number", None, tenant.locale)
        return (
            holds,
            value,
            f"{opening()}, {formatting.change(fraction, tenant.locale)} against {before} "
            f"({text(previous)}); your alert is set at ±{limit}%.",
        )
    if condition == "anomaly":
        if usual:
            # the day and its weekday's weeks before: all ``has_verdict`` reads
            days = [day - 7 * i * DAY for i in range(anomaly.WEEKS + 1)]
        else:
            days = [day - i * DAY for i in range(7 * anomaly.WEEKS + 1)]
        if window == 1:
            # a day's value is its daily value: the same figures, read in one go
            values = dict(zip(days, resolver.series(rule.metric, dimension, days), strict=True))
        else:
            values = {d: _window_value(resolver, rule.metric, dimension, d, window) for d in days}
        if usual:
            return (False, value, "") if anomaly.has_verdict(values, day) else None
        verdict = anomaly.detect(
            values,
            day,
            threshold=threshold or anomaly.DEFAULT_THRESHOLD,
            min_spread=_min_spread(definition.unit),
        )
        if verdict is None:
            return None
        if not say:
            return verdict.anomalous, value, ""
        usual_range = f"{text(verdict.low)} to {text(verdict.high)}"
        what = f"a {_WEEKDAYS[day.weekday()]}" if window == 1 else "a week"
        return (
            verdict.anomalous,
            value,
            f"{opening()}, outside its usual range for {what} ({usual_range}).",
        )
    return None


__all__ = [
    "Anomaly",
    "alert_test_content",
    "build_alert",
    "build_scorecard",
    "detect_anomalies",
    "evaluate_alerts",
    "scorecard_content",
    "scorecard_days",
    "shared_loads",
]
