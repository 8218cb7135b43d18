"""The Panel server for client dashboards: ``/d/{token}`` behind the gate."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import panel as pn

from writevue_pipelines.runtime import Runtime

from .app import build_dashboard
from .data import load_dashboard
from .gate import (
    ASSETS_DIR,
    FailureLimiter,
    LinkResolver,
    current_link,
    install_gate,
    tornado_settings,
)
from .redaction import install_log_scrubber

THEME = "/assets/theme.css"


def make_app(runtime: Runtime, resolve: LinkResolver):
    def dashboard():
        link = current_link(resolve)
        if link is None:  # revoked between the gate and this session
            return pn.pane.HTML("<h1>Not found</h1>")
        pn.state.curdoc.title = "Dashboard · WriteVue"
        data = load_dashboard(runtime, link.tenant_id)
        return build_dashboard(data)

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
    resolve = LinkResolver(runtime)
    public = urlsplit(runtime.settings.dashboard_base_url).netloc
    origins = sorted({f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", public})
    server = pn.serve(
        {"/d/{token}": make_app(runtime, resolve)},
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
        **tornado_settings(frame_ancestors),
    )
    install_gate(server, resolve, limiter or FailureLimiter())
    return server


def serve(host: str = "127.0.0.1", port: int = 5006) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runtime = Runtime.from_env()
    server = build_server(runtime, host=host, port=port)
    logging.getLogger("writevue.dashboard").info("dashboards on http://%s:%d", host, port)
    server.start()
    server.io_loop.start()
