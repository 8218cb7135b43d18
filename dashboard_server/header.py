"""The dashboard's header: who it is for, when it was last updated, each source's state."""

from __future__ import annotations

import html

from .data import DashboardData

STATE_LABEL = {"fresh": "Fresh", "stale": "Stale", "needs_reconnect": "Needs reconnect"}


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
