"""The Panel server for client dashboards: ``/d/{token}`` behind the gate, and the connect page."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from urllib.parse import urlsplit

import panel as pn
from panel.io.server import WSHandler as PanelWSHandler

from writevue_pipelines.runtime import Runtime

from .access_log import AccessLog, Visitor
from .app import GONE_HTML, Dashboard, dashboard_html
from .data import FactCache, LruCache, Period, load_facts, load_header, summarise
from .gate import (
    ASSETS_DIR,
    FailureLimiter,
    LinkResolver,
    current_link,
    install_gate,
    tornado_application,
    tornado_settings,
)
from .handlers import ConnectHandler, CsvExportHandler, OAuthCallbackHandler
from .redaction import install_log_scrubber
from .ticker import Ticker

THEME = "/assets/theme.css"
FAVICON = "/assets/favicon.svg"
CACHE_KEY = "writevue.facts"
PAGES_KEY = "writevue.pages"
PAGE_CACHE_BYTES = 32 * 1024 * 1024
TRIM_DELAY_S = 2.0
#: how often Bokeh discards sessions that ended (default 17 s); a pass over a dict
SESSION_CHECK_MS = 1000


def _load_malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS): hands freed heap pages back to the OS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()
_trim_pending = False


def release_memory(session_context) -> None:
    """After a session is destroyed: once its objects are gone, return the freed heap to the OS.

    A session's page, HTML and Bokeh messages are large strings that glibc serves from
    its heap; freed, they stay in the process (RSS) as fragmented free chunks, so a busy
    server's RSS only ever climbs. One ``malloc_trim`` a little after a burst of session
    ends (coalesced: at most one pending) gives those pages back; it takes milliseconds.
    """
    global _trim_pending
    if _malloc_trim is None or _trim_pending:
        return
    from tornado.ioloop import IOLoop

    def trim() -> None:
        global _trim_pending
        _trim_pending = False
        _malloc_trim(0)

    _trim_pending = True
    IOLoop.current().call_later(TRIM_DELAY_S, trim)


class TenantData:
    """The one tenant a session may show, bound by the server; the view sees only this."""

    def __init__(self, runtime: Runtime, tenant_id: str, alive):
        self._runtime, self._tenant_id, self._alive = runtime, tenant_id, alive

    def page(self, period: Period, *, tv: bool) -> str:
        """The dashboard's HTML: one registry read, then the cached page or one facts query.

        The key holds everything the page shows besides the facts (name, last update,
        each source's state, which also ages from fresh to stale) and the facts' version.
        """
        header = load_header(self._runtime, self._tenant_id)
        key = (
            self._tenant_id,
            header.version,
            header.tenant_name,
            header.last_updated,
            tuple(header.sources),
            period,
            tv,
        )
        pages = page_cache()
        page = pages.get(key)
        if page is None:
            facts = load_facts(self._runtime, self._tenant_id, period, header.version, fact_cache())
            page = dashboard_html(summarise(header, period, facts), tv=tv)
            pages.put(key, page)
        return page

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


#: every open dashboard's periodic link check (and TV reload), one timer per process
TICKER = Ticker()


def make_app(runtime: Runtime, resolve: LinkResolver, access_log: AccessLog | None = None):
    refresh_s = runtime.settings.dashboard_refresh_s

    def dashboard():
        document = pn.state.curdoc
        document.title = "Dashboard · WriteVue"
        # Panel's default favicon URL is relative ("./favicon.ico"): under /d/ it would hit
        # the gate as a bad token. Ours is served from /assets.
        document.template_variables["app_favicon"] = FAVICON
        document.template_variables["apple_icon"] = FAVICON
        token = pn.state.route_params.get("token", "")
        link = current_link(resolve)
        if link is None:  # revoked between the gate and this session
            return pn.pane.HTML(GONE_HTML)

        def alive() -> bool:
            # Re-checked by hash on every periodic tick: a revoked, rotated or expired
            # link stops updating open sessions.
            return resolve(token) is not None

        on_interaction = None
        if access_log is not None:
            # The page request that opened this session: its client, anonymised once.
            request = document.session_context.request
            visitor = Visitor.from_request(getattr(request, "remote_ip", None), request.headers)

            def on_interaction() -> None:
                access_log.record("interaction", link.id, visitor)

        tv = pn.state.session_args.get("tv", [b""])[0] in (b"1", b"true", b"yes")
        view = Dashboard(
            TenantData(runtime, link.tenant_id, alive),
            tv=tv,
            refresh_s=refresh_s,
            on_interaction=on_interaction,
        )
        TICKER.add(document.session_context.id, document, view, refresh_s)
        return view

    return dashboard


def build_server(
    runtime: Runtime,
    *,
    host: str = "127.0.0.1",
    port: int = 5006,
    limiter: FailureLimiter | None = None,
    frame_ancestors: str | None = None,
):
    """Create (not start) the dashboard server with the gate installed."""
    install_log_scrubber()
    pn.config.css_files = [THEME]
    pn.extension(design="native", notifications=False)
    limiter = limiter or FailureLimiter()
    destroyed = getattr(pn.state, "_on_session_destroyed", ())
    for hook in (TICKER.session_destroyed, release_memory):
        if hook not in destroyed:
            pn.state.on_session_destroyed(hook)  # outside a session: for every session
    resolve = LinkResolver(runtime)
    access_log = AccessLog(runtime.settings.log_dir)
    public = urlsplit(runtime.settings.dashboard_base_url).netloc
    origins = sorted({f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", public})
    pages = [
        (
            r"/connect/([A-Za-z0-9_-]{1,128})",
            ConnectHandler,
            {"runtime": runtime, "limiter": limiter},
        ),
        (r"/oauth/callback", OAuthCallbackHandler, {"runtime": runtime}),
    ]
    server = pn.serve(
        {"/d/{token}": make_app(runtime, resolve, access_log)},
        port=port,
        address=host,
        show=False,
        start=False,
        threaded=False,
        verbose=False,
        websocket_origin=origins,
        use_index=False,
        redirect_root=False,
        static_dirs={"assets": str(ASSETS_DIR)},
        ico_path="none",  # no Panel icon at /favicon.ico; pages link /assets/favicon.svg
        check_unused_sessions_milliseconds=SESSION_CHECK_MS,
        location=False,  # the view reads its query once; no URL-syncing model per page
        **tornado_settings(
            frame_ancestors or runtime.settings.dashboard_embed_origins,
            extra_patterns=pages,
            access_log=access_log,
        ),
    )
    install_gate(
        server,
        resolve,
        limiter,
        csv_handler=(CsvExportHandler, {"runtime": runtime, "cache": fact_cache()}),
    )
    install_dashboard_socket(server)
    TICKER.start()
    return server


class DashboardSocket(PanelWSHandler):
    """Panel's websocket, sending at once and letting a closed page's session go at once."""

    def open(self, *args, **kwargs):
        # Bokeh sends each message as several frames (header, metadata, content); with
        # Nagle's algorithm on, every frame after the first waits for the client's
        # delayed ACK, about 40 ms per message: on each page load's document and on
        # each update the client sees.
        self.set_nodelay(True)
        return super().open(*args, **kwargs)

    def on_close(self) -> None:
        connection = getattr(self, "connection", None)
        session = connection.session if connection is not None else None
        super().on_close()  # detaches the connection from its session
        if session is not None and session.connection_count == 0 and not pn.config.reconnect:
            # Without Panel's reconnect, a page whose websocket closed never comes back
            # to its session (a reload opens a new one). Bokeh would keep the session
            # another 15-32 s; asked to expire, it goes at the next check
            # (SESSION_CHECK_MS), and with it the document's memory.
            session.request_expiration()


def install_dashboard_socket(server) -> None:
    """Serve the dashboards' websockets with ``DashboardSocket`` (before the server starts)."""
    replaced = 0
    for rule in tornado_application(server).wildcard_router.rules:
        if rule.target is PanelWSHandler:
            rule.target = DashboardSocket
            replaced += 1
    if not replaced:
        raise RuntimeError("panel's websocket route was not found")


def serve(host: str = "127.0.0.1", port: int = 5006) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runtime = Runtime.from_env()
    server = build_server(runtime, host=host, port=port)
    logging.getLogger("writevue.dashboard").info("dashboards on http://%s:%d", host, port)
    freeze_startup_objects()
    server.start()
    server.io_loop.start()


def freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off everything that exists before serving.

    Panel, Bokeh, polars and SQLAlchemy leave some 200,000 objects that live as long as
    the process; a full collection walks them all (~100 ms on one core, the whole
    server stalled), and Panel asks for one after sessions end, so every few seconds
    on a busy server. Frozen, they are skipped: collections walk what sessions made.
    """
    gc.collect()
    gc.freeze()
