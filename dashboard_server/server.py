"""The Panel server for client dashboards: ``/d/{token}`` behind the gate, and the connect page."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from urllib.parse import urlsplit

import panel as pn

from writevue_pipelines.runtime import Runtime

from .access_log import AccessLog, Visitor
from .app import GONE_HTML, Dashboard
from .data import DashboardData, FactCache, Period, load_dashboard
from .gate import (
    ASSETS_DIR,
    FailureLimiter,
    LinkResolver,
    current_link,
    install_gate,
    tornado_settings,
)
from .handlers import ConnectHandler, CsvExportHandler, OAuthCallbackHandler
from .redaction import install_log_scrubber

THEME = "/assets/theme.css"
FAVICON = "/assets/favicon.svg"
CACHE_KEY = "writevue.facts"
TRIM_DELAY_S = 2.0


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

    def __init__(self, runtime: Runtime, tenant_id: str, cache: FactCache, alive):
        self._runtime, self._tenant_id, self._cache, self._alive = runtime, tenant_id, cache, alive

    def load(self, period: Period) -> DashboardData:
        return load_dashboard(self._runtime, self._tenant_id, period=period, cache=self._cache)

    def alive(self) -> bool:
        return self._alive()


def fact_cache() -> FactCache:
    """The process-wide cache; ``pn.state.cache`` is shared by every session."""
    return pn.state.cache.setdefault(CACHE_KEY, FactCache())


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
            TenantData(runtime, link.tenant_id, fact_cache(), alive),
            tv=tv,
            refresh_s=refresh_s,
            on_interaction=on_interaction,
        )
        view.start_periodic()
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
    if release_memory not in getattr(pn.state, "_on_session_destroyed", ()):
        pn.state.on_session_destroyed(release_memory)  # outside a session: for every session
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
    return server


def serve(host: str = "127.0.0.1", port: int = 5006) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runtime = Runtime.from_env()
    server = build_server(runtime, host=host, port=port)
    logging.getLogger("writevue.dashboard").info("dashboards on http://%s:%d", host, port)
    server.start()
    server.io_loop.start()
