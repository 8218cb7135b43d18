"""The dashboard's HTML: header, KPI cards, charts (SVG drawn here, one per metric) and
the breakdown table, as one string per period. Plain functions of ``DashboardData``:
the Viewer (``app``) shows what they return, the page cache keeps it.
"""

from __future__ import annotations

import datetime as dt
import html
from urllib.parse import urlencode

import polars as pl

from .data import DashboardData, Period, format_value, metric_label
from .header import header_html

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


def csv_href(period: Period) -> str:
    """Relative to the page itself, so the view needs no token to link to its export."""
    return "?" + urlencode({"format": "csv", "from": period.start, "to": period.end})


# -- HTML pieces ------------------------------------------------------------------------


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
