"""The dashboard server assembled: ``/d/{token}`` behind the gate, its CSV export, the connect
page, the unsubscribe page.

Each part lives in its own module; this one only assembles them into one Panel server:
the gate (``gate``, ``limiter``), the headers (``headers``), static files (``static``),
the request log (``request_log``, ``access_log``), the export (``export``), the connect
page (``connect``), the unsubscribe page (``unsubscribe``), sessions bound to their links
(``sessions``), the routes left (``routes``) and the process tuning (``tuning``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import jinja2
import panel as pn
from bokeh.application.handlers.handler import Handler
from bokeh.models import ImportedStyleSheet
from panel.io.resources import JS_VERSION, LOCAL_DIST, patch_model_css
from panel.io.state import set_curdoc, state
from tornado.web import Application

from writevue_pipelines import links
from writevue_pipelines.runtime import Runtime

from .access_log import AccessLog, Visitor
from .app import GONE_HTML, Dashboard, query_state
from .branding import LOGO_ROUTE, BrandLogoHandler, DefaultBrandPages, brand_style, favicon_url
from .client_address import install_client_address
from .connect import ConnectHandler, OAuthCallbackHandler
from .export import csv_export_rule
from .gate import (
    GATED_PATH,
    LinkResolver,
    NotFoundPage,
    RejectHandler,
    install_gate,
    set_not_found_page,
)
from .headers import XSRF_COOKIE_KWARGS, security_headers, security_transform
from .limiter import FailureLimiter, shared_limiters
from .redaction import announce, install_log_scrubber
from .request_limits import install_request_limits
from .request_log import log_function
from .routes import remove_module_import_route
from .sessions import (
    LinkBinding,
    LinkBoundSocket,
    SessionGuard,
    link_key,
    session_binding,
    session_choice_rule,
)
from .static import ASSETS_DIR, RobotsHandler, StaticGzip, asset_url
from .tenant_data import TenantData, fact_cache
from .ticker import Ticker
from .tuning import (
    SESSION_CHECK_MS,
    WEBSOCKET_COMPRESSION,
    freeze_startup_objects,
    install_dashboard_socket,
    release_memory,
)
from .unsubscribe import ROUTE as UNSUBSCRIBE_ROUTE
from .unsubscribe import UnsubscribeHandler

# Named by their content (``?v=``): a browser keeps them, and a repeat view fetches none.
THEME = asset_url("theme.css")
#: cards, groups, sparklines, goals (render.py)
CARDS_CSS = asset_url("cards.css")
FAVICON = asset_url("favicon.svg")
SCREENS = asset_url("screens.js")
#: scripts Panel's page names that a dashboard never runs: ES-module shims (for Panel's
#: ESM components) and Bokeh's WebGL bundle (no WebGL plot here). Each is bytes to fetch
#: and code to compile before the document can show (the shims load, unversioned, ahead
#: of Bokeh itself). Bokeh's table bundle stays, though no table is drawn: Panel's own
#: bundle does not load without it.
UNUSED_SCRIPTS = ("es-module-shims", "/bokeh-gl.")
_SCRIPT_TAG = re.compile(r'<script type="(?:esms-options|text/javascript)"[^>]*>[^<]*</script>\s*')


def without_unused_scripts(resources: str) -> str:
    """Panel's ``bokeh_js`` (the page's script tags, Panel's own text) without
    ``UNUSED_SCRIPTS``."""

    def keep(tag: re.Match) -> str:
        text = tag.group(0)
        if "esms-options" in text or ("src=" in text and any(n in text for n in UNUSED_SCRIPTS)):
            return ""
        return text

    return _SCRIPT_TAG.sub(keep, str(resources))


_PAGES = jinja2.Environment(autoescape=True)
_PAGES.filters["without_unused_scripts"] = without_unused_scripts
#: Panel's page (``{% extends base %}``) with what a phone needs to lay it out at its own
#: width, and the script that keeps the TV pages and clock and shows tooltips on a tap
PAGE_TEMPLATE = _PAGES.from_string(
    "{% extends base %}"
    "{% block js_resources %}{{ bokeh_js | without_unused_scripts | safe }}{% endblock %}"
    "{% block postamble %}"
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    f'<script src="{SCREENS}" defer></script>'
    # a tenant's brand colours for the whole page (background, period buttons, the date
    # picker), not only the dashboard pane: validated #hex values (branding.check_colors)
    "{{ brand_css | safe }}"
    "{% endblock %}"
)
#: the page's title is the document's (the tenant's name, set per session), never Panel's
APP_TITLES = {"/d/{token}": ""}

#: every open dashboard's link check each second (and TV reload), one timer per process
TICKER = Ticker()
_session_end_hooks: set = set()


def make_app(
    runtime: Runtime,
    guard: SessionGuard,
    access_log: AccessLog | None = None,
):
    """The Panel app behind ``/d/{token}``: each session shows its live link's tenant only."""
    refresh_s = runtime.settings.dashboard_refresh_s

    def dashboard():
        document = pn.state.curdoc
        document.title = "Dashboard"
        document.template = PAGE_TEMPLATE
        # Panel's default favicon URL is relative ("./favicon.ico"): under /d/ it would hit
        # the gate as a bad token. Ours is served from /assets.
        document.template_variables["app_favicon"] = FAVICON
        document.template_variables["apple_icon"] = FAVICON
        token = pn.state.route_params.get("token", "")
        # The gate looked this request's link up as it let the request in (a live link,
        # no cache); only a request that did not pass it is looked up here.
        request = document.session_context.request
        link = getattr(request, "writevue_link", None)
        if link is None and token:
            link = guard.live_link(token)
        bound = link is not None and session_binding(document.session_context) == {
            "link": link.id,
            "key": link_key(token),
        }
        if not bound:  # revoked between the gate and this session, or not signed for it
            return pn.pane.HTML(GONE_HTML)
        token_hash = links.hash_token(token)

        def alive() -> bool:
            # Asked on every interaction before anything is rendered (the sweep asks
            # for all open sessions once a second): a revoked, rotated or expired link
            # shows nothing more.
            return guard.is_live(token_hash)

        on_interaction = None
        if access_log is not None:
            # The page request that opened this session: its client, anonymised once
            # (``LinkBinding`` keeps it on the request; the session token carries no headers).
            visitor = getattr(request, "writevue_visitor", None) or Visitor.from_request(
                getattr(request, "remote_ip", None), request.headers
            )

            def on_interaction() -> None:
                access_log.record("interaction", link.id, visitor)

        source = TenantData(runtime, link.tenant_id, alive)
        view = Dashboard(
            source,
            refresh_s=refresh_s,
            on_interaction=on_interaction,
            **query_state(pn.state.session_args),
        )
        document.title = source.tenant_name or document.title
        document.template_variables["brand_css"] = (
            brand_style(source.brand, tv=view.tv, scope=":root") if source.brand else ""
        )
        if source.brand is not None:  # white label: the brand's logo, not WriteVue's
            icon = favicon_url(source.brand)
            document.template_variables["app_favicon"] = icon
            document.template_variables["apple_icon"] = icon
        TICKER.add(document.session_context.id, document, view, refresh_s, link=token_hash)
        return view

    return dashboard


class ReconnectingPage(Handler):
    """Each session's page reconnects after its server restarted, with its own styles.

    Runs after the app (a server's handlers run in order), so after Panel has set the
    document's config (``reconnect_session`` off, as ``pn.config.reconnect`` is: that
    switch would also keep every closed page's session alive 15-32 s, see ``tuning``).

    - ``reconnect_session``: a page whose socket closed opens a new one with its signed
      session token, Bokeh's 5 tries over ~30 s; the server (this process or a restarted
      one) makes a new session from the token, the page pulls its document, and the
      figures and period buttons work again. ``assets/screens.js`` shows a banner
      meanwhile, and "Reload the page" if every try failed.
    - Panel points its models' stylesheets at this server's copies only when it renders
      the page (``server_html_page_for_session``). A session made by a websocket alone
      (the reconnect) would keep the CDN's URLs, which the page's CSP refuses: Panel's
      styles would be lost. A page's own session is left to the page (the same URLs).
    - Panel names its loading stylesheet without a version, so a browser would fetch it
      again on every view: named by Panel's release, like Panel's other stylesheets, it
      is kept (``headers.versioned``).
    """

    def modify_document(self, doc) -> None:
        doc.config.reconnect_session = True
        for root in doc.roots:
            for sheet in getattr(root, "stylesheets", ()):
                # One stylesheet model per URL and document: every model shares this one.
                if isinstance(sheet, ImportedStyleSheet) and sheet.url.endswith(_LOADING_CSS):
                    sheet.url += f"?v={JS_VERSION}"
        if _made_by_its_page(doc):
            return
        with set_curdoc(doc):
            dist_url = f"{state.rel_path}/{LOCAL_DIST}" if state.rel_path else LOCAL_DIST
        for root in doc.roots:
            patch_model_css(root, dist_url=dist_url)


_LOADING_CSS = "/css/loading.css"


def _made_by_its_page(doc) -> bool:
    """Was this session made for its page (``/d/<token>``), not by a websocket or script?"""
    request = getattr(doc.session_context, "request", None)
    found = GATED_PATH.match(getattr(request, "path", "") or "")
    return found is not None and found.group(2) in (None, "/")


def tornado_settings(
    frame_ancestors: str | None = None,
    extra_patterns: list | None = None,
    access_log: AccessLog | None = None,
) -> dict:
    """Extra ``pn.serve`` keyword arguments; Bokeh passes them to ``tornado.web.Application``."""
    return {
        "log_function": functools.partial(log_function, access_log=access_log),
        "transforms": [
            security_transform(security_headers(frame_ancestors)),
            NotFoundPage,
            StaticGzip,
        ],
        "default_handler_class": RejectHandler,
        "extra_patterns": [(r"/robots\.txt", RobotsHandler), *(extra_patterns or [])],
        "xsrf_cookie_kwargs": XSRF_COOKIE_KWARGS,
    }


def tornado_application(server) -> Application:
    """The server's Tornado Application (to add routes to, before it starts)."""
    # The one private attribute: Bokeh's Server keeps its Tornado Application in
    # ``_tornado`` with no public accessor. Checked, so an upgrade fails loudly.
    app = getattr(server, "_tornado", None)
    if not isinstance(app, Application):
        raise RuntimeError(
            "bokeh's Server no longer exposes _tornado; the gate cannot be installed"
        )
    return app


def _on_every_session_end(hook) -> None:
    """Call ``hook`` after every session ends; once, however often the server is built."""
    if hook not in _session_end_hooks:
        pn.state.on_session_destroyed(hook)  # outside a session: for every session
        _session_end_hooks.add(hook)


def build_server(
    runtime: Runtime,
    *,
    host: str = "127.0.0.1",
    port: int = 5006,
    limiters: Mapping[str, FailureLimiter] | None = None,
    frame_ancestors: str | None = None,
):
    """Create (not start) the dashboard server with the gate installed."""
    install_log_scrubber()
    pn.config.css_files = [THEME, CARDS_CSS]
    pn.extension(design="native", notifications=False)
    # Separate budgets: guessing invites (or unsubscribe tokens) cannot lock a client out
    # of its dashboard. Counted in the warehouse: every dashboard process spends one budget.
    limiters = {**shared_limiters(runtime), **(limiters or {})}
    for hook in (TICKER.session_destroyed, release_memory):
        _on_every_session_end(hook)
    resolve = LinkResolver(runtime)
    guard = SessionGuard(runtime)
    access_log = AccessLog(runtime.settings.log_dir)
    public = urlsplit(runtime.settings.dashboard_base_url).netloc
    origins = sorted({f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", public})
    pages = [
        (
            r"/connect/([A-Za-z0-9_-]{1,128})",
            ConnectHandler,
            {"runtime": runtime, "limiter": limiters["invites"]},
        ),
        (r"/oauth/callback", OAuthCallbackHandler, {"runtime": runtime}),
        (LOGO_ROUTE, BrandLogoHandler, {"runtime": runtime}),
        (
            UNSUBSCRIBE_ROUTE,
            UnsubscribeHandler,
            {"runtime": runtime, "limiter": limiters["unsubscribe"]},
        ),
    ]
    set_not_found_page(DefaultBrandPages(runtime) if runtime.settings.default_brand else None)
    server = pn.serve(
        {"/d/{token}": make_app(runtime, guard, access_log)},
        title=APP_TITLES,
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
        **WEBSOCKET_COMPRESSION,
        location=False,  # the view reads its query once; no URL-syncing model per page
        # Sessions: signed, ids only ever the server's, tokens carrying no request header
        # or cookie (``sessions`` binds each to its link).
        secret_key=guard.secret,
        sign_sessions=True,
        generate_session_ids=True,
        include_headers=[],
        include_cookies=[],
        **tornado_settings(
            frame_ancestors or runtime.settings.dashboard_embed_origins,
            extra_patterns=pages,
            access_log=access_log,
        ),
    )
    app = tornado_application(server)
    install_gate(
        app,
        resolve,
        limiters["links"],
        prefix=server.prefix,
        behind_gate=[
            session_choice_rule(server.prefix),
            csv_export_rule(runtime, fact_cache(), server.prefix),
        ],
    )
    install_request_limits(server, app)  # ahead of every route, the gate's too
    # ahead of that: the client's address, from nginx's headers only when nginx is trusted
    install_client_address(app, runtime.settings.trusted_proxies)
    install_dashboard_socket(app, LinkBoundSocket)
    remove_module_import_route(app)
    for context in app.applications.values():
        context.application.add(LinkBinding(server.prefix))
        context.application.add(ReconnectingPage())
    guard.install(app)
    TICKER.sweep = guard.sweep
    TICKER.start()
    return server


def serve(host: str = "127.0.0.1", port: int = 5006) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runtime = Runtime.from_env()
    server = build_server(runtime, host=host, port=port)
    announce("dashboards on http://%s:%d", host, port)
    freeze_startup_objects()
    server.start()
    server.io_loop.start()
