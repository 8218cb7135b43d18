"""The token gate: no app code runs for a token that opens no live link.

A Tornado routing rule sits in front of every Panel/Bokeh route. For any path
under ``/d/<token>`` (the page, its websocket, autoload.js, metadata, per-app
static files) it looks the token's hash up; unknown, revoked, expired and
malformed tokens all get the same 404 page from the same single query (the same work
for each), and an address that keeps guessing gets 429 for its failures (``limiter``:
one budget for every dashboard process, counted in the warehouse); a live link is never
refused. Only a live link falls through to Panel, with its
link marked on the request for the access log and the CSV export.

The rejection is the gate's: every page that turns a request away (the connect
page's too) answers with ``reject``, and any other 404 becomes the same page.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Sequence

from tornado import routing
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import Application, OutputTransform, RequestHandler

from writevue_pipelines import links
from writevue_pipelines.links import LinkInfo
from writevue_pipelines.runtime import Runtime

from .limiter import FailureLimiter
from .static import ASSETS_DIR

GATE_PREFIX = "/d/"
#: a path under the gate: the token, then what follows it (``/ws``, ``/autoload.js``, …)
GATED_PATH = re.compile(r"^/d/([^/]*)(/.*)?$")
_LAST_USED_EVERY = dt.timedelta(minutes=5)

NOT_FOUND_HTML = (ASSETS_DIR / "404.html").read_bytes()
TOO_MANY_HTML = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8">'
    b"<title>Too many requests</title></head><body><h1>Too many requests</h1>"
    b"<p>Please wait a minute and try again.</p></body></html>"
)


#: the one 404 page: white label (it names nobody), or in the server's default brand
#: (``branding.DefaultBrandPages``, installed by the server when one is set)
_not_found_page: list[Callable[[], bytes]] = []


def set_not_found_page(source: Callable[[], bytes] | None) -> None:
    """Make ``source()`` the 404 page of this process (None: the neutral one)."""
    _not_found_page[:] = [source] if source is not None else []


def not_found_html() -> bytes:
    return _not_found_page[0]() if _not_found_page else NOT_FOUND_HTML


def reject(handler: RequestHandler, status: int) -> None:
    """Answer with the one 404 page, or with 429 and when to come back."""
    handler.set_status(status)
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    if status == 429:
        handler.set_header("Retry-After", "60")
        handler.finish(TOO_MANY_HTML)
    else:
        handler.finish(not_found_html())


class RejectHandler(RequestHandler):
    """Our 404 (or 429) for every method; no Bokeh code involved."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def prepare(self) -> None:
        reject(self, int(self.path_kwargs.get("status", "404")))


class NotFoundPage(OutputTransform):
    """Any other 404 (Bokeh's, Tornado's) goes out as the one 404 page too."""

    def transform_first_chunk(
        self, status_code, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ):
        page = not_found_html()
        if status_code == 404 and finishing and chunk != page:
            chunk = page
            headers["Content-Type"] = "text/html; charset=utf-8"
            headers["Content-Length"] = str(len(chunk))
        return status_code, headers, chunk


class LinkResolver:
    """Token to live link, by hash lookup; records when a link was last used."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def __call__(self, token: str) -> LinkInfo | None:
        # No shortcut for a token of the wrong shape: every token is hashed and looked up
        # (``links.resolve_token``), so no kind of failure answers sooner than another.
        with self.runtime.db.session() as session:
            link = links.resolve_token(session, token)
            if link is not None:
                now = dt.datetime.now(dt.UTC)
                if link.last_used_at is None or now - link.last_used_at > _LAST_USED_EVERY:
                    links.touch_link(session, link.id, now=now)
        return link


class TokenGateMatcher(routing.Matcher):
    """Matches the requests under /d/ that must not reach Panel; lets live links through.

    The token is resolved first, the same way whatever it is; only then does the limiter
    see a failure. So a live link always opens, from any address (an office behind one
    NAT shares it with whoever is guessing there), while an address over its budget gets
    429 for every token that does not resolve. A blocked address's failures cost the same
    lookup as anyone's: the 429 says only "over budget", never anything about the token.
    """

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
        found = GATED_PATH.match(path)
        if not found:
            return None
        link = None
        try:
            link = self.resolve(found.group(1))
        except Exception:
            logging.getLogger("writevue.gate").exception("link lookup failed")
        if link is None:
            status = "429" if self.limiter.fail(request.remote_ip) else "404"
            return {"path_args": [], "path_kwargs": {"status": status}}
        request.writevue_link_id = link.id  # for the access log
        request.writevue_link = link  # for the CSV export
        return None


def install_gate(
    app: Application,
    resolve: Callable[[str], LinkInfo | None],
    limiter: FailureLimiter,
    *,
    prefix: str = "",
    behind_gate: Sequence[routing.Rule] = (),
) -> None:
    """Put the token gate in front of all of ``app``'s routes (before the server starts).

    ``behind_gate`` are rules tried next, only for what the gate let through.
    """
    # add_handlers inserts its host rule ahead of the router holding every Bokeh route;
    # when the matchers answer None, routing carries on to those routes.
    rules = [routing.Rule(TokenGateMatcher(resolve, limiter, prefix), RejectHandler)]
    app.add_handlers(r".*", [*rules, *behind_gate])


def current_link(resolve: Callable[[str], LinkInfo | None]) -> LinkInfo | None:
    """Inside a Panel session: the live link it was opened with, checked again."""
    import panel as pn

    token = pn.state.route_params.get("token", "")
    return resolve(token) if token else None
