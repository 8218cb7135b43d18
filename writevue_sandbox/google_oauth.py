"""Google's OAuth2 endpoints, as the sandbox serves them: consent page, ``/token``, ``/revoke``.

The paths are Google's own (``accounts.google.com/o/oauth2/v2/auth``,
``oauth2.googleapis.com/token`` and ``/revoke``), so a GA4 connection whose
``auth_base_url`` is the sandbox's origin reaches them unchanged. What Google does,
the sandbox does:

- the authorisation endpoint shows a consent page (an error page, never a redirect,
  for an unknown client, a bad ``redirect_uri`` or a missing ``scope``); Allow
  redirects back with ``code``, ``state`` and ``scope``, Cancel with
  ``error=access_denied``. The page lets the user pick the account (default
  ``login_hint``, else ``demo-user``); an account may carry a fault plan
  (``acme__f_revoked``), as sandbox API keys do;
- PKCE is checked when a ``code_challenge`` was sent (``S256`` or ``plain``):
  ``invalid_grant`` "Missing code verifier." / "Invalid code verifier."; a verifier
  without a challenge is refused too ("code_verifier or verifier is not needed.");
- codes are single-use (spent by any exchange attempt) and live 10 minutes;
- a refresh token is issued only for ``access_type=offline``, and refresh answers carry
  no new one: the refresh token stays the same until revoked;
- a revoked grant, or one the user removed, refreshes to ``400 {"error":
  "invalid_grant", "error_description": "Token has been expired or revoked."}``;
- ``/revoke`` takes an access or a refresh token (form body or query), needs no client
  authentication, ends the whole grant and answers ``200 {}``, or ``400
  {"error": "invalid_token"}`` for a token it does not know or already revoked.

Access tokens live in the sandbox's shared OAuth store, so the GA4 endpoints accept
them through ``oauth.account_for_access_token`` while they are unexpired and unrevoked.
Tests move time and play the user with ``expire_access_tokens`` and ``remove_access``,
and read ``revocations`` for what ``/revoke`` ended. Counters: ``google.consent.*``,
``google.token.<grant_type>``, ``google.token.invalid_grant``, ``google.revoke``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

from . import faults, oauth
from .base import SandboxHandler

DEFAULT_ACCOUNT = oauth.DEFAULT_ACCOUNT
ACCESS_TTL_S = 3599  # what Google's token endpoint says in expires_in
CODE_TTL_S = 600
CONSENT_PATH = "/signin/oauth/consent"
#: what Google's consent screen says each scope lets the app do
SCOPE_TEXT = {
    "https://www.googleapis.com/auth/analytics.readonly": (
        "See and download your Google Analytics data"
    ),
    "https://www.googleapis.com/auth/analytics": "View and manage your Google Analytics data",
    "openid": "Associate you with your personal info on Google",
    "email": "See your primary Google Account email address",
    "profile": "See your personal info, including any personal info you've made public",
}
EXPIRED_OR_REVOKED = "Token has been expired or revoked."


@dataclass
class _Consent:
    client_id: str
    redirect_uri: str
    scope: str
    state: str
    challenge: str | None
    method: str
    offline: bool
    account: str


@dataclass
class _Code:
    consent: _Consent
    account: str
    expires_at: float


@dataclass
class _Store:
    consents: dict[str, _Consent] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    #: refresh token -> grant id (Google does not rotate them)
    refresh: dict[str, str] = field(default_factory=dict)
    #: grant ids issued here, in order
    grants: list[str] = field(default_factory=list)
    revocations: list[dict] = field(default_factory=list)


def _store(settings: dict) -> _Store:
    return settings.setdefault("google_oauth_store", _Store())


# -- what tests use to play time and the user ---------------------------------------------------


def revocations(settings: dict) -> list[dict]:
    """What ``/revoke`` ended, in order: ``{"account", "grant", "via"}`` (the token's kind)."""
    return list(_store(settings).revocations)


def scopes_of_access_token(settings: dict, token: str) -> set[str] | None:
    """The scopes a Google access token issued here was granted; None for any other token."""
    entry = oauth._store(settings).access.get(token)
    if entry is None or entry[0] not in _store(settings).grants:
        return None
    grant = oauth._store(settings).grants.get(entry[0])
    return set(grant.scope.split()) if grant is not None else None


def expire_access_tokens(settings: dict, account: str | None = None) -> int:
    """Let an hour pass for the Google access tokens (of ``account``): how many expired."""
    shared = oauth._store(settings)
    google = set(_store(settings).grants)
    expired = 0
    for token, (grant_id, expires_at, dead) in list(shared.access.items()):
        grant = shared.grants.get(grant_id)
        if grant_id not in google or grant is None:
            continue
        if account is not None and grant.account != account:
            continue
        if expires_at > time.time():
            shared.access[token] = (grant_id, time.time() - 1, dead)
            expired += 1
    return expired


def remove_access(settings: dict, account: str) -> int:
    """The user removes the app's access in their Google Account: grants ended."""
    shared = oauth._store(settings)
    ended = 0
    for grant_id in _store(settings).grants:
        grant = shared.grants.get(grant_id)
        if grant is not None and grant.account == account and not grant.revoked:
            oauth.revoke_grant(settings, grant_id)
            ended += 1
    return ended


# -- the endpoints ---------------------------------------------------------------------------


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


class _HtmlHandler(SandboxHandler):
    def error_page(self, status: int, error: str, detail: str) -> None:
        """Google's "Access blocked" page: shown to the user, never redirected."""
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            _page(
                "Access blocked: authorisation error",
                f"<p>Error {status}: {html.escape(error)}</p><p>{html.escape(detail)}</p>",
            )
        )

    def back(self, redirect_uri: str, params: dict[str, str]) -> None:
        self.set_status(302)
        self.set_header("Location", _with_query(redirect_uri, params))
        self.finish()


class AuthHandler(_HtmlHandler):
    """``GET /o/oauth2/v2/auth``: checks the request, then shows the consent page."""

    def get(self) -> None:
        self.count("google.consent.shown")
        arg = self.get_query_argument
        client_id, redirect_uri = arg("client_id", ""), arg("redirect_uri", "")
        if not client_id.startswith(oauth.CLIENT_PREFIX):
            self.error_page(401, "invalid_client", "The OAuth client was not found.")
            return
        parts = urlsplit(redirect_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            self.error_page(
                400, "redirect_uri_mismatch", "The redirect_uri is not registered for the client."
            )
            return
        state = arg("state", "")
        reply = {"state": state} if state else {}
        if arg("response_type", "") != "code":
            self.back(redirect_uri, {"error": "unsupported_response_type", **reply})
            return
        scope = " ".join(arg("scope", "").split())
        if not scope:
            self.error_page(400, "invalid_request", "Missing required parameter: scope")
            return
        unknown = [s for s in scope.split() if s not in SCOPE_TEXT]
        if unknown:
            self.error_page(400, "invalid_scope", f"Some requested scopes were invalid: {unknown}")
            return
        challenge = arg("code_challenge", "") or None
        method = arg("code_challenge_method", "") or "plain"
        if challenge is not None and (
            method not in ("S256", "plain") or not 43 <= len(challenge) <= 128
        ):
            self.error_page(400, "invalid_request", "Invalid code_challenge or its method.")
            return
        access_type = arg("access_type", "online")
        if access_type not in ("online", "offline"):
            self.error_page(400, "invalid_request", f"Invalid access_type: {access_type}")
            return
        consent_id = secrets.token_urlsafe(16)
        account = arg("login_hint", "") or DEFAULT_ACCOUNT
        _store(self.application.settings).consents[consent_id] = _Consent(
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            challenge=challenge,
            method=method,
            offline=access_type == "offline",
            account=account,
        )
        wants = "".join(f"<li>{html.escape(SCOPE_TEXT[s])}</li>" for s in scope.split())
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            _page(
                "Sign in with Google",
                f"<p>{html.escape(client_id)} wants to access your Google Account</p>"
                f"<ul>{wants}</ul>"
                f'<form method="post" action="{CONSENT_PATH}">'
                f'<input type="hidden" name="consent" value="{consent_id}">'
                f'<label>Account <input name="account" value="{html.escape(account)}"></label>'
                '<button type="submit" name="decision" value="cancel">Cancel</button>'
                '<button type="submit" name="decision" value="allow">Allow</button>'
                "</form>",
            )
        )


class ConsentHandler(_HtmlHandler):
    """``POST /signin/oauth/consent``: the user's answer; back to the app with a code."""

    def post(self) -> None:
        consent = _store(self.application.settings).consents.pop(
            self.get_body_argument("consent", ""), None
        )
        if consent is None:
            self.error_page(400, "invalid_request", "This consent request expired or was used.")
            return
        reply = {"state": consent.state} if consent.state else {}
        if self.get_body_argument("decision", "") != "allow":
            self.count("google.consent.cancel")
            self.back(consent.redirect_uri, {"error": "access_denied", **reply})
            return
        self.count("google.consent.allow")
        account = self.get_body_argument("account", "").strip() or consent.account
        code = "4/0" + secrets.token_urlsafe(40)
        ttl = float(self.application.settings.get("google_code_ttl_s", CODE_TTL_S))
        _store(self.application.settings).codes[code] = _Code(
            consent=consent, account=account, expires_at=time.time() + ttl
        )
        self.back(
            consent.redirect_uri,
            {**reply, "code": code, "scope": consent.scope, "authuser": "0", "prompt": "consent"},
        )


class TokenHandler(oauth._ClientAuthenticated):
    """``POST /token``: the authorization_code and refresh_token grants, as Google answers."""

    async def post(self) -> None:
        grant_type = self.get_body_argument("grant_type", "")
        self.count(f"google.token.{grant_type or 'missing'}")
        self.no_store()
        client_id = self.authenticated_client()
        if client_id is None:
            self.oauth_error(401, "invalid_client", "Unauthorized")
            return
        if grant_type == "authorization_code":
            await self._code(client_id)
        elif grant_type == "refresh_token":
            await self._refresh(client_id)
        else:
            self.oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def no_store(self) -> None:
        self.set_header("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate")
        self.set_header("Pragma", "no-cache")

    def invalid_grant(self, description: str) -> None:
        self.count("google.token.invalid_grant")
        self.oauth_error(400, "invalid_grant", description)

    async def _code(self, client_id: str) -> None:
        store = _store(self.application.settings)
        raw = self.get_body_argument("code", "")
        pending = store.codes.get(raw)
        # A busy server answers before the code is spent.
        if pending is not None and await self.apply_faults(pending.account, scope="google.token"):
            return
        code = store.codes.pop(raw, None)  # single use, even when the exchange fails
        if code is None or time.time() >= code.expires_at:
            self.invalid_grant("Bad Request")
            return
        consent = code.consent
        if consent.client_id != client_id:
            self.oauth_error(401, "unauthorized_client", "Unauthorized")
            return
        if consent.redirect_uri != self.get_body_argument("redirect_uri", ""):
            self.oauth_error(400, "redirect_uri_mismatch", "Bad Request")
            return
        verifier = self.get_body_argument("code_verifier", "")
        if consent.challenge is None:
            if verifier:
                self.invalid_grant("code_verifier or verifier is not needed.")
                return
        elif not verifier:
            self.invalid_grant("Missing code verifier.")
            return
        else:
            expected = _s256(verifier) if consent.method == "S256" else verifier
            if not secrets.compare_digest(expected, consent.challenge):
                self.invalid_grant("Invalid code verifier.")
                return
        dead = faults.from_credential(code.account).count("expired")
        grant = oauth._Grant(
            account=code.account,
            client_id=client_id,
            scope=consent.scope,
            dead_tokens_left=1 if dead >= faults.ALWAYS else dead,
        )
        grant_id = secrets.token_hex(8)
        oauth._store(self.application.settings).grants[grant_id] = grant
        store.grants.append(grant_id)
        refresh = None
        if consent.offline:
            refresh = "1//0" + secrets.token_urlsafe(64)
            store.refresh[refresh] = grant_id
        self._issue(grant_id, grant, refresh)

    async def _refresh(self, client_id: str) -> None:
        store = _store(self.application.settings)
        grant_id = store.refresh.get(self.get_body_argument("refresh_token", ""))
        grant = oauth._store(self.application.settings).grants.get(grant_id or "")
        if grant is not None and await self.apply_faults(grant.account, scope="google.token"):
            return
        if grant is None or grant.revoked:
            self.invalid_grant(EXPIRED_OR_REVOKED)
            return
        if grant.client_id != client_id:
            self.oauth_error(401, "unauthorized_client", "Unauthorized")
            return
        if faults.from_credential(grant.account).count("revoked"):
            oauth.revoke_grant(self.application.settings, grant_id)
            self.invalid_grant(EXPIRED_OR_REVOKED)
            return
        self._issue(grant_id, grant, None)

    def _issue(self, grant_id: str, grant: oauth._Grant, refresh: str | None) -> None:
        shared = oauth._store(self.application.settings)
        ttl = float(self.application.settings.get("google_access_ttl_s", ACCESS_TTL_S))
        access = "ya29.a0" + secrets.token_urlsafe(96)
        dead = grant.dead_tokens_left > 0
        grant.dead_tokens_left = max(0, grant.dead_tokens_left - 1)
        shared.access[access] = (grant_id, time.time() + ttl, dead)
        grant.access_tokens.add(access)
        body = {
            "access_token": access,
            "expires_in": int(ttl) if ttl >= 1 else ttl,
            "scope": grant.scope,
            "token_type": "Bearer",
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        self.write_json(200, body)


class RevokeHandler(SandboxHandler):
    """``POST /revoke``: either token ends the grant; Google needs no client authentication."""

    def post(self) -> None:
        self.count("google.revoke")
        token = self.get_body_argument("token", "") or self.get_query_argument("token", "")
        settings = self.application.settings
        shared, store = oauth._store(settings), _store(settings)
        via, grant_id = None, None
        if token in store.refresh:
            via, grant_id = "refresh_token", store.refresh[token]
        elif token in shared.access and shared.access[token][0] in store.grants:
            via, grant_id = "access_token", shared.access[token][0]
        grant = shared.grants.get(grant_id or "")
        if grant is None or grant.revoked:
            self.write_json(
                400, {"error": "invalid_token", "error_description": "Token expired or revoked"}
            )
            return
        oauth.revoke_grant(settings, grant_id)
        store.revocations.append({"account": grant.account, "grant": grant_id, "via": via})
        self.count("google.revoked")
        self.write_json(200, {})


def routes() -> list:
    return [
        (r"/o/oauth2/v2/auth", AuthHandler),
        (CONSENT_PATH, ConsentHandler),
        (r"/token", TokenHandler),
        (r"/revoke", RevokeHandler),
    ]
