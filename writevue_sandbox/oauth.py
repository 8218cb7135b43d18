"""The sandbox's OAuth2 authorisation server: code + PKCE S256, refresh rotation, RFC 7009.

It auto-approves a test user (the account is the ``login_hint``, default
``demo-user``) so tests and the demo can run the whole authorisation dance over
HTTP without a browser. The sandbox client is ``writevue-sandbox`` with secret
``sandbox-client-secret``; any client id starting with ``writevue-`` is accepted
with that secret, so independent tests need not share a client.

Knobs:

- application setting ``oauth_access_ttl_s`` (default 3600): access-token lifetime;
  ``oauth_code_ttl_s`` (default 60): authorisation-code lifetime;
- fault plans in the account (``login_hint`` such as ``acme__f_expired``):
  ``expired`` makes the access token of the code exchange dead on first use
  (``expiredN``: the first N access tokens of the grant); ``revoked`` makes every
  refresh answer ``invalid_grant``; ``latency``/``429``/``5xx`` hit the token endpoint.

Other sandbox providers accept the access tokens through ``account_for_access_token``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

from . import faults
from .base import SandboxHandler

SANDBOX_CLIENT_ID = "writevue-sandbox"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105 -- public, sandbox only
CLIENT_PREFIX = "writevue-"
DEFAULT_ACCOUNT = "demo-user"


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    account: str
    scope: str
    expires_at: float


@dataclass
class _Grant:
    account: str
    client_id: str
    scope: str
    dead_tokens_left: int = 0
    revoked: bool = False
    access_tokens: set[str] = field(default_factory=set)


@dataclass
class _Store:
    """Everything the authorisation server remembers; lives in the application settings."""

    codes: dict[str, _Code] = field(default_factory=dict)
    grants: dict[str, _Grant] = field(default_factory=dict)
    # access token -> (grant id, expires at, dead on arrival)
    access: dict[str, tuple[str, float, bool]] = field(default_factory=dict)
    # refresh token -> (grant id, still current); rotated-out tokens stay to catch reuse
    refresh: dict[str, tuple[str, bool]] = field(default_factory=dict)


def _store(settings: dict) -> _Store:
    return settings.setdefault("oauth_store", _Store())


def account_for_access_token(settings: dict, token: str) -> str | None:
    """The account an unexpired, unrevoked sandbox access token belongs to, else None.

    ``settings`` is the Tornado application's settings (``self.application.settings``).
    The account may carry a fault plan, like a sandbox API key does.
    """
    entry = _store(settings).access.get(token)
    if entry is None:
        return None
    grant_id, expires_at, dead = entry
    grant = _store(settings).grants.get(grant_id)
    if dead or grant is None or grant.revoked or time.time() >= expires_at:
        return None
    return grant.account


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _valid_redirect(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def _with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class AuthorizeHandler(SandboxHandler):
    """Auto-approves the test user and redirects back with a code, as a consent screen would."""

    def get(self) -> None:
        self.count("oauth.authorize")
        arg = self.get_query_argument
        client_id, redirect_uri = arg("client_id", ""), arg("redirect_uri", "")
        # Until the client and redirect URI are trusted, errors are shown, never redirected.
        if not client_id.startswith(CLIENT_PREFIX):
            self.write_json(400, {"error": "invalid_client", "error_description": "unknown client"})
            return
        if not _valid_redirect(redirect_uri):
            self.write_json(
                400, {"error": "invalid_request", "error_description": "bad redirect_uri"}
            )
            return
        # The account's fault plan is for the token endpoint: this is the user's browser.
        account = arg("login_hint", "") or DEFAULT_ACCOUNT
        state = arg("state", "")
        reply = {"state": state} if state else {}
        if arg("response_type", "") != "code":
            self._back(redirect_uri, {"error": "unsupported_response_type", **reply})
            return
        challenge, method = arg("code_challenge", ""), arg("code_challenge_method", "")
        if method != "S256" or not 43 <= len(challenge) <= 128:
            self._back(
                redirect_uri,
                {
                    "error": "invalid_request",
                    "error_description": "PKCE with code_challenge_method=S256 is required",
                    **reply,
                },
            )
            return
        code = "sbx_code_" + secrets.token_urlsafe(24)
        ttl = float(self.application.settings.get("oauth_code_ttl_s", 60))
        _store(self.application.settings).codes[code] = _Code(
            client_id=client_id,
            redirect_uri=redirect_uri,
            challenge=challenge,
            account=account,
            scope=arg("scope", ""),
            expires_at=time.time() + ttl,
        )
        self._back(redirect_uri, {"code": code, **reply})

    def _back(self, redirect_uri: str, params: dict[str, str]) -> None:
        self.set_status(302)
        self.set_header("Location", _with_query(redirect_uri, params))
        self.finish()


class _ClientAuthenticated(SandboxHandler):
    def authenticated_client(self) -> str | None:
        """The client id from HTTP basic or form fields, if its secret is right."""
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                raw = base64.b64decode(header[len("Basic ") :]).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            client_id, _, secret = raw.partition(":")
        else:
            client_id = self.get_body_argument("client_id", "")
            secret = self.get_body_argument("client_secret", "")
        if client_id.startswith(CLIENT_PREFIX) and secrets.compare_digest(
            secret, SANDBOX_CLIENT_SECRET
        ):
            return client_id
        return None

    def oauth_error(self, status: int, error: str, description: str = "") -> None:
        body = {"error": error}
        if description:
            body["error_description"] = description
        self.write_json(status, body)

    def no_store(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")


class TokenHandler(_ClientAuthenticated):
    async def post(self) -> None:
        grant_type = self.get_body_argument("grant_type", "")
        self.count(f"oauth.token.{grant_type or 'missing'}")
        self.no_store()
        client_id = self.authenticated_client()
        if client_id is None:
            self.set_header("WWW-Authenticate", 'Basic realm="sandbox"')
            self.oauth_error(401, "invalid_client")
            return
        if grant_type == "authorization_code":
            await self._code(client_id)
        elif grant_type == "refresh_token":
            await self._refresh(client_id)
        else:
            self.oauth_error(400, "unsupported_grant_type")

    async def _code(self, client_id: str) -> None:
        store = _store(self.application.settings)
        raw = self.get_body_argument("code", "")
        pending = store.codes.get(raw)
        # A fault answers as a busy server would: before the code is spent.
        if pending is not None and await self.apply_faults(pending.account, scope="oauth.token"):
            return
        code = store.codes.pop(raw, None)  # single use, even when the exchange fails
        verifier = self.get_body_argument("code_verifier", "")
        if (
            code is None
            or time.time() >= code.expires_at
            or code.client_id != client_id
            or code.redirect_uri != self.get_body_argument("redirect_uri", "")
        ):
            self.oauth_error(400, "invalid_grant", "the code is invalid, used or expired")
            return
        if not verifier or not secrets.compare_digest(_s256(verifier), code.challenge):
            self.oauth_error(400, "invalid_grant", "PKCE verification failed")
            return
        dead = faults.from_credential(code.account).count("expired")
        grant = _Grant(
            account=code.account,
            client_id=client_id,
            scope=code.scope,
            # an uncounted `expired` means: only the first token is dead on arrival
            dead_tokens_left=1 if dead >= faults.ALWAYS else dead,
        )
        grant_id = secrets.token_hex(8)
        store.grants[grant_id] = grant
        self._issue(grant_id, grant)

    async def _refresh(self, client_id: str) -> None:
        store = _store(self.application.settings)
        token = self.get_body_argument("refresh_token", "")
        entry = store.refresh.get(token)
        grant = store.grants.get(entry[0]) if entry else None
        if grant is not None and await self.apply_faults(grant.account, scope="oauth.token"):
            return
        if grant is None or grant.revoked or grant.client_id != client_id:
            self.oauth_error(400, "invalid_grant", "the refresh token is invalid or revoked")
            return
        grant_id, current = entry
        if not current:
            # A rotated-out token came back: someone holds a copy. Kill the whole grant.
            self.count("oauth.refresh_reuse")
            self._revoke_grant(grant_id)
            self.oauth_error(400, "invalid_grant", "the refresh token was already used")
            return
        if faults.from_credential(grant.account).count("revoked"):
            self._revoke_grant(grant_id)
            self.oauth_error(400, "invalid_grant", "the grant was revoked by the user")
            return
        store.refresh[token] = (grant_id, False)
        self._issue(grant_id, grant)

    def _issue(self, grant_id: str, grant: _Grant) -> None:
        store = _store(self.application.settings)
        ttl = float(self.application.settings.get("oauth_access_ttl_s", 3600))
        access = "sbx_at_" + secrets.token_urlsafe(24)
        refresh = "sbx_rt_" + secrets.token_urlsafe(24)
        dead = grant.dead_tokens_left > 0
        grant.dead_tokens_left = max(0, grant.dead_tokens_left - 1)
        store.access[access] = (grant_id, time.time() + ttl, dead)
        store.refresh[refresh] = (grant_id, True)
        grant.access_tokens.add(access)
        body = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(ttl) if ttl >= 1 else ttl,
            "refresh_token": refresh,
        }
        if grant.scope:
            body["scope"] = grant.scope
        self.write_json(200, body)

    def _revoke_grant(self, grant_id: str) -> None:
        revoke_grant(self.application.settings, grant_id)


def revoke_grant(settings: dict, grant_id: str) -> bool:
    store = _store(settings)
    grant = store.grants.get(grant_id)
    if grant is None or grant.revoked:
        return False
    grant.revoked = True
    for token, (owner, _) in list(store.refresh.items()):
        if owner == grant_id:
            store.refresh[token] = (owner, False)
    for token in grant.access_tokens:
        store.access.pop(token, None)
    return True


class RevokeHandler(_ClientAuthenticated):
    """RFC 7009: revoking either token of a grant revokes the whole grant; always 200."""

    async def post(self) -> None:
        self.count("oauth.revoke")
        self.no_store()
        if self.authenticated_client() is None:
            self.oauth_error(401, "invalid_client")
            return
        store = _store(self.application.settings)
        token = self.get_body_argument("token", "")
        hint = self.get_body_argument("token_type_hint", "")
        lookups = (store.access, store.refresh)
        if hint == "refresh_token":
            lookups = (store.refresh, store.access)
        for table in lookups:
            entry = table.get(token)
            if entry is not None:
                if revoke_grant(self.application.settings, entry[0]):
                    self.count("oauth.revocations")
                break
        self.set_status(200)
        self.finish()


def routes() -> list:
    return [
        (r"/oauth/authorize", AuthorizeHandler),
        (r"/oauth/token", TokenHandler),
        (r"/oauth/revoke", RevokeHandler),
    ]
