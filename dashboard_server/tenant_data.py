"""The one tenant a dashboard session may show: its page per period, rendered once per refresh."""

from __future__ import annotations

import datetime as dt
import time

import panel as pn

from writevue_pipelines.runtime import Runtime

from .data import (
    FactCache,
    LruCache,
    Period,
    TenantHeader,
    comparison_mode,
    first_day_needed,
    load_facts,
    load_header,
    summarise,
)
from .render import dashboard_html

CACHE_KEY = "writevue.facts"
PAGES_KEY = "writevue.pages"
PAGE_CACHE_BYTES = 32 * 1024 * 1024
#: how long the read that opened a session may serve its first page (drawn at once)
OPENING_READ_S = 2.0


class TenantData:
    """The one tenant a session may show, bound by the server; the view sees only this."""

    def __init__(self, runtime: Runtime, tenant_id: str, alive):
        self._runtime, self._tenant_id, self._alive = runtime, tenant_id, alive
        #: the tenant's name as the last page showed it (the browser tab's title)
        self.tenant_name = ""
        self.brand = None
        #: the registry read that opened the session (``default_comparison``) and when, kept
        #: for its first page only, drawn at once: a session's first page costs one read, as
        #: every later one does
        self._opening: tuple[float, TenantHeader] | None = None

    def _header(self) -> TenantHeader:
        opening, self._opening = self._opening, None
        if opening is not None and time.monotonic() - opening[0] < OPENING_READ_S:
            return opening[1]
        return load_header(self._runtime, self._tenant_id)

    def page(self, period: Period, *, tv: bool, compare: str | None = None) -> str:
        """The dashboard's HTML: one registry read, then the cached page or one facts query.

        The key holds everything the page shows besides the facts (name, last update,
        each source's state, which also ages from fresh to stale, the tenant's template,
        goals and settings) and the facts' version.
        """
        header = self._header()
        self.tenant_name = header.tenant_name
        self.brand = header.brand  # for the page's favicon
        mode = comparison_mode(header, compare)
        key = (self._tenant_id, header.cache_key, period, tv, mode, _today())
        pages = page_cache()
        page = pages.get(key)
        if page is None:
            facts = load_facts(
                self._runtime,
                self._tenant_id,
                period,
                header.version,
                fact_cache(),
                first_day=first_day_needed(header, period, mode),
            )
            page = dashboard_html(summarise(header, period, facts, comparison=mode), tv=tv)
            pages.put(key, page)
        return page

    def gone_page(self) -> str | None:
        """ "This link no longer works" in the tenant's brand (else the server's default
        brand); None without either (the neutral page)."""
        from .branding import default_brand_view, gone_html

        brand = self.brand
        if brand is None and self._runtime.settings.default_brand:
            brand = default_brand_view(self._runtime)
        return gone_html(brand) if brand is not None else None

    def default_comparison(self) -> str:
        """Asked as the session opens, just before its first page: that page uses the same
        read."""
        header = load_header(self._runtime, self._tenant_id)
        self._opening = (time.monotonic(), header)
        return comparison_mode(header)

    def alive(self) -> bool:
        return self._alive()


def fact_cache() -> FactCache:
    """The process-wide cache; ``pn.state.cache`` is shared by every session."""
    return pn.state.cache.setdefault(CACHE_KEY, FactCache())


def page_cache() -> LruCache:
    """Rendered pages, process-wide like the facts; bounded by their total size."""
    return pn.state.cache.setdefault(
        PAGES_KEY, LruCache(max_entries=4096, max_size=PAGE_CACHE_BYTES, size=len)
    )


def _today() -> dt.date:
    """Part of a page's key: "today so far" and goal paces change at midnight (UTC)."""
    return dt.datetime.now(dt.UTC).date()
