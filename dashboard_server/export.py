"""The exports, ``/d/<token>?format=csv|json&from=…&to=…`` of a live link, and the page's query.

The page takes five parameters of its own: ``format`` (``csv`` or ``json`` for an
export), ``from`` and ``to`` (its period, ``YYYY-MM-DD``), ``tv`` and ``compare``
(``previous`` or ``last_year``). Each may appear once, in UTF-8, with a value it knows;
anything else about them gets one 400 page that says what to do. Other parameters (a
mail's ``utm_*``) are left alone, as long as they are UTF-8.

The JSON export is what the page shows: for each card its metric, dimension, kind,
value, previous value, change, polarity and goal; for each chart its daily series.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from urllib.parse import parse_qsl

from tornado import routing
from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler

from writevue_pipelines.runtime import Runtime

from .data import (
    COMPARISONS,
    DashboardData,
    FactCache,
    Kpi,
    Period,
    PeriodError,
    csv_filename,
    dashboard_csv,
    load_dashboard,
)
from .gate import GATED_PATH
from .request_limits import refuse

PAGE_PARAMETERS = ("format", "from", "to", "tv", "compare")
FORMATS = ("csv", "json")
TV_VALUES = ("", "0", "1", "false", "true", "no", "yes")
#: the longest value any of the page's parameters takes, with room to spare
MAX_VALUE = 32
MAX_PARAMETERS = 64
_OPEN_LINK = "Open the dashboard link you were given as it is."


class BadQuery(ValueError):
    """A query the page does not take; the text says what to do (no value is echoed)."""


@dataclass(frozen=True)
class PageQuery:
    """The page's own parameters, checked."""

    export: bool
    period: Period | None
    tv: bool
    format: str = ""
    compare: str | None = None

    @classmethod
    def read(cls, query: str) -> PageQuery:
        """From the raw query string (as Tornado gives it: bytes decoded as Latin-1)."""
        try:
            text = query.encode("latin-1").decode("utf-8")
            pairs = parse_qsl(
                text,
                keep_blank_values=True,
                encoding="utf-8",
                errors="strict",
                max_num_fields=MAX_PARAMETERS,
            )
        except UnicodeError:
            raise BadQuery(
                f"This address has characters that cannot be read. {_OPEN_LINK}"
            ) from None
        except ValueError:  # more than MAX_PARAMETERS
            raise BadQuery(f"This address has too many parameters. {_OPEN_LINK}") from None
        own: dict[str, str] = {}
        for name, value in pairs:
            if name not in PAGE_PARAMETERS:
                continue
            if name in own:
                raise BadQuery(f"This address names '{name}' more than once. {_OPEN_LINK}")
            if len(value) > MAX_VALUE:
                raise BadQuery(f"This address's '{name}' is too long. {_OPEN_LINK}")
            own[name] = value
        export = "format" in own
        if export and own["format"] not in FORMATS:
            raise BadQuery(
                "A dashboard's figures are exported as CSV (format=csv) or JSON "
                "(format=json). Use the download link on the dashboard."
            )
        if own.get("compare", "previous") not in COMPARISONS:
            raise BadQuery(
                "'compare' is previous (the period before) or last_year (the same period "
                f"a year earlier). {_OPEN_LINK}"
            )
        if own.get("tv", "") not in TV_VALUES:
            raise BadQuery(f"'tv' is 1 for TV mode or 0 for the normal page. {_OPEN_LINK}")
        period = None
        if export or "from" in own or "to" in own:
            try:
                period = Period.parse(own.get("from", ""), own.get("to", ""))
            except PeriodError as error:
                raise BadQuery(str(error)) from None
        return cls(
            export,
            period,
            own.get("tv", "") in ("1", "true", "yes"),
            own.get("format", ""),
            own.get("compare"),
        )


class CsvExportMatcher(routing.Matcher):
    """``/d/<token>?…`` of a live link (the gate has run): a CSV export, or a query the
    page does not take, go to the export's handler; the page itself goes on to Panel.

    The dashboard links to its export relative to itself (``?format=csv&...``), so the
    view needs no token to offer a download.
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def match(self, request: HTTPServerRequest) -> dict | None:
        if getattr(request, "writevue_link", None) is None or not request.query:
            return None
        found = GATED_PATH.match(request.path[len(self.prefix) :])
        if not found or found.group(2):
            return None
        try:
            query = PageQuery.read(request.query)
        except BadQuery as problem:
            return {"path_args": [], "path_kwargs": {"problem": str(problem)}}
        if query.export:
            return {"path_args": [], "path_kwargs": {}}
        return None


class CsvExportHandler(RequestHandler):
    """``/d/<token>?format=csv&from=…&to=…``: the daily figures of the period the page
    shows; or the 400 page for a query the page does not take."""

    def initialize(self, runtime: Runtime, cache: FactCache) -> None:
        self.runtime, self.cache = runtime, cache

    def prepare(self) -> None:
        problem = self.path_kwargs.get("problem")
        if problem:
            refuse(self, 400, "Bad request", problem)

    def get(self, problem: str | None = None) -> None:
        link = self.request.writevue_link  # set by the gate, which let only a live link through
        try:
            query = PageQuery.read(self.request.query)
        except BadQuery as problem:  # the matcher read it well just now: only past midnight
            refuse(self, 400, "Bad request", str(problem))
            return
        data = load_dashboard(
            self.runtime,
            link.tenant_id,
            period=query.period,
            cache=self.cache,
            comparison=query.compare,
        )
        if query.format == "json":
            self.set_header("Content-Type", "application/json; charset=utf-8")
            name = csv_filename(data).removesuffix(".csv") + ".json"
            self.set_header("Content-Disposition", f'inline; filename="{name}"')
            self.finish(json.dumps(dashboard_json(data), ensure_ascii=False, indent=1))
            return
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{csv_filename(data)}"')
        self.finish(dashboard_csv(data))


def _number(value: float | None) -> float | int | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def _card_json(kpi: Kpi, days: list) -> dict:
    goal = kpi.goal
    return {
        "metric": kpi.ref,
        "label": kpi.label,
        "dimension": kpi.dimension,
        "kind": kpi.kind,
        "unit": kpi.unit,
        "currency": kpi.currency,
        "value": _number(kpi.value),
        "previous": _number(kpi.previous),
        "change": _number(kpi.change),
        "compared_with": kpi.compare_label if kpi.previous is not None else None,
        "polarity": kpi.polarity,
        "sentiment": kpi.sentiment,
        "goal": None
        if goal is None
        else {
            "target": _number(goal.target),
            "period": goal.period,
            "current": _number(goal.current),
            "fraction": _number(goal.fraction),
            "on_track": goal.on_track,
        },
        "series": [
            {"day": day.isoformat(), "value": _number(v)}
            for day, v in zip(days, kpi.series, strict=False)
        ],
    }


def dashboard_json(data: DashboardData) -> dict:
    """What the page shows, as data: its groups' cards and charts (no secret, no ids)."""
    days = [data.period.start + dt.timedelta(days=i) for i in range(data.period.days)]
    return {
        "tenant": data.tenant_name,
        "period": {
            "from": data.period.start.isoformat(),
            "to": data.period.end.isoformat(),
            "days": data.period.days,
            "partial_today": data.partial,
        },
        "comparison": data.comparison,
        "last_updated": data.last_updated.isoformat() if data.last_updated else None,
        "sources": [
            {"source": s.source, "title": s.title, "account": s.account, "state": s.state}
            for s in data.sources
        ],
        "groups": [
            {
                "title": group.title,
                "accounts": list(group.accounts),
                "cards": [_card_json(kpi, days) for kpi in group.kpis],
                "charts": [
                    {
                        "metric": chart.ref,
                        "label": chart.label,
                        "kind": chart.kind,
                        "unit": chart.unit,
                        "style": chart.style,
                        "lines": [
                            {
                                "dimension": dimension,
                                "values": [
                                    {"day": day.isoformat(), "value": _number(v)}
                                    for day, v in zip(chart.days, values, strict=True)
                                ],
                            }
                            for dimension, values in chart.lines
                        ],
                    }
                    for chart in group.charts
                ],
                "tables": [
                    {
                        "title": detail.title,
                        "columns": [
                            {"metric": c.ref, "label": c.label, "kind": c.kind, "unit": c.unit}
                            for c in detail.columns
                        ],
                        "rows": [
                            {"dimension": dimension, "values": [_number(k.value) for k in kpis]}
                            for dimension, kpis in detail.rows
                        ],
                    }
                    for detail in group.details
                ],
            }
            for group in data.groups
        ],
    }


def csv_export_rule(runtime: Runtime, cache: FactCache, prefix: str = "") -> routing.Rule:
    """The export's route, to go behind the gate (``install_gate(..., behind_gate=...)``)."""
    return routing.Rule(
        CsvExportMatcher(prefix), CsvExportHandler, {"runtime": runtime, "cache": cache}
    )
