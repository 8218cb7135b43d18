"""The connect page: a client connects a source at ``/connect/<token>``, OAuth returns to it.

It sits behind the same header transform and access log as the dashboards: the
invite token in ``/connect/<token>`` is replaced by the invite's id in the log, and
a wrong or spent token gets the gate's 404 page and costs the address a failure in
the same limiter as a wrong link.
"""

from __future__ import annotations

import html

from tornado.web import RequestHandler

from writevue_pipelines import invites
from writevue_pipelines.errors import InvalidInput, WriteVueError
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import get_source

from .gate import reject
from .limiter import FailureLimiter


def page(title: str, body: str) -> str:
    """A plain page in WriteVue's look: the connect page and what it answers."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{html.escape(title)} · WriteVue</title>"
        '<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/assets/theme.css"></head>'
        '<body><main class="wv-page"><header class="wv-header">'
        '<img class="wv-logo" src="/assets/logo.svg" alt="WriteVue">'
        f"<h1>{html.escape(title)}</h1></header>{body}</main></body></html>"
    )


class ConnectHandler(RequestHandler):
    """``/connect/<token>``: the client picks a source and authorises it or pastes an API key."""

    def initialize(self, runtime: Runtime, limiter: FailureLimiter) -> None:
        self.runtime, self.limiter = runtime, limiter

    def _invite(self, token: str) -> invites.InviteInfo | None:
        """The live invite, or None after the gate's 404/429 (same page, same limiter)."""
        if self.limiter.blocked(self.request.remote_ip):
            reject(self, 429)
            return None
        with self.runtime.db.session() as session:
            invite = invites.resolve_invite(session, token)
        if invite is None:
            self.limiter.fail(self.request.remote_ip)
            reject(self, 404)
            return None
        self.request.writevue_invite_id = invite.id  # for the access log
        return invite

    def get(self, token: str) -> None:
        invite = self._invite(token)
        if invite is None:
            return
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
        body = (
            "<p>Choose a source to connect. WriteVue only ever reads from it, and keeps only "
            "daily totals. This page works once, until "
            f"{invite.expires_at:%d %b %Y, %H:%M} UTC.</p>"
            f'<ul class="wv-sources">{"".join(items)}</ul>'
        )
        self.finish(page("Connect your data", body))

    def post(self, token: str) -> None:
        self.check_xsrf_cookie()
        invite = self._invite(token)
        if invite is None:
            return
        action = self.get_body_argument("action", "")
        source = self.get_body_argument("source", "")
        try:
            if action == "oauth":
                url = invites.start_oauth(
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
                    )
                )
                return
            if action == "api_key":
                invites.connect_with_api_key(
                    self.runtime, token, source, self.get_body_argument("api_key", "")
                )
                self.finish(connected_page())
                return
            raise InvalidInput("Choose a source and how to connect it.")
        except WriteVueError as exc:
            self.set_status(400)
            self.finish(page("Not connected", f"<p>{html.escape(str(exc))}</p>"))


def connected_page() -> str:
    return page(
        "Connected",
        "<p>Thank you: the source is connected. WriteVue fetches its figures shortly; "
        "your dashboard shows them after the first refresh. You can close this page.</p>",
    )


class OAuthCallbackHandler(RequestHandler):
    """``/oauth/callback``: where the provider sends the client back with a code."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def get(self) -> None:
        if self.get_query_argument("error", ""):
            self.set_status(400)
            self.finish(
                page(
                    "Not connected",
                    "<p>The provider did not grant access, so nothing was connected. "
                    "Open your invite link again to retry.</p>",
                )
            )
            return
        state = self.get_query_argument("state", "")
        code = self.get_query_argument("code", "")
        try:
            invites.finish_oauth(self.runtime, state, code)
        except WriteVueError as exc:
            self.set_status(400)
            self.finish(page("Not connected", f"<p>{html.escape(str(exc))}</p>"))
            return
        self.finish(connected_page())
