"""A Bokeh session is bound to the live link that opened it, and ends when that link does.

- Signed: Bokeh signs every session id and session token with the session secret
  (``writevue_pipelines.session_secret``), and no client may bring its own: a request
  naming a session (``bokeh-session-id``, ``bokeh-token``, ``Bokeh-Session-Id``) gets
  the 404 page. The token embedded in the page carries no request header or cookie.
- Bound: the signed token carries the id of the link that opened the session and a
  digest of that link's token (never the token itself, nor its stored hash). A
  websocket is accepted only when its path's live link is that same link and token,
  checked from the signed token alone, before any document is sent: any process that
  shares the secret can check it, whichever one served the page. A websocket that
  reaches another process than its page did gets its session made there from the
  token (Bokeh's ``create_session_if_needed``: the page's query and this binding come
  with it), so a load balancer need not keep a page and its websocket together.
- Ended: every second one query asks which of this process's open sessions' links are
  still live; a session whose link was revoked, rotated or expired shows "This link no
  longer works", and each interaction asks again for its own link before anything is
  rendered. When the secret file changes, new sessions are signed with the new secret
  and every open page is asked to reload (a secret from the environment is fixed for
  the process's life).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

from bokeh.application.handlers.handler import Handler
from bokeh.util.token import check_token_signature, get_token_payload
from tornado import routing
from tornado.httputil import HTTPServerRequest
from tornado.web import Application

from writevue_pipelines import links
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.vault import VaultError

from .access_log import Visitor
from .gate import GATED_PATH, RejectHandler, reject
from .render import GONE_HTML, RELOAD_HTML
from .tuning import DashboardSocket

#: the token payload entry that binds a session to its link
BINDING = "writevue_link"
#: what would let a client name (choose, reuse or borrow) a session
_SESSION_ARGUMENTS = ("bokeh-session-id", "bokeh-token")
_SESSION_HEADER = "Bokeh-Session-Id"
_log = logging.getLogger("writevue.sessions")


def link_key(token: str) -> str:
    """What a session keeps of its link's token: a digest that opens nothing.

    A rotated link keeps its id but not its token, so this is what tells its old
    sessions from its new ones.
    """
    digest = hashlib.sha256(b"writevue session binding\0" + links.hash_token(token).encode())
    return digest.hexdigest()[:32]


def _path_token(path: str, prefix: str = "") -> str | None:
    found = GATED_PATH.match(path[len(prefix) :] if prefix and path.startswith(prefix) else path)
    return found.group(1) if found else None


def binding_of(request: HTTPServerRequest, prefix: str = "") -> dict | None:
    """The link a request under ``/d/<token>`` came through, as a session records it."""
    link_id = getattr(request, "writevue_link_id", None)  # set by the gate for a live link
    token = _path_token(request.path, prefix)
    if link_id is None or not token:
        return None
    return {"link": link_id, "key": link_key(token)}


class LinkBinding(Handler):
    """Adds the binding to every session token Bokeh makes (page, autoload, websocket).

    Bokeh merges each handler's ``process_request`` into the token's payload; this one
    adds the link and leaves the document alone. The browser details the access log
    counts (anonymised) are kept on the request, not put into the token.
    """

    def __init__(self, prefix: str = ""):
        super().__init__()
        self._prefix = prefix

    def modify_document(self, doc) -> None:
        pass

    def process_request(self, request: HTTPServerRequest) -> dict:
        request.writevue_visitor = Visitor.from_request(request.remote_ip, request.headers)
        return {BINDING: binding_of(request, self._prefix)}


def session_binding(session_context) -> dict | None:
    """The link a session was signed for (inside the app, from its own token)."""
    try:
        return session_context.token_payload.get(BINDING)
    except (AssertionError, ValueError):
        return None


def _bound(token: str, secret: bytes | None, binding: dict | None) -> bool:
    """Is ``token`` signed with ``secret`` and bound to ``binding``? Garbage is not."""
    if binding is None:
        return False
    try:
        return check_token_signature(token, secret_key=secret, signed=True) and (
            get_token_payload(token).get(BINDING) == binding
        )
    except Exception:  # a token that is not even Bokeh's shape
        return False


class SessionChoiceMatcher(routing.Matcher):
    """Requests under /d/ that name a session of their own: refused with the 404 page.

    Bokeh reads ``bokeh-session-id`` and ``bokeh-token`` from the query or a form body,
    and routing happens before a body is read: so a request under /d/ with any body is
    refused too (nothing there takes one).
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def match(self, request: HTTPServerRequest) -> dict | None:
        if _path_token(request.path, self.prefix) is None:
            return None
        headers, arguments = request.headers, request.query_arguments
        if (
            _SESSION_HEADER in headers
            or any(name in arguments for name in _SESSION_ARGUMENTS)
            or headers.get("Content-Length", "0") != "0"
            or "Transfer-Encoding" in headers
        ):
            return {"path_args": [], "path_kwargs": {"status": "404"}}
        return None


def session_choice_rule(prefix: str = "") -> routing.Rule:
    """For ``install_gate(behind_gate=…)``: no client chooses or borrows a session."""
    return routing.Rule(SessionChoiceMatcher(prefix), RejectHandler)


class LinkBoundSocket(DashboardSocket):
    """The dashboards' websocket: only for a session bound to this path's live link."""

    async def prepare(self):
        await super().prepare()
        if self._finished:
            return
        # The handshake's subprotocols are "bokeh, <session token>" (as Bokeh's client sends).
        offered = self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        token = offered[1].strip() if len(offered) == 2 and offered[0].strip() == "bokeh" else ""
        binding = binding_of(self.request, self.application.prefix)
        if not _bound(token, self.application.secret_key, binding):
            reject(self, 404)


class SessionGuard:
    """This process's side of the binding: the current secret, and which links still live."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.secret = runtime.session_secret
        self._app: Application | None = None

    def install(self, app: Application) -> None:
        """Sign with the current secret from now on (before the server starts)."""
        if getattr(app, "_secret_key", None) is None or not app.sign_sessions:
            # Bokeh keeps the key in ``_secret_key`` (no setter); checked, so an upgrade
            # that moves it fails here rather than signing with a stale secret.
            raise RuntimeError("bokeh's server no longer exposes its session secret")
        self._app = app

    def live_link(self, token: str) -> links.LinkInfo | None:
        """The live link a session is opened with, looked up now (no cache): the first
        page a session renders is as fresh as every later one."""
        with self.runtime.db.session() as session:
            return links.resolve_token(session, token)

    def is_live(self, token_hash: str) -> bool:
        """Is the link a session was opened with still live? One indexed lookup, no cache."""
        with self.runtime.db.session() as session:
            return bool(links.live_token_hashes(session, [token_hash]))

    def _secret_rotated(self) -> bool:
        """Has the secret file changed? Then sign with the new secret from now on."""
        try:
            secret = self.runtime.session_secret
        except (OSError, VaultError) as exc:  # unreadable now: keep signing with the last one
            _log.error("the session secret could not be read again: %s", exc)
            return False
        if secret == self.secret:
            return False
        self.secret = secret
        if self._app is not None:
            self._app._secret_key = secret.encode()
        _log.info("session secret rotated; open sessions are asked to reload")
        return True

    def sweep(self, token_hashes: set[str]) -> Mapping[str, str]:
        """Once a second: the open sessions (by link token hash) that must end, with the page
        each now shows. One query for all of them; a new secret ends them all."""
        if self._secret_rotated():
            return dict.fromkeys(token_hashes, RELOAD_HTML)
        if not token_hashes:
            return {}
        with self.runtime.db.session() as session:
            live = links.live_token_hashes(session, token_hashes)
        return dict.fromkeys(token_hashes - live, self.gone_page())

    def gone_page(self) -> str:
        """ "This link no longer works": white label, or in the server's default brand."""
        if not self.runtime.settings.default_brand:
            return GONE_HTML
        from .branding import default_brand_view, gone_html

        return gone_html(default_brand_view(self.runtime))
