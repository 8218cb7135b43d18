"""The dashboard's HTML: header, KPI cards, charts (SVG drawn here, one per metric) and
the breakdown table, as one string per period. Plain functions of ``DashboardData``:
the Viewer (``app``) shows what they return, the page cache keeps it.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from urllib.parse import urlencode

from writevue_pipelines import formatting

from .data import Chart, DashboardData, Detail, Group, Kpi, Period
from .header import header_html

#: shown when the link was revoked, rotated or expired while the page was open; white
#: label: it names nobody (``branding.gone_html`` names a brand)
GONE_HTML = (
    '<div class="wv-gone"><h1>This link no longer works</h1>'
    "<p>Ask whoever sent it to you for a new one.</p></div>"
)
#: shown when the server's session secret was rotated: the link still works
RELOAD_HTML = (
    '<div class="wv-gone"><h1>This page has expired</h1>'
    '<p><a href="">Reload it</a> to see the latest figures.</p></div>'
)
_TOOLTIP_MAX_DAYS = 366  # a year of days: see the screens report for the page-size cost
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


def _n(value: float) -> str:
    """A coordinate to a tenth of a unit, without a trailing ".0" (a page draws hundreds)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def csv_href(period: Period) -> str:
    """Relative to the page itself, so the view needs no token to link to its export."""
    return "?" + urlencode({"format": "csv", "from": period.start, "to": period.end})


def json_href(period: Period) -> str:
    return "?" + urlencode({"format": "json", "from": period.start, "to": period.end})


# -- cards ------------------------------------------------------------------------------


def _sparkline(values: tuple[float | None, ...], partial: bool) -> str:
    """A small line of the period's daily values; gaps where there is no data, today's
    unfinished day dashed."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(points) < 2:
        return ""
    width, height = 120, 28
    low = min(v for _, v in points)
    high = max(v for _, v in points)
    span = (high - low) or 1.0
    last = max(len(values) - 1, 1)

    def xy(i: int, v: float) -> str:
        return f"{_n(width * i / last)},{_n(height - 2 - (height - 4) * (v - low) / span)}"

    runs, run, previous = [], [], None
    for i, v in points:
        if previous is not None and i != previous + 1:
            runs.append(run)
            run = []
        run.append((i, v))
        previous = i
    runs.append(run)
    lines = []
    for run in runs:
        if partial and run[-1][0] == len(values) - 1 and len(run) > 1:
            whole, today = run[:-1], run[-2:]
        else:
            whole, today = run, []
        if len(whole) > 1:
            lines.append(f'<polyline points="{" ".join(xy(i, v) for i, v in whole)}"/>')
        if today:
            lines.append(
                f'<polyline class="wv-spark-partial" '
                f'points="{" ".join(xy(i, v) for i, v in today)}"/>'
            )
    return (
        f'<svg class="wv-spark" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'aria-hidden="true">{"".join(lines)}</svg>'
    )


def _goal_html(kpi: Kpi) -> str:
    goal = kpi.goal
    if goal is None:
        return ""
    fraction = goal.fraction if goal.fraction is not None else 0.0
    width = max(0.0, min(fraction, 1.0))
    pace = "" if goal.on_track is None else (" wv-on-track" if goal.on_track else " wv-behind")
    marker = ""
    if goal.expected_fraction is not None:
        marker = (
            f'<span class="wv-goal-pace" style="left:{min(goal.expected_fraction, 1.0):.1%}">'
            "</span>"
        )
    return (
        f'<div class="wv-goal{pace}" title="{html.escape(goal.text)}">'
        f'<div class="wv-goal-bar"><span style="width:{width:.1%}"></span>{marker}</div>'
        f'<div class="wv-goal-text">{html.escape(goal.text)}</div></div>'
    )


def _card(kpi: Kpi) -> str:
    change = kpi.change
    trend = "flat" if change is None or change == 0 else ("up" if change > 0 else "down")
    exact = kpi.exact_text
    partial = ' <span class="wv-partial">incl. today so far</span>' if kpi.partial else ""
    return (
        f'<div class="wv-card wv-kind-{kpi.kind}" data-metric="{html.escape(kpi.metric)}" '
        f'data-ref="{html.escape(kpi.ref)}" data-dimension="{html.escape(kpi.dimension)}" '
        f'data-kind="{kpi.kind}" data-sentiment="{kpi.sentiment}">'
        f'<div class="wv-card-label">{html.escape(kpi.label)}</div>'
        f'<div class="wv-card-value" tabindex="0" title="{html.escape(exact)}" '
        f'aria-label="{html.escape(kpi.label)}: {html.escape(exact)}">'
        f"{html.escape(kpi.text)}</div>"
        f'<div class="wv-card-change wv-{trend} wv-{kpi.sentiment}">'
        f"{html.escape(kpi.change_text)}{partial}</div>"
        f"{_sparkline(kpi.series, kpi.partial)}{_goal_html(kpi)}</div>"
    )


# -- charts -----------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _chart_svg(chart: Chart) -> str:
    """One metric's daily values as SVG: a line (or bars) per dimension; no line where
    there is no data, today's unfinished day dashed."""
    width, height, left, right, top, bottom = 640, 200, 56, 10, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    days = list(chart.days)
    span = max(len(days) - 1, 1)
    every = [v for _, values in chart.lines for v in values if v is not None]
    smallest, largest = min(every, default=0.0), max(every, default=0.0)
    # Round both ends outwards, so the axis reads 0, 2.5k, 5k rather than the raw extremes.
    low = -_nice_max(-smallest) if smallest < 0 else 0.0
    high = _nice_max(largest) if largest > 0 else (0.0 if low < 0 else 1.0)
    scale = plot_h / (high - low) if high > low else 1.0
    xs = [left + plot_w * i / span for i in range(len(days))]

    def y(v: float) -> float:
        return top + plot_h - (v - low) * scale

    label = html.escape(chart.label)
    parts = [
        f'<svg class="wv-chart-svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{label}, daily" data-metric="{html.escape(chart.ref.split(".", 1)[1])}" '
        f'data-ref="{html.escape(chart.ref)}" data-days="{len(days)}">'
    ]
    # Gridlines at the bottom and the top, and at zero when the axis crosses it; labels
    # are dropped where they would overlap another.
    ticks = [low, high] + ([0.0] if low < 0 < high else [(low + high) / 2])
    placed: list[float] = []
    for value in sorted(set(ticks)):
        at = y(value)
        if any(abs(at - other) < 14 for other in placed):
            continue
        placed.append(at)
        text = formatting.axis(value, chart.unit, chart.currency, chart.locale)
        parts.append(
            f'<line class="wv-grid" x1="{left}" x2="{width - right}" y1="{at:.1f}" '
            f'y2="{at:.1f}"/><text class="wv-axis" x="{left - 6}" y="{at + 4:.1f}" '
            f'text-anchor="end">{html.escape(text)}</text>'
        )
    for i, anchor in ((0, "start"), (span // 2, "middle"), (span, "end")):
        parts.append(
            f'<text class="wv-axis" x="{left + plot_w * i / span:.1f}" y="{height - 6}" '
            f'text-anchor="{anchor}">{days[min(i, len(days) - 1)]:%d %b}</text>'
        )
    for index, (dimension, values) in enumerate(chart.lines):
        css = f"wv-s{index % 6}"
        if chart.style == "bar":
            # One path of rectangles per series (a <rect> per day would be three times
            # the bytes): each bar from its value to zero, at least half a unit tall.
            bar = max(plot_w / max(len(days), 1) * 0.8 / max(len(chart.lines), 1), 1.0)
            width_text = _n(bar)
            bars = []
            for i, v in enumerate(values):
                if v is None:
                    continue
                x = xs[i] - bar * len(chart.lines) / 2 + bar * index
                top_y, base = sorted((y(v), y(0.0)))
                tall = _n(max(base - top_y, 0.5))
                bars.append(f"M{_n(x)} {_n(top_y)}h{width_text}v{tall}h-{width_text}z")
            if bars:
                parts.append(f'<path class="wv-bar {css}" d="{"".join(bars)}"/>')
            continue
        runs, run = [], []
        for i, v in enumerate(values):
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((i, v))
        if run:
            runs.append(run)
        for run in runs:
            whole = run[:-1] if chart.partial and run[-1][0] == len(days) - 1 else run
            if len(whole) == 1 and len(run) == 1:
                i, v = whole[0]
                parts.append(
                    f'<circle class="wv-dot {css}" cx="{_n(xs[i])}" cy="{_n(y(v))}" r="2"/>'
                )
            elif len(whole) > 1:
                points = " ".join(f"{_n(xs[i])},{_n(y(v))}" for i, v in whole)
                parts.append(
                    f'<polyline class="wv-line {css}" points="{points}" '
                    f'data-dimension="{html.escape(dimension)}"/>'
                )
            if len(whole) < len(run):
                points = " ".join(f"{_n(xs[i])},{_n(y(v))}" for i, v in run[-2:])
                parts.append(f'<polyline class="wv-line wv-line-partial {css}" points="{points}"/>')
    parts += _marks_svg(chart, xs, y)
    parts.append("</svg>")
    if len(days) <= _TOOLTIP_MAX_DAYS:
        # Each day's figures as a native tooltip: one HTML element per day laid over the
        # plot (an SVG <rect> with a <title> would be two), each band centred on its day.
        band = plot_w / span
        box = (
            f"left:{(left - band / 2) / width:.3%};width:{(plot_w + band) / width:.3%};"
            f"top:{top / height:.3%};height:{plot_h / height:.3%}"
        )
        tips = "".join(
            f'<span title="{html.escape(_day_tip(chart, i, day))}"></span>'
            for i, day in enumerate(days)
        )
        parts.append(f'<div class="wv-days" style="{box}">{tips}</div>')
    legend = "".join(
        f'<span class="wv-key wv-s{index % 6}">{html.escape(_dimension_label(chart, d))}</span>'
        for index, (d, _) in enumerate(chart.lines)
        if d
    )
    if chart.marks:
        legend += f'<span class="wv-anomaly-key">{html.escape(ANOMALY_LEGEND)}</span>'
    caption = f"<figcaption>{label}{legend}</figcaption>"
    return f'<figure class="wv-chart">{caption}<div class="wv-plot">{"".join(parts)}</div></figure>'


#: the legend line of a chart that marks unusual days
ANOMALY_LEGEND = "\u25c6 unusual day (outside its usual range)"


def _mark_text(chart: Chart, mark) -> str:
    """ "Unusual: 400 (usual range 31 to 62)"."""
    currency = mark.dimension if chart.unit == "money" and mark.dimension else chart.currency

    def text(value: float) -> str:
        return formatting.exact(value, chart.unit, currency, chart.locale)

    line = _dimension_label(chart, mark.dimension)
    return (
        f"unusual{' ' + line if line else ''}: {text(mark.value)} "
        f"(usual range {text(mark.low)} to {text(mark.high)})"
    )


def _marks_svg(chart: Chart, xs: list[float], y) -> list[str]:
    """A diamond on each unusual day of a line, with its value and usual range as title."""
    found = []
    lines = dict(chart.lines)
    for mark in chart.marks:
        series = lines.get(mark.dimension, ())
        value = series[mark.index] if mark.index < len(series) else None
        if value is None:
            value = mark.value
        cx, cy, r = xs[mark.index], y(value), 5.0
        corners = ((cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy))
        points = " ".join(f"{x:.1f},{y_:.1f}" for x, y_ in corners)
        day = chart.days[mark.index]
        title = f"{day:%d %b %Y}: {_mark_text(chart, mark)}"
        found.append(
            f'<polygon class="wv-anomaly" points="{points}" data-day="{day.isoformat()}" '
            f'data-dimension="{html.escape(mark.dimension)}"><title>{html.escape(title)}</title>'
            "</polygon>"
        )
    return found


def _dimension_label(chart: Chart, dimension: str) -> str:
    return dimension.upper() if chart.unit == "money" else dimension


def _day_tip(chart: Chart, index: int, day: dt.date) -> str:
    values = []
    for dimension, series in chart.lines:
        currency = dimension if chart.unit == "money" and dimension else chart.currency
        text = formatting.exact(series[index], chart.unit, currency, chart.locale)
        values.append(f"{_dimension_label(chart, dimension)} {text}".strip())
    today = " (so far)" if chart.partial and index == len(chart.days) - 1 else ""
    unusual = [_mark_text(chart, m) for m in chart.marks if m.index == index]
    marked = f" \u25c6 {'; '.join(unusual)}" if unusual else ""
    return f"{day:%d %b %Y}{today}: {'; '.join(values)}{marked}"


# -- tables -----------------------------------------------------------------------------


def _detail_html(detail: Detail) -> str:
    heads = "".join(f'<th scope="col">{html.escape(c.label)}</th>' for c in detail.columns)
    rows = "".join(
        f'<tr><th scope="row">{html.escape(dim)}</th>'
        + "".join(
            f'<td data-label="{html.escape(k.label)}" title="{html.escape(k.exact_text)}">'
            f"{html.escape(k.text)}</td>"
            for k in kpis
        )
        + "</tr>"
        for dim, kpis in detail.rows
    )
    return (
        f'<div class="wv-detail"><h3>{html.escape(detail.title)}</h3>'
        '<div class="wv-table-wrap"><table class="wv-table wv-detail-table">'
        f'<thead><tr><th scope="col"></th>{heads}</tr></thead><tbody>{rows}</tbody>'
        "</table></div></div>"
    )


def _daily_average(kpi: Kpi, days: int) -> str:
    if kpi.kind != "counter" or kpi.value is None:
        return "—"
    return formatting.exact(
        kpi.value / days, "number" if kpi.unit == "count" else kpi.unit, kpi.currency, kpi.locale
    )


def breakdown_html(data: DashboardData) -> str:
    """Every card's figures. When the period reaches today, the comparison is made on
    whole days: the table shows that figure too, so the change adds up on the page."""
    if not data.kpis:
        return ""
    days = data.period.days
    compared = "Same period last year" if data.comparison == "last_year" else "Previous period"
    partial = data.partial
    if partial:
        compared += " (as many days)"

    def row(k: Kpi) -> str:
        whole = ""
        if partial:
            text = formatting.exact(k.compared, k.unit, k.currency, k.locale)
            whole = f'<td data-label="Whole days">{html.escape(text)}</td>'
        previous = k.previous_text if k.previous is not None else "—"
        return (
            f'<tr class="wv-{k.sentiment}"><th scope="row">{html.escape(k.label)}</th>'
            f'<td data-label="This period">{html.escape(k.exact_text)}</td>{whole}'
            f'<td data-label="{compared}">{html.escape(previous)}</td>'
            f'<td data-label="Change">{html.escape(formatting.change(k.change, k.locale))}</td>'
            f'<td data-label="Daily average">{html.escape(_daily_average(k, days))}</td></tr>'
        )

    this = "This period (incl. today so far)" if partial else "This period"
    whole = '<th scope="col">Whole days (to yesterday)</th>' if partial else ""
    heads = (
        f'<th scope="col">Metric</th><th scope="col">{this}</th>{whole}'
        f'<th scope="col">{compared}</th><th scope="col">Change</th>'
        '<th scope="col">Daily average</th>'
    )
    return (
        '<section class="wv-breakdown"><h2>Breakdown</h2><div class="wv-table-wrap">'
        f'<table class="wv-table"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(row(k) for k in data.kpis)}</tbody></table></div></section>"
    )


def group_html(group: Group, *, tv: bool = False) -> str:
    accounts = (
        f'<span class="wv-accounts">{html.escape(", ".join(group.accounts))}</span>'
        if group.accounts
        else ""
    )
    cards = "".join(_card(k) for k in group.kpis)
    body = f'<div class="wv-cards">{cards}</div>' if cards else ""
    if not tv:
        charts = "".join(_chart_svg(c) for c in group.charts)
        body += f'<div class="wv-charts">{charts}</div>' if charts else ""
        body += "".join(_detail_html(d) for d in group.details)
    return (
        f'<section class="wv-group"><h2>{html.escape(group.title)}{accounts}</h2>{body}</section>'
    )


def dashboard_html(data: DashboardData, *, tv: bool = False) -> str:
    export = (
        ""
        if tv
        else f'<p class="wv-export"><a href="{html.escape(csv_href(data.period))}" download>'
        "Download these figures (CSV)</a> &middot; "
        f'<a href="{html.escape(json_href(data.period))}">JSON</a></p>'
    )
    if data.groups:
        groups = "".join(group_html(g, tv=tv) for g in data.groups)
    else:
        groups = '<p class="wv-empty">No data for this period yet.</p>'
    body = header_html(data) + groups
    body += "" if tv else breakdown_html(data)
    return f'<div class="wv-dashboard{" wv-tv" if tv else ""}">{body}{export}</div>'
