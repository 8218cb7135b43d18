"""The client's dashboard as a Panel ``Viewer``: its parameters are the state, HTML is the view.

The view never touches tokens or SQL: the server hands it a ``DashboardSource``
(load a period, is the link still alive, where the CSV is). To stay cheap per
view (a few Bokeh models, not hundreds), the header, KPI cards, the charts (SVG
drawn here, one per metric) and the breakdown table are one HTML pane; only the
date-range picker is made of widgets.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlencode

import panel as pn
import param
import polars as pl

from .data import PRESET_DAYS, DashboardData, Period, format_value, metric_label

STATE_LABEL = {"fresh": "Fresh", "stale": "Stale", "needs_reconnect": "Needs reconnect"}
RANGE_OPTIONS = {f"{days} days": str(days) for days in PRESET_DAYS} | {"Custom": "custom"}
GONE_HTML = (
    '<div class="wv-gone"><h1>This link no longer works</h1>'
    "<p>Ask your WriteVue contact for a new one.</p></div>"
)
#: shown when the server's session secret was rotated: the link still works
RELOAD_HTML = (
    '<div class="wv-gone"><h1>This page has expired</h1>'
    '<p><a href="">Reload it</a> to see the latest figures.</p></div>'
)
_TOOLTIP_MAX_DAYS = 92
# How the browser draws the page, not how it looks (that is assets/theme.css): a chart
# or the table off screen is laid out and drawn when it scrolls near, not on page load
# (its size is reserved, so the page does not jump), and a chart's layout stays its own.
RENDERING_CSS = """
.wv-chart { content-visibility: auto; contain-intrinsic-size: auto 260px; contain: content; }
.wv-breakdown { content-visibility: auto; contain-intrinsic-size: auto 800px; }
.wv-plot { position: relative; overflow: hidden; }
.wv-days { position: absolute; display: flex; }
.wv-days span { flex: 1; }
.wv-days span:hover { background: rgba(47, 111, 222, 0.08); }
"""


class DashboardSource(Protocol):
    """What the view may ask of the server about the one tenant it shows."""

    def page(self, period: Period, *, tv: bool) -> str:
        """The dashboard's HTML for the period (``dashboard_html`` of its data)."""
        ...

    def alive(self) -> bool: ...


def csv_href(period: Period) -> str:
    """Relative to the page itself, so the view needs no token to link to its export."""
    return "?" + urlencode({"format": "csv", "from": period.start, "to": period.end})


# -- HTML pieces ------------------------------------------------------------------------


def header_html(data: DashboardData) -> str:
    updated = data.last_updated.strftime("%d %b %Y, %H:%M UTC") if data.last_updated else "not yet"
    statuses = (
        "".join(
            f'<li class="wv-status wv-status-{s.state}"><strong>{html.escape(s.title)}</strong> '
            f"{STATE_LABEL.get(s.state, s.state)} &middot; {html.escape(s.advice)}</li>"
            for s in data.sources
        )
        or '<li class="wv-status">No data sources connected yet.</li>'
    )
    return (
        f'<header class="wv-header"><img class="wv-logo" src="/assets/logo.svg" alt="WriteVue">'
        f"<div><h1>{html.escape(data.tenant_name)}</h1>"
        f'<p class="wv-updated">Last updated: <span class="wv-updated-at">{updated}</span>'
        f' &middot; <span class="wv-period">{data.period.label}</span></p></div></header>'
        f'<ul class="wv-statuses">{statuses}</ul>'
    )


def cards_html(data: DashboardData) -> str:
    if not data.kpis:
        return '<p class="wv-empty">No data for this period yet.</p>'
    cards = []
    for kpi in data.kpis:
        change = kpi.change
        trend = "flat" if change is None or change == 0 else ("up" if change > 0 else "down")
        cards.append(
            f'<div class="wv-card" data-metric="{html.escape(kpi.metric)}" '
            f'data-dimension="{html.escape(kpi.dimension)}">'
            f'<div class="wv-card-label">{html.escape(kpi.label)}</div>'
            f'<div class="wv-card-value">{html.escape(kpi.text)}</div>'
            f'<div class="wv-card-change wv-{trend}">{html.escape(kpi.change_text)}</div></div>'
        )
    return f'<section class="wv-cards">{"".join(cards)}</section>'


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _axis_text(value: float) -> str:
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if abs(value) >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"


def _daily_values(series: pl.DataFrame) -> dict[str, dict[str, dict[dt.date, float]]]:
    """metric -> dimension -> day -> value, in one pass over the rows."""
    values: dict[str, dict[str, dict[dt.date, float]]] = {}
    for metric, dimension, day, value in series.select(
        "metric", "dimension", "day", "value"
    ).iter_rows():
        values.setdefault(metric, {}).setdefault(dimension, {})[day] = value
    return values


def _chart_svg(metric: str, by_day: dict[str, dict[dt.date, float]], period: Period) -> str:
    """One metric's daily values as an SVG line chart; one line per dimension, gaps as zero."""
    width, height, left, right, top, bottom = 640, 200, 48, 10, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max(period.days - 1, 1)
    dimensions = sorted(by_day)
    days = [period.start + dt.timedelta(days=i) for i in range(period.days)]
    smallest = min((v for m in by_day.values() for v in m.values()), default=0.0)
    # Round both ends outwards, so the axis reads 0, 2.5k, 5k rather than the raw extremes.
    low = -_nice_max(-smallest) if smallest < 0 else 0.0
    high = _nice_max(max((v for m in by_day.values() for v in m.values()), default=0.0))
    scale = plot_h / (high - low) if high > low else 1.0
    xs = [left + plot_w * i / span for i in range(period.days)]

    def y(v: float) -> float:
        return top + plot_h - (v - low) * scale

    label = html.escape(metric_label(metric))
    parts = [
        f'<svg class="wv-chart-svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{label}, daily" data-metric="{html.escape(metric)}" '
        f'data-days="{period.days}">'
    ]
    # Gridlines at the bottom, zero (or the middle) and the top.
    for value in (low, 0.0 if low < 0 else high / 2, high):
        parts.append(
            f'<line class="wv-grid" x1="{left}" x2="{width - right}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}"/><text class="wv-axis" x="{left - 6}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{_axis_text(value)}</text>'
        )
    for i, anchor in ((0, "start"), (span // 2, "middle"), (span, "end")):
        parts.append(
            f'<text class="wv-axis" x="{left + plot_w * i / span:.1f}" y="{height - 6}" '
            f'text-anchor="{anchor}">{days[min(i, len(days) - 1)]:%d %b}</text>'
        )
    for index, dimension in enumerate(dimensions):
        values = by_day[dimension]
        points = " ".join(
            f"{x:.1f},{y(values.get(day, 0.0)):.1f}" for x, day in zip(xs, days, strict=True)
        )
        parts.append(
            f'<polyline class="wv-line wv-s{index % 6}" points="{points}" '
            f'data-dimension="{html.escape(dimension)}"/>'
        )
    parts.append("</svg>")
    if period.days <= _TOOLTIP_MAX_DAYS:
        # Each day's figures as a native tooltip: one HTML element per day laid over the
        # plot (an SVG <rect> with a <title> would be two), each band centred on its day.
        band = plot_w / span
        box = (
            f"left:{(left - band / 2) / width:.3%};width:{(plot_w + band) / width:.3%};"
            f"top:{top / height:.3%};height:{plot_h / height:.3%}"
        )
        tips = "".join(
            f'<span title="{html.escape(_day_tip(metric, by_day, dimensions, day))}"></span>'
            for day in days
        )
        parts.append(f'<div class="wv-days" style="{box}">{tips}</div>')
    legend = "".join(
        f'<span class="wv-key wv-s{index % 6}">{html.escape(d.upper())}</span>'
        for index, d in enumerate(dimensions)
        if d
    )
    caption = f"<figcaption>{label}{legend}</figcaption>"
    return f'<figure class="wv-chart">{caption}<div class="wv-plot">{"".join(parts)}</div></figure>'


def _day_tip(
    metric: str, by_day: dict[str, dict[dt.date, float]], dimensions: list[str], day: dt.date
) -> str:
    values = "; ".join(format_value(metric, d, by_day[d].get(day, 0.0)) for d in dimensions)
    return f"{day:%d %b %Y}: {values}"


def charts_html(data: DashboardData) -> str:
    if data.series.is_empty():
        return ""
    values = _daily_values(data.series)
    charts = [_chart_svg(metric, values[metric], data.period) for metric in sorted(values)]
    return f'<section class="wv-charts">{"".join(charts)}</section>'


def breakdown_html(data: DashboardData) -> str:
    if not data.kpis:
        return ""
    days = data.period.days
    rows = "".join(
        f'<tr><th scope="row">{html.escape(k.label)}</th>'
        f"<td>{html.escape(k.text)}</td><td>{html.escape(k.previous_text)}</td>"
        f"<td>{'—' if k.change is None else f'{k.change:+.1%}'}</td>"
        f"<td>{html.escape(format_value(k.metric, k.dimension, k.value / days))}</td></tr>"
        for k in data.kpis
    )
    return (
        '<section class="wv-breakdown"><h2>Breakdown</h2><div class="wv-table-wrap">'
        '<table class="wv-table"><thead><tr><th scope="col">Metric</th>'
        '<th scope="col">This period</th><th scope="col">Previous period</th>'
        '<th scope="col">Change</th><th scope="col">Daily average</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )


def dashboard_html(data: DashboardData, *, tv: bool = False) -> str:
    export = (
        ""
        if tv
        else f'<p class="wv-export"><a href="{html.escape(csv_href(data.period))}" download>'
        "Download these figures (CSV)</a></p>"
    )
    body = header_html(data) + cards_html(data) + charts_html(data)
    body += "" if tv else breakdown_html(data)
    return f'<div class="wv-dashboard{" wv-tv" if tv else ""}">{body}{export}</div>'


# -- the Viewer -------------------------------------------------------------------------


class Dashboard(pn.viewable.Viewer):
    """One client's dashboard. The date range and TV mode are its state.

    Nothing here schedules itself: the server calls ``tick`` every ``refresh_s`` seconds
    while the session is open, and ``end`` once its link is gone (see
    ``dashboard_server.ticker``). Every change the client makes asks the source whether
    the link is still alive before anything is rendered.
    """

    range = param.Selector(default="30", objects=list(RANGE_OPTIONS.values()))
    custom = param.CalendarDateRange(default=None, doc="the custom period, when range is custom")
    tv = param.Boolean(default=False, doc="TV mode: reloads itself, large type, dark")
    refresh_s = param.Integer(default=60, bounds=(1, None))
    gone = param.Boolean(default=False, doc="the link was revoked or expired while open")

    def __init__(
        self,
        source: DashboardSource,
        *,
        today: Callable[[], dt.date] | None = None,
        on_interaction: Callable[[], None] | None = None,
        **params,
    ):
        self._source = source
        self._on_interaction = on_interaction
        self._today = today or (lambda: dt.datetime.now(dt.UTC).date())
        if params.get("custom") is None:
            period = Period.last(30, self._today())
            params["custom"] = (period.start, period.end)
        super().__init__(**params)
        self._content = pn.pane.HTML(
            sizing_mode="stretch_width", margin=0, stylesheets=[RENDERING_CSS]
        )
        picker = pn.widgets.RadioButtonGroup.from_param(
            self.param.range, options=RANGE_OPTIONS, name="", button_type="light"
        )
        # The custom-range picker is made when first asked for: most views never use it,
        # and every widget is Bokeh models to build, send and draw on each page load.
        self._custom_picker: pn.widgets.DateRangePicker | None = None
        self._controls = pn.Row(picker, css_classes=["wv-controls"], visible=not self.tv)
        self._layout = pn.Column(
            self._controls,
            self._content,
            css_classes=["wv-root"] + (["wv-root-tv"] if self.tv else []),
            styles={"background": "#0b1020", "min-height": "100vh"} if self.tv else {},
            sizing_mode="stretch_width",
            margin=0,
        )
        self._draw()  # the server has just checked the link: no second check

    @property
    def period(self) -> Period:
        if self.range == "custom" and self.custom:
            return Period.between(*self.custom)
        days = int(self.range) if self.range != "custom" else 30
        return Period.last(days, self._today())

    def _show_custom_picker(self) -> None:
        if self.range == "custom" and self._custom_picker is None:
            self._custom_picker = pn.widgets.DateRangePicker.from_param(
                self.param.custom, name="", width=260
            )
            self._controls.append(self._custom_picker)
        elif self._custom_picker is not None:
            self._custom_picker.visible = self.range == "custom"

    @param.depends("range", "custom", watch=True)
    def _render(self) -> None:
        """The client changed the period: draw it, if the link still opens this dashboard."""
        if self.gone:
            return
        if not self._source.alive():
            self.end(GONE_HTML)
            return
        self._draw()

    def _draw(self) -> None:
        self._show_custom_picker()
        self._content.object = self._source.page(self.period, tv=self.tv)

    @param.depends("range", "custom", watch=True)
    def _interacted(self) -> None:
        """The client used a control: counted (anonymised) for the dashboard-use trends."""
        if self._on_interaction is not None and not self.gone:
            self._on_interaction()

    def tick(self) -> None:
        """Periodic: in TV mode, reload (if the link still opens this dashboard)."""
        if self.tv:
            self._render()

    def end(self, page: str = GONE_HTML) -> None:
        """Stop showing anything of the tenant: the link is gone (or the page expired)."""
        self.gone = True
        self._controls.visible = False
        self._content.object = page

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout
