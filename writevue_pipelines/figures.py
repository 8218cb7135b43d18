"""The numbers a dashboard shows, combined by what each metric is.

A **counter** (payments, commits) adds up over days: a period's value is the sum of
its days. A **gauge** (stars, open issues, a balance) is a level at a moment: a
period's value is the latest level in it (summed over its breakdown, such as
repositories, each at its latest), never a sum of days. A **ratio** (a mean or a
rate) is averaged over days when stored, and a calculated ratio is the ratio of
its parts' period values (the ratio of the sums, never a mean of daily ratios).

Days before a connection's history starts are *no data* (None), not zero; today's
unfinished day is *partial*: it is shown, marked, and left out of comparisons, which
then compare whole days with as many whole days. A comparison is shown only when
the period compared with is covered by data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import polars as pl

from writevue_pipelines.sources.base import MetricMeta

DAY = dt.timedelta(days=1)
Values = dict[dt.date, float | None]


@dataclass(frozen=True)
class MetricDef:
    """A metric as a card shows it: stored (``stripe.gross_volume``) or calculated
    (``calc.average_order_value``, with its formula)."""

    ref: str
    label: str
    kind: str = "counter"
    polarity: str = "up_good"
    unit: str = "count"
    currency: str | None = None
    formula: object | None = None  # a writevue_pipelines.formulas.Formula

    @property
    def source(self) -> str:
        return self.ref.split(".", 1)[0]

    @property
    def metric(self) -> str:
        return self.ref.split(".", 1)[1]


def shift_year(day: dt.date, years: int = -1) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


@dataclass(frozen=True)
class Windows:
    """The days shown, the whole days compared, and the days they are compared with."""

    start: dt.date
    end: dt.date
    #: the last whole day shown (the day before today when the period reaches today)
    complete_end: dt.date
    compare_start: dt.date
    compare_end: dt.date
    mode: str  # previous | last_year

    @classmethod
    def of(cls, start: dt.date, end: dt.date, today: dt.date, mode: str) -> Windows:
        complete_end = min(end, today - DAY)
        whole_days = max((complete_end - start).days + 1, 0)
        if mode == "last_year":
            compare_start = shift_year(start)
        else:
            compare_start = start - dt.timedelta(days=(end - start).days + 1)
        compare_end = compare_start + dt.timedelta(days=whole_days - 1)
        return cls(start, end, complete_end, compare_start, compare_end, mode)

    @property
    def partial(self) -> bool:
        return self.complete_end < self.end

    @property
    def comparable(self) -> bool:
        return self.complete_end >= self.start

    @property
    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days + 1)]


class Figures:
    """Daily values per metric and dimension of one tenant, merged over its connections."""

    def __init__(
        self,
        facts: pl.DataFrame,
        sources: Mapping[str, str],
        metas: Mapping[str, Mapping[str, MetricMeta]],
        history: Mapping[str, dt.date],
        first_day: dt.date,
        last_day: dt.date,
    ):
        """``facts``: connection_id, metric, dimension, day, value; ``sources``:
        connection id -> source name; ``metas``: source -> metric -> meta;
        ``history``: connection id -> its first day of data."""
        self.first_day, self.last_day = first_day, last_day
        self._metas = metas
        self._sources = dict(sources)
        self._history = dict(history)
        #: ref -> dimension -> connection -> day -> value
        self._raw: dict[str, dict[str, dict[str, dict[dt.date, float]]]] = {}
        #: ref -> connection -> the days it reported the metric (for any dimension)
        self._reported: dict[str, dict[str, set[dt.date]]] = {}
        # no rows, no polars call (a notifications run builds hundreds of these)
        columns = ("connection_id", "metric", "dimension", "day", "value")
        rows = facts.select(columns).iter_rows() if facts.height else ()
        for cid, metric, dimension, day, value in rows:
            source = self._sources.get(cid)
            if source is None:
                continue
            ref = f"{source}.{metric}"
            self._raw.setdefault(ref, {}).setdefault(dimension, {}).setdefault(cid, {})[day] = value
            self._reported.setdefault(ref, {}).setdefault(cid, set()).add(day)
        self._daily: dict[tuple[str, str | None], Values] = {}

    @classmethod
    def prefilled(
        cls,
        facts: pl.DataFrame,
        sources: Mapping[str, str],
        metas: Mapping[str, Mapping[str, MetricMeta]],
        history: Mapping[str, dt.date],
        first_day: dt.date,
        last_day: dt.date,
        daily: Mapping[str, tuple[str, list[float | None]]],
    ) -> Figures:
        """Figures whose daily values of some refs were merged elsewhere, as ``daily`` would
        merge them: a notifications run merges every tenant's series of a metric with one
        connection and one dimension at once, in numpy (``notifications.batch``, held to
        this class by a test). ``daily``: ref -> (its one dimension, its value on each day
        from ``first_day`` to ``last_day``), the same list for the dimension and the total;
        ``facts`` holds the other refs' rows, merged here as usual."""
        found = cls(facts, sources, metas, history, first_day, last_day)
        days = found._days()
        for ref, (dimension, values) in daily.items():
            found._raw[ref] = {dimension: {}}
            merged = dict(zip(days, values, strict=True))
            found._daily[(ref, dimension)] = found._daily[(ref, None)] = merged
        return found

    # -- what there is ----------------------------------------------------------------------

    def refs(self) -> list[str]:
        return list(self._raw)

    def meta(self, ref: str) -> MetricMeta | None:
        source, _, metric = ref.partition(".")
        return self._metas.get(source, {}).get(metric)

    def has(self, ref: str) -> bool:
        return ref in self._raw

    def dimensions(self, ref: str) -> list[str]:
        return sorted(self._raw.get(ref, {}))

    def _connections(self, ref: str) -> list[str]:
        source = ref.split(".", 1)[0]
        return [cid for cid, s in self._sources.items() if s == source and cid in self._history]

    def coverage(self, ref: str) -> dt.date | None:
        """The first day every connection behind ``ref`` has data for (its history start)."""
        starts = [self._history[cid] for cid in self._connections(ref)]
        return max(starts) if starts else None

    def covered(self, ref: str, kind: str, start: dt.date, end: dt.date) -> bool:
        first = self.coverage(ref)
        if first is None or start < self.first_day:
            return False
        return first <= (end if kind == "gauge" else start)

    # -- daily values ---------------------------------------------------------------------

    def daily(self, ref: str, dimension: str | None, kind: str) -> Values:
        """day -> value over the loaded days, for one dimension or (None) their total."""
        key = (ref, dimension)
        if key not in self._daily:
            if dimension is None:
                self._daily[key] = self._total(ref, kind)
            else:
                self._daily[key] = self._merged(ref, dimension, kind)
        return self._daily[key]

    def days(self) -> list[dt.date]:
        """Every day loaded, first to last."""
        return self._days()

    def _days(self) -> list[dt.date]:
        days = self.__dict__.get("_day_list")
        if days is None:
            days = self.__dict__["_day_list"] = [
                self.first_day + dt.timedelta(days=i)
                for i in range((self.last_day - self.first_day).days + 1)
            ]
        return days

    def _merged(self, ref: str, dimension: str, kind: str) -> Values:
        per_connection = self._raw.get(ref, {}).get(dimension, {})
        days = self._days()
        columns: list[list[float | None]] = []
        for cid in self._connections(ref):
            values = per_connection.get(cid, {})
            reported = self._reported.get(ref, {}).get(cid, set())
            start = self._history[cid]
            column: list[float | None] = []
            last: float | None = None
            for day in days:
                if kind == "gauge":
                    if day in values:
                        last = values[day]
                    elif day in reported:
                        # the connection reported the metric that day, but not for this
                        # dimension: it is gone (a repository deleted or transferred)
                        last = None
                    column.append(last)
                elif day < start:
                    column.append(None)
                else:
                    column.append(values.get(day, 0.0 if kind == "counter" else None))
            columns.append(column)
        merged: Values = {}
        for index, day in enumerate(days):
            present = [c[index] for c in columns if c[index] is not None]
            if not present:
                merged[day] = None
            elif kind == "ratio":
                merged[day] = sum(present) / len(present)
            else:
                merged[day] = sum(present)
        return merged

    def _total(self, ref: str, kind: str) -> Values:
        parts = [self.daily(ref, d, kind) for d in self.dimensions(ref)]
        total: Values = {}
        for day in self._days():
            present = [p[day] for p in parts if p.get(day) is not None]
            if not present:
                total[day] = None
            elif kind == "ratio":
                total[day] = sum(present) / len(present)
            else:
                total[day] = sum(present)
        return total

    # -- a period's value -------------------------------------------------------------------

    def aggregate(
        self, ref: str, dimension: str | None, kind: str, start: dt.date, end: dt.date
    ) -> float | None:
        return combine(kind, self.window(self.daily(ref, dimension, kind), start, end))

    @staticmethod
    def window(values: Values, start: dt.date, end: dt.date) -> list[float | None]:
        day, found = start, []
        while day <= end:
            found.append(values.get(day))
            day += DAY
        return found


def combine(kind: str, values: Iterable[float | None]) -> float | None:
    """A period's value from its days: counter sum, gauge latest, ratio mean."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if kind == "gauge":
        return present[-1]
    if kind == "ratio":
        return sum(present) / len(present)
    return sum(present)


def change(value: float | None, previous: float | None) -> float | None:
    if value is None or previous is None or previous == 0:
        return None
    return (value - previous) / abs(previous)


def sentiment(polarity: str, fraction: float | None) -> str:
    """good, bad or neutral: how a change reads for this metric."""
    if fraction is None or fraction == 0 or polarity == "neutral":
        return "neutral"
    up = fraction > 0
    return "good" if up == (polarity == "up_good") else "bad"


#: how a comparison reads: "+12.5% vs previous period"
COMPARE_LABELS = {"previous": "previous period", "last_year": "same period last year"}


@dataclass(frozen=True)
class Comparison:
    """A metric's value over a period and the value it is compared with: what a
    dashboard card and a scorecard figure both show, computed once, here."""

    value: float | None
    #: the value compared with (None: no comparison, ``reason`` says why)
    previous: float | None
    #: with a partial period: its value over the whole days, which the comparison uses
    compared: float | None
    reason: str
    #: "previous period" / "same period last year"
    label: str
    partial: bool

    @property
    def change(self) -> float | None:
        current = self.compared if self.compared is not None else self.value
        return change(current, self.previous)


def change_text(
    previous: float | None,
    fraction: float | None,
    *,
    previous_text: str,
    label: str,
    reason: str = "",
    partial: bool = False,
    locale: str = "en",
) -> str:
    """How a comparison reads on a card and in a scorecard: "+12.5% vs previous period",
    "€0.00 in the previous period" (no percentage from zero), or why there is none."""
    from . import formatting

    if previous is None:
        return reason or "no earlier data to compare"
    if fraction is None:
        return f"{previous_text} in the {label}"
    whole = " (whole days)" if partial else ""
    return f"{formatting.change(fraction, locale)} vs {label}{whole}"


def calculated_defs(template) -> dict[str, MetricDef]:
    """A template's calculated metrics as definitions, by ref (``calc.<name>``)."""
    found = {}
    for calc in getattr(template, "calculated", ()) or ():
        found[f"calc.{calc.name}"] = MetricDef(
            f"calc.{calc.name}",
            calc.label,
            calc.kind,
            calc.polarity,
            calc.unit,
            calc.currency,
            calc.formula,
        )
    return found


def polarity_overrides(template, tenant: Mapping[str, str] | None) -> dict[str, str]:
    """Which way is good per ref: the tenant's own choice over its template's."""
    return {**dict(getattr(template, "polarity", None) or {}), **dict(tenant or {})}


def card_currency(definition: MetricDef, dimension: str | None) -> str | None:
    """A money metric without a currency of its own is in its dimension (Stripe's
    currency breakdown)."""
    if definition.unit == "money" and definition.currency is None:
        return dimension or None
    return definition.currency


def card_label(definition: MetricDef, dimension: str | None, label: str | None = None) -> str:
    """ "Gross volume (EUR)" for a currency, "Stars · acme/api" for another dimension."""
    shown = label or definition.label
    currency = card_currency(definition, dimension)
    if dimension and not (definition.unit == "money" and dimension == currency):
        return f"{shown} · {dimension}"
    if dimension and definition.unit == "money":
        return f"{shown} ({dimension.upper()})"
    return shown


def goal_window(goal, today: dt.date) -> tuple[dt.date, dt.date]:
    """The days a goal is measured over: its calendar period, or from its start (or the
    day it was set) to its due day."""
    from . import goals

    if goal.period != "by_date":
        return goals.period_bounds(goal.period, today)
    created = getattr(goal, "created_at", None)
    start = goal.starts_on or (created.date() if created else today)
    return start, goal.due_on or today


@dataclass
class Resolver:
    """Values of metric refs (stored or calculated) for one dimension and window."""

    figures: Figures
    calculated: Mapping[str, MetricDef] = field(default_factory=dict)
    #: ref -> polarity, over the metric's own (the tenant's and its template's choice)
    polarity: Mapping[str, str] = field(default_factory=dict)

    def define(self, ref: str) -> MetricDef | None:
        definition = self._define(ref)
        if definition is not None and ref in self.polarity:
            definition = replace(definition, polarity=self.polarity[ref])
        return definition

    def _define(self, ref: str) -> MetricDef | None:
        if ref.startswith("calc."):
            return self.calculated.get(ref)
        meta = self.figures.meta(ref)
        if meta is None:
            if not self.figures.has(ref):
                return None
            return MetricDef(ref, ref.split(".", 1)[1].replace("_", " ").capitalize())
        return MetricDef(ref, meta.label, meta.kind, meta.polarity, meta.unit)

    def compare(self, ref: str, dimension: str | None, windows: Windows) -> Comparison:
        """The value over ``windows`` and what it is compared with: whole days against as
        many whole days (a period reaching today shows today so far and compares without
        it); no comparison where the earlier period is not covered by data."""
        w = windows
        value = self.value(ref, dimension, w.start, w.end)
        previous, compared, reason = None, None, ""
        if w.partial and w.comparable:
            compared = self.value(ref, dimension, w.start, w.complete_end)
        if not w.comparable:
            reason = "today is not over yet: nothing to compare"
        elif not self.covered(ref, w.compare_start, w.compare_end):
            first = self.figures.coverage(ref) if not ref.startswith("calc.") else None
            reason = (
                f"no comparison: data starts {first:%d %b %Y}"
                if first
                else "no comparison: the earlier period has no data"
            )
        else:
            previous = self.value(ref, dimension, w.compare_start, w.compare_end)
        label = COMPARE_LABELS.get(w.mode, COMPARE_LABELS["previous"])
        return Comparison(value, previous, compared, reason, label, w.partial)

    def goal_progress(self, goal, definition: MetricDef, dimension: str | None, today: dt.date):
        """``goals.progress`` of ``goal`` as of ``today`` (its value to date from the loaded
        days; a gauge's pace from its level on the goal's first day)."""
        from . import goals

        start, _ = goal_window(goal, today)
        start = max(start, self.figures.first_day)
        now = min(today, self.figures.last_day)
        value = self.value(definition.ref, dimension, start, now)
        start_value = None
        if definition.kind == "gauge":
            start_value = self.value(definition.ref, dimension, start, start)
        return goals.progress(
            goal,
            kind=definition.kind,
            value_to_date=value,
            today=today,
            start_value=start_value,
            polarity=definition.polarity,
        )

    def value(
        self, ref: str, dimension: str | None, start: dt.date, end: dt.date, depth: int = 0
    ) -> float | None:
        definition = self.define(ref)
        if definition is None or depth > 20:
            return None
        if definition.formula is None:
            return self.figures.aggregate(ref, dimension, definition.kind, start, end)
        return definition.formula.evaluate(
            lambda r: self.value(r.metric, r.dimension or dimension, start, end, depth + 1)
        )

    def series(self, ref: str, dimension: str | None, days: list[dt.date]) -> list[float | None]:
        definition = self.define(ref)
        if definition is None:
            return [None] * len(days)
        if definition.formula is None:
            values = self.figures.daily(ref, dimension, definition.kind)
            return [values.get(day) for day in days]
        return [self.value(ref, dimension, day, day) for day in days]

    def covered(self, ref: str, start: dt.date, end: dt.date, depth: int = 0) -> bool:
        definition = self.define(ref)
        if definition is None or depth > 20:
            return False
        if definition.formula is None:
            return self.figures.covered(ref, definition.kind, start, end)
        return all(self.covered(r.metric, start, end, depth + 1) for r in definition.formula.refs)

    def dimensions(self, ref: str, depth: int = 0) -> list[str]:
        definition = self.define(ref)
        if definition is None or depth > 20:
            return []
        if definition.formula is None:
            return self.figures.dimensions(ref)
        found: list[str] = []
        for r in definition.formula.refs:
            if r.dimension is None:
                found += [d for d in self.dimensions(r.metric, depth + 1) if d not in found]
        return found
