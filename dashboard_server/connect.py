"""The connect page: a client connects a source at ``/connect/<token>``, OAuth returns to it.

It sits behind the same header transform and access log as the dashboards: the
invite token in ``/connect/<token>`` is replaced by the invite's id in the log, and
a wrong or spent token gets the gate's 404 page and costs the address a failure in
a limiter of the invites' own (guessing invites never locks anyone out of a dashboard).

A form is accepted only from this server's own pages: besides Tornado's XSRF pair,
the ``Origin`` (or, without one, the ``Referer``) must be the server's own origin
(``WRITEVUE_DASHBOARD_URL``). The form page sets its referrer policy to
``same-origin`` so that a browser sends its real origin on the POST (under the
site-wide ``no-referrer`` it would send ``Origin: null``) while no other site ever
sees the invite's URL. An API key is checked with the source before it is saved
(on a worker thread: the server's event loop keeps serving meanwhile).
"""

from __future__ import annotations

import html
import logging
from urllib.parse import urlsplit

from tornado.ioloop import IOLoop

from writevue_pipelines import invites, registry
from writevue_pipelines.errors import InvalidInput, WriteVueError
from writevue_pipelines.oauth.endpoints import NoOAuthClient
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import get_source

from .branding import (
    BrandView,
    brand_name,
    brand_style,
    brand_text,
    default_brand_view,
    favicon_url,
    load_brand_view,
    logo_html,
)
from .gate import reject
from .headers import SessionCookies
from .limiter import FailureLimiter
from .static import asset_url


def page(title: str, body: str, *, head: str = "", brand: BrandView | None = None) -> str:
    """A plain page in the client's brand (its logo, name and colours), else WriteVue's
    look: the connect page and what it answers."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex, nofollow">{head}'
        f"<title>{html.escape(title)} · {html.escape(brand_name(brand))}</title>"
        f'<link rel="icon" href="{html.escape(favicon_url(brand))}">'
        f'<link rel="stylesheet" href="{asset_url("theme.css")}">'
        f"{brand_style(brand, scope='.wv-page')}</head>"
        '<body><main class="wv-page"><header class="wv-header">'
        f"{logo_html(brand)}<h1>{html.escape(title)}</h1></header>{body}</main></body></html>"
    )


def _brand_of(runtime: Runtime, tenant_id: str | None) -> BrandView | None:
    """The tenant's brand (else the server's default); None if it cannot be read: a page
    in WriteVue's look is better than no page."""
    try:
        if tenant_id is None:
            return default_brand_view(runtime)
        with runtime.db.session() as session:
            return load_brand_view(session, tenant_id, runtime.settings.default_brand)
    except Exception:
        logging.getLogger("writevue.connect").exception("the brand could not be read")
        return None


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased; None otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme.lower()]
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}{suffix}"


class ConnectHandler(SessionCookies):
    """``/connect/<token>``: the client picks a source and authorises it or pastes an API key."""

    def initialize(self, runtime: Runtime, limiter: FailureLimiter) -> None:
        self.runtime, self.limiter = runtime, limiter
        self.brand: BrandView | None = None

    def _invite(self, token: str) -> invites.InviteInfo | None:
        """The live invite, or None after the gate's 404/429 (the same pages; a limiter of
        the invites' own). Resolved first: a live invite always opens, only failures count."""
        with self.runtime.db.session() as session:
            invite = invites.resolve_invite(session, token)
            if invite is not None:
                self.brand = load_brand_view(
                    session, invite.tenant_id, self.runtime.settings.default_brand
                )
        if invite is None:
            reject(self, 429 if self.limiter.fail(self.request.remote_ip) else 404)
            return None
        self.request.writevue_invite_id = invite.id  # for the access log
        return invite

    def _same_origin(self) -> bool:
        """The POST came from this server's own page: its Origin, or else its Referer."""
        own = origin_of(self.runtime.settings.dashboard_base_url)
        origin = self.request.headers.get("Origin")
        if origin is None:
            referer = self.request.headers.get("Referer")
            origin = None if referer is None else origin_of(referer)
        else:
            origin = origin_of(origin)  # "null" (an opaque origin) is never ours
        return own is not None and origin == own

    def get(self, token: str) -> None:
        invite = self._invite(token)
        if invite is None:
            return
        self.finish(self._form_page(invite))

    def _form_page(self, invite: invites.InviteInfo, problem: str | None = None) -> str:
        items = []
        for name in invite.sources:
            source = get_source(name)
            forms = []
            if "oauth2" in source.auth_kinds:
                forms.append(
                    f'<form method="post">{self.xsrf_form_html()}'
                    '<input type="hidden" name="action" value="oauth">'
                    f'<input type="hidden" name="source" value="{html.escape(name)}">'
                    f'<button type="submit">Sign in with {html.escape(source.title)}</button>'
                    "</form>"
                )
            if "api_key" in source.auth_kinds:
                forms.append(
                    f'<form method="post" class="wv-key-form">{self.xsrf_form_html()}'
                    '<input type="hidden" name="action" value="api_key">'
                    f'<input type="hidden" name="source" value="{html.escape(name)}">'
                    f'<label>API key <input type="password" name="api_key" required '
                    'autocomplete="off" spellcheck="false"></label>'
                    '<button type="submit">Connect with a key</button></form>'
                )
            items.append(
                f'<li class="wv-source" data-source="{html.escape(name)}">'
                f"<h2>{html.escape(source.title)}</h2>"
                f"<p>{html.escape(source.description)}</p>{''.join(forms)}</li>"
            )
        alert = (
            ""
            if problem is None
            else f'<p class="wv-error" role="alert">{html.escape(problem)}</p>'
        )
        body = (
            f"{alert}<p>Choose a source to connect. {html.escape(brand_name(self.brand))} "
            "only ever reads from it, and keeps "
            "only daily totals. This page works once, until "
            f"{invite.expires_at:%d %b %Y, %H:%M} UTC.</p>"
            f'<ul class="wv-sources">{"".join(items)}</ul>'
        )
        # same-origin: the form's POST carries this origin (see the module docstring).
        return page(
            "Connect your data",
            body,
            head='<meta name="referrer" content="same-origin">',
            brand=self.brand,
        )

    async def post(self, token: str) -> None:
        self.check_xsrf_cookie()
        if not self._same_origin():
            reject(self, 403)
            return
        invite = self._invite(token)
        if invite is None:
            return
        action = self.get_body_argument("action", "")
        source = self.get_body_argument("source", "")
        run = IOLoop.current().run_in_executor
        try:
            if action == "oauth":
                url = await run(
                    None,
                    invites.start_oauth,
                    self.runtime,
                    token,
                    source,
                    f"{self.runtime.settings.dashboard_base_url}/oauth/callback",
                )
                # A page, not a 303: the CSP's form-action 'self' would block a form
                # submission that redirects to the provider; a navigation is allowed.
                target = html.escape(url)
                self.finish(
                    page(
                        "Continue to sign in",
                        f'<meta http-equiv="refresh" content="0;url={target}">'
                        f'<p><a href="{target}">Continue to the provider to allow read-only '
                        "access</a>.</p>",
                        brand=self.brand,
                    )
                )
                return
            if action == "api_key":
                key = self.get_body_argument("api_key", "")
                await run(None, invites.connect_with_api_key, self.runtime, token, source, key)
                self.finish(connected_page(self.brand))
                return
            raise InvalidInput("Choose a source and how to connect it.")
        except WriteVueError as exc:
            self.set_status(400)
            with self.runtime.db.session() as session:
                live = invites.resolve_invite(session, token)
            text = client_message(exc)
            if live is None:  # spent meanwhile: nothing left to retry on this page
                message = brand_text(text, self.brand)
                body = f"<p>{html.escape(message)}</p>"
                self.finish(page("Not connected", body, brand=self.brand))
            else:  # the form again, saying what was wrong; the invite still works
                self.finish(self._form_page(live, text))


#: what a client reads when WriteVue's OAuth client at the provider is not configured
NOT_SET_UP = (
    "Signing in with this provider is not set up yet, so nothing was connected. "
    "Tell whoever sent you this link; they can fix it and send it again."
)


def client_message(exc: WriteVueError) -> str:
    """The failure as the client should read it. The server's own configuration (which
    variables to set) is the operator's business: logged for them, not shown."""
    if isinstance(exc, NoOAuthClient):
        logging.getLogger("writevue.connect").warning("%s", exc)
        return NOT_SET_UP
    return str(exc)


def connected_page(brand: BrandView | None = None) -> str:
    return page(
        "Connected",
        f"<p>Thank you: the source is connected. {html.escape(brand_name(brand))} fetches its "
        "figures shortly; your dashboard shows them after the first refresh. You can close "
        "this page.</p>",
        brand=brand,
    )


class OAuthCallbackHandler(SessionCookies):
    """``/oauth/callback``: where the provider sends the client back with a code."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def get(self) -> None:
        if self.get_query_argument("error", ""):
            self.set_status(400)
            self.finish(
                page(
                    "Not connected",
                    "<p>The provider did not grant access, so nothing was connected. "
                    "Open your invite link again to retry.</p>",
                    brand=_brand_of(self.runtime, None),
                )
            )
            return
        state = self.get_query_argument("state", "")
        code = self.get_query_argument("code", "")
        try:
            # A worker thread: the code exchange waits on the provider.
            connection_id = await IOLoop.current().run_in_executor(
                None, invites.finish_oauth, self.runtime, state, code
            )
        except WriteVueError as exc:
            self.set_status(400)
            brand = _brand_of(self.runtime, None)
            message = brand_text(client_message(exc), brand)
            self.finish(page("Not connected", f"<p>{html.escape(message)}</p>", brand=brand))
            return
        self.finish(connected_page(_brand_of(self.runtime, self._tenant_of(connection_id))))

    def _tenant_of(self, connection_id) -> str | None:
        try:
            with self.runtime.db.session() as session:
                return registry.get_connection(session, connection_id).tenant_id
        except Exception:
            return None
