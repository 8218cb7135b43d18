"""The dashboard server's gate: no app code runs for a token that opens no live link.

A Tornado routing rule sits in front of every Panel/Bokeh route. For any path
under ``/d/<token>`` (the page, its websocket, autoload.js, metadata, per-app
static files) it looks the token's hash up; unknown, revoked and expired tokens
all get the same 404 page from the same single query, and an address that keeps
guessing gets 429. Only a live link falls through to Panel.

Every response also gets the security headers, and the access log names the
link's opaque id instead of the token and keeps only a truncated IP. Page loads
and CSV downloads of a live link also go to the anonymised JSON-lines access log
(``access_log``) that the trends pipeline rolls up.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from tornado import routing
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import Application, GZipContentEncoding, OutputTransform, RequestHandler

from writevue_pipelines import links
from writevue_pipelines.links import LinkInfo
from writevue_pipelines.runtime import Runtime

from .access_log import AccessLog, Visitor
from .redaction import limiter_key, truncate_ip

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
GATE_PREFIX = "/d/"
_GATED_PATH = re.compile(r"^/d/([^/]*)(/.*)?$")
_CONNECT_PATH = re.compile(r"^/connect/([^/]*)(/.*)?$")
_COOKIE_FLAGS = frozenset({"expires", "max-age", "httponly", "samesite", "secure"})
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_LAST_USED_EVERY = dt.timedelta(minutes=5)

NOT_FOUND_HTML = (ASSETS_DIR / "404.html").read_bytes()
TOO_MANY_HTML = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8">'
    b"<title>Too many requests</title></head><body><h1>Too many requests</h1>"
    b"<p>Please wait a minute and try again.</p></body></html>"
)

# Panel's page starts from inline scripts ('unsafe-inline') and es-module-shims makes
# blob: scripts; nothing else, and no third-party origin, is allowed. 'unsafe-eval' is
# not needed by the widgets used (it would be by CustomJS or ReactiveHTML).
CSP_DIRECTIVES = {
    "default-src": "'self'",
    "script-src": "'self' 'unsafe-inline' blob:",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data: blob:",
    "font-src": "'self' data:",
    "connect-src": "'self'",
    "worker-src": "'self' blob:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def security_headers(frame_ancestors: str | None = None) -> dict[str, str]:
    """Headers for every response; ``frame_ancestors`` allows a configured embed."""
    directives = dict(CSP_DIRECTIVES)
    if frame_ancestors:
        directives["frame-ancestors"] = frame_ancestors
    headers = {
        "Referrer-Policy": "no-referrer",
        "X-Robots-Tag": "noindex, nofollow",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in directives.items()),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if not frame_ancestors:
        headers["X-Frame-Options"] = "DENY"
    return headers


class FailureLimiter:
    """Failed lookups per address in a sliding window; in memory, per process."""

    def __init__(self, max_failures: int = 20, window_s: float = 60.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._hits: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def _window(self, key: str, now: float) -> collections.deque:
        hits = self._hits.setdefault(key, collections.deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def blocked(self, key: str) -> bool:
        with self._lock:
            hits = self._window(key, time.monotonic())
            if not hits:
                self._hits.pop(key, None)
            return len(hits) >= self.max_failures

    def fail(self, key: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._window(key, now).append(now)


class LinkResolver:
    """Token to live link, by hash lookup; records when a link was last used."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def __call__(self, token: str) -> LinkInfo | None:
        if not _TOKEN_SHAPE.match(token):
            return None
        with self.runtime.db.session() as session:
            link = links.resolve_token(session, token)
            if link is not None:
                now = dt.datetime.now(dt.UTC)
                if link.last_used_at is None or now - link.last_used_at > _LAST_USED_EVERY:
                    links.touch_link(session, link.id, now=now)
            return link


class TokenGateMatcher(routing.Matcher):
    """Matches the requests under /d/ that must not reach Panel; lets live links through."""

    def __init__(
        self, resolve: Callable[[str], LinkInfo | None], limiter: FailureLimiter, prefix: str = ""
    ):
        self.resolve, self.limiter, self.prefix = resolve, limiter, prefix

    def match(self, request: HTTPServerRequest) -> dict | None:
        path = request.path
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return None
            path = path[len(self.prefix) :]
        found = _GATED_PATH.match(path)
        if not found:
            return None
        client = limiter_key(request.remote_ip or "")
        if self.limiter.blocked(client):
            return {"path_args": [], "path_kwargs": {"status": "429"}}
        link = None
        try:
            link = self.resolve(found.group(1))
        except Exception:
            logging.getLogger("writevue.gate").exception("link lookup failed")
        if link is None:
            self.limiter.fail(client)
            return {"path_args": [], "path_kwargs": {"status": "404"}}
        request.writevue_link_id = link.id  # for the access log
        request.writevue_link = link  # for the CSV export
        return None


class CsvExportMatcher(routing.Matcher):
    """``/d/<token>?format=csv`` of a live link (the gate has run) goes to the CSV export.

    The dashboard links to its export relative to itself (``?format=csv&...``), so the
    view needs no token to offer a download.
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def match(self, request: HTTPServerRequest) -> dict | None:
        if getattr(request, "writevue_link", None) is None:
            return None
        found = _GATED_PATH.match(request.path[len(self.prefix) :])
        if found and not found.group(2) and request.query_arguments.get("format") == [b"csv"]:
            return {}
        return None


class RejectHandler(RequestHandler):
    """Our 404 (or 429) for every method; no Bokeh code involved."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def prepare(self) -> None:
        status = int(self.path_kwargs.get("status", "404"))
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        if status == 429:
            self.set_header("Retry-After", "60")
            self.finish(TOO_MANY_HTML)
        else:
            self.finish(NOT_FOUND_HTML)


class RobotsHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish((ASSETS_DIR / "robots.txt").read_bytes())


def session_cookie(set_cookie: str, *, secure: bool) -> str:
    """A Set-Cookie value made a session cookie (no Expires/Max-Age), HttpOnly, SameSite=Lax."""
    parts = [part.strip() for part in set_cookie.split(";") if part.strip()]
    kept = [parts[0]] + [
        part for part in parts[1:] if part.split("=", 1)[0].strip().lower() not in _COOKIE_FLAGS
    ]
    return "; ".join(kept + ["HttpOnly", "SameSite=Lax"] + (["Secure"] if secure else []))


def _security_transform(headers_to_set: dict[str, str]) -> type[OutputTransform]:
    class SecurityHeaders(OutputTransform):
        """Runs on every response's first chunk, errors and the websocket upgrade included."""

        def __init__(self, request: HTTPServerRequest) -> None:
            super().__init__(request)
            self.secure = request.protocol == "https"

        def transform_first_chunk(
            self, status_code, headers: HTTPHeaders, chunk: bytes, finishing: bool
        ):
            for name, value in headers_to_set.items():
                headers[name] = value
            headers.pop("Server", None)
            headers.pop("Etag", None)
            cookies = headers.get_list("Set-Cookie")
            if cookies:
                del headers["Set-Cookie"]
                for cookie in cookies:
                    headers.add("Set-Cookie", session_cookie(cookie, secure=self.secure))
            if status_code == 404 and finishing and chunk != NOT_FOUND_HTML:
                chunk = NOT_FOUND_HTML
                headers["Content-Type"] = "text/html; charset=utf-8"
                headers["Content-Length"] = str(len(chunk))
            return status_code, headers, chunk

    return SecurityHeaders


class StaticGzip(GZipContentEncoding):
    """Compress static files only (pages carry a session token: BREACH caution), each once.

    Every response is ``no-store``, so a browser fetches Bokeh's and Panel's bundles
    (about 3 MB) on every page load, and compressing them anew each time cost the
    server more than the page itself. A static file's compressed bytes are kept,
    keyed by its URL (Bokeh's carry a version hash), Last-Modified and length.
    """

    MAX_CACHED_BYTES = 32 * 1024 * 1024
    _compressed: ClassVar[dict[tuple, bytes]] = {}
    _cached_bytes: ClassVar[int] = 0

    def __init__(self, request: HTTPServerRequest) -> None:
        super().__init__(request)
        self._static = request.path.startswith(("/static/", "/assets/"))
        if not self._static:
            self._gzipping = False
        self._cacheable = self._static and request.method == "GET"
        self._uri = request.uri
        self._replay = False
        self._parts: list[bytes] | None = None
        self._key: tuple | None = None

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        key = None
        if self._cacheable and self._gzipping and status_code == 200:
            key = (self._uri, headers.get("Last-Modified"), headers.get("Content-Length"))
            compressed = self._compressed.get(key)
            if compressed is not None:
                # The handler still writes the file; its chunks are dropped below.
                self._replay = True
                headers["Vary"] = "Accept-Encoding"
                headers["Content-Encoding"] = "gzip"
                headers["Content-Length"] = str(len(compressed))
                return status_code, headers, compressed
        if key is not None and None not in key:
            self._key, self._parts = key, []
        status_code, headers, chunk = super().transform_first_chunk(
            status_code, headers, chunk, finishing
        )
        if not self._gzipping:
            self._parts = None
        return status_code, headers, chunk

    def transform_chunk(self, chunk: bytes, finishing: bool) -> bytes:
        if self._replay:
            return b""
        chunk = super().transform_chunk(chunk, finishing)
        if self._parts is not None:
            self._parts.append(chunk)
            if finishing:
                self._keep(b"".join(self._parts))
                self._parts = None
        return chunk

    def _keep(self, compressed: bytes) -> None:
        cls = type(self)
        if cls._cached_bytes + len(compressed) <= self.MAX_CACHED_BYTES:
            cls._compressed[self._key] = compressed
            cls._cached_bytes += len(compressed)


_access_log = logging.getLogger("tornado.access")


def redacted_path(request: HTTPServerRequest) -> str:
    found = _GATED_PATH.match(request.path)
    if not found:
        invite = _CONNECT_PATH.match(request.path)
        if invite:
            invite_id = getattr(request, "writevue_invite_id", None)
            tail = invite.group(2) or ""
            return "/connect/" + (f"<invite:{invite_id}>" if invite_id else "<invite>") + tail
        return request.path
    link_id = getattr(request, "writevue_link_id", None)
    return GATE_PREFIX + (f"<link:{link_id}>" if link_id else "<invalid>") + (found.group(2) or "")


def page_event(request: HTTPServerRequest, status: int) -> str | None:
    """``view`` for a dashboard page load, ``export`` for its CSV download, else None."""
    if status != 200 or request.method != "GET":
        return None
    link_id = getattr(request, "writevue_link_id", None)
    found = _GATED_PATH.match(request.path)
    if link_id is None or found is None or found.group(2):
        return None
    return "export" if request.query_arguments.get("format") == [b"csv"] else "view"


def log_function(handler: RequestHandler, access_log: AccessLog | None = None) -> None:
    """The access log line: no query string, the token replaced, the IP truncated.

    With an ``access_log``, a page load or CSV download also becomes an access event.
    """
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    _access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redacted_path(request),
        truncate_ip(request.remote_ip or ""),
        1000.0 * request.request_time(),
    )
    if access_log is not None and (event := page_event(request, status)):
        visitor = Visitor.from_request(request.remote_ip, request.headers)
        access_log.record(event, request.writevue_link_id, visitor)


def tornado_settings(
    frame_ancestors: str | None = None,
    extra_patterns: list | None = None,
    access_log: AccessLog | None = None,
) -> dict:
    """Extra ``pn.serve`` keyword arguments; Bokeh passes them to ``tornado.web.Application``."""
    return {
        "log_function": functools.partial(log_function, access_log=access_log),
        "transforms": [_security_transform(security_headers(frame_ancestors)), StaticGzip],
        "default_handler_class": RejectHandler,
        "extra_patterns": [(r"/robots\.txt", RobotsHandler), *(extra_patterns or [])],
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Lax"},
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


def install_gate(
    server,
    resolve: Callable[[str], LinkInfo | None],
    limiter: FailureLimiter,
    csv_handler: tuple[type[RequestHandler], dict] | None = None,
) -> None:
    """Put the token gate in front of all Panel/Bokeh routes (before the server starts)."""
    # add_handlers inserts its host rule ahead of the router holding every Bokeh route;
    # when the matchers answer None, routing carries on to those routes.
    rules = [routing.Rule(TokenGateMatcher(resolve, limiter, server.prefix), RejectHandler)]
    if csv_handler is not None:
        handler, kwargs = csv_handler
        rules.append(routing.Rule(CsvExportMatcher(server.prefix), handler, kwargs))
    tornado_application(server).add_handlers(r".*", rules)


def current_link(resolve: Callable[[str], LinkInfo | None]) -> LinkInfo | None:
    """Inside a Panel session: the live link it was opened with, checked again."""
    import panel as pn

    token = pn.state.route_params.get("token", "")
    return resolve(token) if token else None
