"""The client's dashboard: header, source status, KPI cards and a daily chart per metric.

The view never touches tokens or SQL: it is handed a tenant id by the gate and
reads through ``dashboard_server.data``.
"""

from __future__ import annotations

import datetime as dt
import html

import panel as pn
import polars as pl
from bokeh.models import ColumnDataSource, DatetimeTickFormatter, HoverTool, NumeralTickFormatter
from bokeh.palettes import Category10
from bokeh.plotting import figure

from .data import DashboardData, format_value, metric_label

STATE_LABEL = {"fresh": "Fresh", "stale": "Stale", "needs_reconnect": "Needs reconnect"}


def _header(data: DashboardData) -> pn.pane.HTML:
    updated = data.last_updated.strftime("%d %b %Y, %H:%M UTC") if data.last_updated else "not yet"
    statuses = (
        "".join(
            f'<li class="wv-status wv-status-{s.state}"><strong>{html.escape(s.title)}</strong> '
            f"{STATE_LABEL.get(s.state, s.state)} &middot; {html.escape(s.advice)}</li>"
            for s in data.sources
        )
        or '<li class="wv-status">No data sources connected yet.</li>'
    )
    return pn.pane.HTML(
        f'<header class="wv-header"><img class="wv-logo" src="/assets/logo.svg" alt="WriteVue">'
        f"<div><h1>{html.escape(data.tenant_name)}</h1>"
        f'<p class="wv-updated">Last updated: {updated} &middot; '
        f"{data.start:%d %b} to {data.end:%d %b %Y}</p></div></header>"
        f'<ul class="wv-statuses">{statuses}</ul>',
        sizing_mode="stretch_width",
    )


def _cards(data: DashboardData) -> pn.pane.HTML:
    if not data.kpis:
        return pn.pane.HTML('<p class="wv-empty">No data for this period yet.</p>')
    cards = []
    for kpi in data.kpis:
        change = kpi.change
        trend = "flat" if change is None or change == 0 else ("up" if change > 0 else "down")
        cards.append(
            f'<div class="wv-card"><div class="wv-card-label">{html.escape(kpi.label)}</div>'
            f'<div class="wv-card-value">{html.escape(kpi.text)}</div>'
            f'<div class="wv-card-change wv-{trend}">{html.escape(kpi.change_text)}</div></div>'
        )
    return pn.pane.HTML(
        f'<div class="wv-cards">{"".join(cards)}</div>', sizing_mode="stretch_width"
    )


def _chart(metric: str, series: pl.DataFrame) -> figure:
    plot = figure(
        title=metric_label(metric),
        x_axis_type="datetime",
        height=260,
        sizing_mode="stretch_width",
        toolbar_location=None,
        tools="",
    )
    dimensions = sorted(series["dimension"].unique().to_list())
    palette = Category10[10]
    for index, dimension in enumerate(dimensions):
        rows = series.filter(pl.col("dimension") == dimension).sort("day")
        days = [dt.datetime.combine(day, dt.time()) for day in rows["day"].to_list()]
        values = rows["value"].to_list()
        source = ColumnDataSource(
            {
                "day": days,
                "value": values,
                "text": [format_value(metric, dimension, v) for v in values],
            }
        )
        plot.line(
            "day",
            "value",
            source=source,
            line_width=2,
            color=palette[index % 10],
            legend_label=dimension.upper() if dimension else metric_label(metric),
        )
    plot.add_tools(
        HoverTool(
            tooltips=[("day", "@day{%F}"), ("value", "@text")],
            formatters={"@day": "datetime"},
            mode="vline",
        )
    )
    plot.xaxis.formatter = DatetimeTickFormatter(days="%d %b", months="%b %Y")
    plot.yaxis.formatter = NumeralTickFormatter(format="0,0")
    plot.legend.location = "top_left"
    plot.legend.background_fill_alpha = 0.6
    return plot


def build_dashboard(data: DashboardData) -> pn.viewable.Viewable:
    series = data.series.group_by("metric", "dimension", "day").agg(pl.col("value").sum())
    charts = [
        pn.pane.Bokeh(
            _chart(metric, series.filter(pl.col("metric") == metric)), sizing_mode="stretch_width"
        )
        for metric in sorted(series["metric"].unique().to_list())
    ]
    return pn.Column(
        _header(data),
        _cards(data),
        *charts,
        css_classes=["wv-dashboard"],
        sizing_mode="stretch_width",
    )
