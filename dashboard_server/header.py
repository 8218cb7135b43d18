"""The dashboard's header: the brand, who it is for, when it was last updated, each source's state.

With a brand (``data.brand``, a ``branding.BrandView``) the header shows the brand's
logo (alt text: its name) and name instead of WriteVue's, sets the brand's colours as
CSS custom properties (``--wv-primary``, ``--wv-accent``, ``--wv-bg``, ``--wv-text``)
in a small inline style, and names the brand wherever a source's advice would name
WriteVue. In TV mode (``.wv-tv``) only primary and accent apply, as accents: the dark
background and light text stay readable whatever the brand's colours.
"""

from __future__ import annotations

import html

from .branding import BrandView, brand_style, brand_text, logo_html

STATE_LABEL = {
    "fresh": "Fresh",
    "stale": "Stale",
    "needs_reconnect": "Needs reconnect",
    "paused": "Paused",
}


def _brand(data) -> BrandView | None:
    brand = getattr(data, "brand", None)
    return brand if isinstance(brand, BrandView) else None


def header_html(data, *, tv: bool | None = None) -> str:
    """``data`` is a ``DashboardData``; ``tv`` None: both looks in one style (by ``.wv-tv``)."""
    brand = _brand(data)
    updated = data.last_updated.strftime("%d %b %Y, %H:%M UTC") if data.last_updated else "not yet"
    statuses = (
        "".join(
            f'<li class="wv-status wv-status-{s.state}"><strong>{html.escape(s.title)}</strong> '
            + (f'<span class="wv-account">{html.escape(s.account)}</span> ' if s.account else "")
            + f"{STATE_LABEL.get(s.state, s.state)} &middot; "
            f"{html.escape(brand_text(s.advice, brand))}</li>"
            for s in data.sources
        )
        or '<li class="wv-status">No data sources connected yet.</li>'
    )
    if brand is None:
        style = ""
    elif tv is None:
        style = brand_style(brand, scope=".wv-dashboard:not(.wv-tv)") + brand_style(
            brand, tv=True, scope=".wv-dashboard.wv-tv"
        )
    else:
        style = brand_style(brand, tv=tv)
    return (
        f'{style}<header class="wv-header">{logo_html(brand)}'
        f"<div><h1>{html.escape(data.tenant_name)}</h1>"
        f'<p class="wv-updated">Last updated: <span class="wv-updated-at">{updated}</span>'
        f' &middot; <span class="wv-period">{data.period.label}</span></p></div></header>'
        f'<ul class="wv-statuses">{statuses}</ul>'
    )
