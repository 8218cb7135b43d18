"""The plain Tornado pages next to the dashboards: the CSV export and the connect page.

They sit behind the same header transform and access log as the dashboards: the
invite token in ``/connect/<token>`` is replaced by the invite's id in the log, and
a wrong token costs the address a failure in the same limiter as a wrong link.
"""

from __future__ import annotations

import datetime as dt
import html
import logging

from tornado.web import RequestHandler

from writevue_pipelines import invites
from writevue_pipelines.errors import InvalidInput, WriteVueError
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import get_source

from .data import FactCache, Period, csv_filename, dashboard_csv, load_dashboard
from .gate import NOT_FOUND_HTML, TOO_MANY_HTML, FailureLimiter
from .redaction import limiter_key

_log = logging.getLogger("writevue.dashboard")


def page(title: str, body: str) -> str:
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


class CsvExportHandler(RequestHandler):
    """``/d/<token>?format=csv&from=…&to=…``: the daily figures of the period the page shows."""

    def initialize(self, runtime: Runtime, cache: FactCache) -> None:
        self.runtime, self.cache = runtime, cache

    def get(self, *_args) -> None:
        link = self.request.writevue_link  # set by the gate, which let only a live link through
        try:
            start = dt.date.fromisoformat(self.get_query_argument("from"))
            end = dt.date.fromisoformat(self.get_query_argument("to"))
        except Exception:
            self.set_status(400)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("Choose a period on the dashboard, then download its figures.\n")
            return
        data = load_dashboard(
            self.runtime, link.tenant_id, period=Period.between(start, end), cache=self.cache
        )
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{csv_filename(data)}"')
        self.finish(dashboard_csv(data))


class ConnectHandler(RequestHandler):
    """``/connect/<token>``: the client picks a source and authorises it or pastes an API key."""

    def initialize(self, runtime: Runtime, limiter: FailureLimiter) -> None:
        self.runtime, self.limiter = runtime, limiter

    def _invite(self, token: str) -> invites.InviteInfo | None:
        """The live invite, or None after answering 404/429 (same page, same path)."""
        client = limiter_key(self.request.remote_ip or "")
        if self.limiter.blocked(client):
            self._reject(429)
            return None
        with self.runtime.db.session() as session:
            invite = invites.resolve_invite(session, token)
        if invite is None:
            self.limiter.fail(client)
            self._reject(404)
            return None
        self.request.writevue_invite_id = invite.id  # for the access log
        return invite

    def _reject(self, status: int) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        if status == 429:
            self.set_header("Retry-After", "60")
        self.finish(TOO_MANY_HTML if status == 429 else NOT_FOUND_HTML)

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
