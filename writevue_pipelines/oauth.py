"""OAuth2 for connections: authorisation code + PKCE, token refresh with rotation, revocation.

The flow, in the order it happens:

1. ``begin_authorization`` stores a single-use ``state`` (its hash, with the PKCE
   verifier encrypted) that expires in 10 minutes and returns the provider's
   authorisation URL for the client to open.
2. ``complete_authorization`` consumes the state, exchanges the code and creates
   the connection with its tokens encrypted, in one transaction.
3. ``token_source`` hands connectors a valid access token, refreshing it shortly
   before it expires or after a 401. Refresh-token rotation is persisted under a
   cross-process lock (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE``
   on SQLite); a process that finds the tokens already refreshed by another uses
   them instead of calling the provider, so a connection is refreshed exactly once.
4. ``revoke_grant`` revokes the grant at the provider (RFC 7009), for erasure.

OAuth client credentials come from the environment only:
``WRITEVUE_OAUTH_<SOURCE>_CLIENT_ID`` and ``WRITEVUE_OAUTH_<SOURCE>_CLIENT_SECRET``.
When they are unset and the connection's ``auth_base_url`` option points at a
loopback address (the sandbox), the sandbox client ``writevue-sandbox`` /
``sandbox-client-secret`` is used; a real provider never gets that default.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from sqlalchemy import delete, select

from . import registry
from .errors import InvalidInput, NotFound, SourceError
from .links import hash_token
from .models import Connection, Credential, OAuthState, utcnow
from .registry import ConnectionInfo
from .runtime import Runtime
from .sources import get_source
from .sources.auth import OAuthSpec
from .sources.base import Source
from .sources.http import AllowedWrite, WriteRefused, open_client
from .vault import Binding

log = logging.getLogger(__name__)

STATE_TTL = dt.timedelta(minutes=10)
#: refresh this long before the provider's stated expiry, so a request never races it
REFRESH_SKEW = dt.timedelta(seconds=60)
AUTH_BASE_OPTION = "auth_base_url"
SANDBOX_CLIENT_ID = "writevue-sandbox"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105 -- the documented sandbox client
NEEDS_REAUTH = "needs_reauth"
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
TOKEN_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Error codes that mean "this grant is gone; only the user can make a new one".
# GitHub answers 200 with bad_refresh_token / bad_verification_code instead of invalid_grant.
_DEAD_GRANT = frozenset({"invalid_grant", "bad_refresh_token", "bad_verification_code"})
_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


class InvalidGrant(SourceError):
    """The provider refused the code or refresh token: the user must authorise again."""


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"ClientCredentials({self.client_id!r}, <redacted>)"


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_at: dt.datetime | None

    def __repr__(self) -> str:
        return f"Tokens(<redacted>, expires_at={self.expires_at})"

    def fresh(self, now: dt.datetime | None = None) -> bool:
        if self.expires_at is None:
            return True
        return (now or utcnow()) < self.expires_at - REFRESH_SKEW

    def as_secrets(self) -> dict[str, str]:
        fields = {"access_token": self.access_token}
        if self.refresh_token:
            fields["refresh_token"] = self.refresh_token
        fields["expires_at"] = self.expires_at.isoformat() if self.expires_at else ""
        return fields

    @classmethod
    def from_secrets(cls, stored: dict[str, str]) -> Tokens:
        expires = stored.get("expires_at") or ""
        return cls(
            access_token=stored.get("access_token", ""),
            refresh_token=stored.get("refresh_token") or None,
            expires_at=dt.datetime.fromisoformat(expires) if expires else None,
        )


# -- endpoints and client credentials --------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """A connection's OAuth2 endpoints as absolute URLs."""

    source: str
    authorize: str
    token: str
    revoke: str | None
    scopes: tuple[str, ...]
    extra_authorize_params: dict[str, str]
    revoke_style: str = "rfc7009"

    def allowed_writes(self) -> list[AllowedWrite]:
        """The only requests that may change anything at the provider: these POSTs."""
        urls = [self.token]
        if self.revoke and self.revoke_style == "rfc7009":
            urls.append(self.revoke)
        return [AllowedWrite("POST", *_host_and_path(url)) for url in urls if url]


def _host_and_path(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.path or "/"


def _resolve(spec: OAuthSpec, options: dict[str, Any], path: str | None) -> str | None:
    """An endpoint's URL: a path joins the base; ``auth_base_url`` replaces any origin."""
    if path is None:
        return None
    override = str(options.get(AUTH_BASE_OPTION) or "").rstrip("/")
    if "://" in path:  # an endpoint on another host (Google's token endpoint, a spec file's)
        return override + urlsplit(path).path if override else path
    return (override or spec.base_url.rstrip("/")) + path


def _endpoints(source_name: str, options: dict[str, Any]) -> Endpoints:
    source = get_source(source_name)
    spec = source.oauth
    # A source whose endpoints differ per connection (the declarative REST source reads
    # them from its spec file) offers ``oauth_spec(connection)``.
    per_connection = getattr(source, "oauth_spec", None)
    if "oauth2" in source.auth_kinds and callable(per_connection):
        spec = per_connection(_pending_connection(source.name, options)) or spec
    if "oauth2" not in source.auth_kinds or spec is None:
        raise InvalidInput(
            f"Source {source.name!r} is not connected with OAuth2; "
            "use `writevue connection add` with its API key instead."
        )
    return Endpoints(
        source=source.name,
        authorize=_resolve(spec, options, spec.authorize_path),
        token=_resolve(spec, options, spec.token_path),
        revoke=_resolve(spec, options, spec.revoke_path),
        scopes=tuple(spec.scopes),
        extra_authorize_params=dict(spec.extra_authorize_params),
        revoke_style=spec.revoke_style,
    )


def _pending_connection(source_name: str, options: dict[str, Any]) -> ConnectionInfo:
    """What a connection will look like, for sources that read endpoints from its options."""
    return ConnectionInfo(
        id="00000000-0000-0000-0000-000000000000",
        tenant_id="",
        source=source_name,
        auth_kind="oauth2",
        options=dict(options),
        status="pending",
        last_error=None,
        last_refreshed_at=None,
    )


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_credentials(source_name: str, token_url: str) -> ClientCredentials:
    """WriteVue's OAuth client at this source, from the environment.

    Without one, a token endpoint on a loopback address (the sandbox) gets the
    documented sandbox client; anything else is an error naming the variables.
    """
    prefix = "WRITEVUE_OAUTH_" + re.sub(r"[^A-Z0-9]", "_", source_name.upper())
    client_id = os.environ.get(f"{prefix}_CLIENT_ID", "").strip()
    client_secret = os.environ.get(f"{prefix}_CLIENT_SECRET", "").strip()
    if client_id and client_secret:
        return ClientCredentials(client_id, client_secret)
    if not client_id and not client_secret and _is_loopback(token_url):
        return ClientCredentials(SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
    raise InvalidInput(
        f"WriteVue has no OAuth client for {source_name}; set {prefix}_CLIENT_ID and "
        f"{prefix}_CLIENT_SECRET to the app registered with the provider."
    )


def _validate_http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{what} must be an http(s) URL such as https://example.com/callback.")
    if parts.username or parts.password or parts.fragment:
        raise InvalidInput(f"{what} must not carry credentials or a fragment.")
    return value


def _validate_options(source: Source, options: dict[str, str]) -> dict[str, str]:
    options = dict(options)
    auth_base = options.pop(AUTH_BASE_OPTION, None)
    options = dict(source.validate_options(options))
    if auth_base is not None:
        _validate_http_url(auth_base, f"Option {AUTH_BASE_OPTION}")
        if urlsplit(auth_base).query:
            raise InvalidInput(f"Option {AUTH_BASE_OPTION} must not carry a query string.")
        options[AUTH_BASE_OPTION] = auth_base
    return options


def _state_hash(state: str) -> str:
    # Stored like a link token: only the hash, so the database never holds a live state.
    return hash_token(state)


def _verifier_binding(tenant_id: str, state_hash: str) -> Binding:
    # Bound to its own state row, so a verifier copied to another row does not decrypt.
    return Binding(tenant_id, None, f"oauth.verifier.{state_hash[:16]}")


def _run(coro):
    """Run a coroutine to completion from blocking code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A server handler (the connect page's callback) calls in with its loop running.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- 1. begin -------------------------------------------------------------------------


def begin_authorization(
    runtime: Runtime,
    tenant_id: str,
    source_name: str,
    options: dict[str, str],
    redirect_uri: str,
    *,
    reconnect: str | None = None,
) -> str:
    """The URL at which the client authorises WriteVue; its state is single-use for 10 minutes.

    ``reconnect`` names an existing connection whose grant this renews (after
    ``needs_reauth``); otherwise completing the flow adds a new connection.
    """
    source = get_source(source_name)
    options = _validate_options(source, options)
    redirect_uri = _validate_http_url((redirect_uri or "").strip(), "The redirect URI")
    endpoints = _endpoints(source.name, options)
    client = client_credentials(source.name, endpoints.token)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters, inside RFC 7636's 43..128
    state_hash = _state_hash(state)
    now = utcnow()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, tenant_id)
        if reconnect is not None:
            existing = registry.get_connection(session, reconnect)
            if existing.tenant_id != tenant_id or existing.source != source.name:
                raise InvalidInput(
                    f"Connection {existing.id} is not a {source.name} connection of this tenant."
                )
            reconnect = existing.id
        # Abandoned authorisations go as soon as anyone starts a new one.
        session.execute(delete(OAuthState).where(OAuthState.expires_at < now))
        session.add(
            OAuthState(
                state_sha256=state_hash,
                tenant_id=tenant_id,
                source=source.name,
                connection_id=reconnect,
                options=options,
                redirect_uri=redirect_uri,
                code_verifier_ct=runtime.keys.encrypt(
                    verifier, _verifier_binding(tenant_id, state_hash)
                ),
                created_at=now,
                expires_at=now + STATE_TTL,
            )
        )
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if endpoints.scopes:
        params["scope"] = " ".join(endpoints.scopes)
    params.update(endpoints.extra_authorize_params)
    separator = "&" if urlsplit(endpoints.authorize).query else "?"
    return f"{endpoints.authorize}{separator}{urlencode(params)}"


# -- 2. complete ----------------------------------------------------------------------


def parse_callback(text: str) -> tuple[str, str]:
    """(state, code) from a redirected callback URL or its query string."""
    text = (text or "").strip()
    query = urlsplit(text).query if "://" in text else text.lstrip("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if params.get("error"):
        error = params["error"]
        error = error if _ERROR_CODE.match(error) else "an error"
        raise InvalidInput(
            f"The provider answered {error} instead of a code; "
            "the client declined or the request was wrong. Start again."
        )
    state, code = params.get("state", ""), params.get("code", "")
    if not state or not code:
        raise InvalidInput(
            "The callback holds no code and state; paste the whole URL the browser was sent to."
        )
    return state, code


def complete_authorization(runtime: Runtime, state: str, code: str) -> str:
    """Consume the state, exchange the code, store the connection; its id.

    The state is deleted whether or not the exchange succeeds (a code is single-use
    at the provider too), and the connection with its encrypted tokens is created
    in the same transaction that deletes it, so nothing is ever half-written.
    """
    if not state or not code or len(state) > 512 or len(code) > 4096:
        raise InvalidInput("The authorisation code or state is missing or malformed.")
    failure: Exception | None = None
    connection_id = ""
    with runtime.db.locked_session() as session:
        row = session.scalars(
            select(OAuthState)
            .where(OAuthState.state_sha256 == _state_hash(state))
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise InvalidInput(
                "This authorisation was already completed or never started here; "
                "start again with `writevue connection authorize`."
            )
        session.delete(row)
        if row.expires_at <= utcnow():
            failure = InvalidInput(
                "This authorisation expired (it is valid for 10 minutes); start again."
            )
        else:
            endpoints = _endpoints(row.source, row.options)
            verifier = runtime.keys.decrypt_text(
                row.code_verifier_ct, _verifier_binding(row.tenant_id, row.state_sha256)
            )
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": row.redirect_uri,
                "code_verifier": verifier,
            }
            what = f"{row.source} authorisation for tenant {row.tenant_id}"
            try:
                tokens = _run(_token_call(runtime, endpoints, form, what=what))
            except SourceError as exc:
                failure = exc
            else:
                connection_id = _store_connection(runtime, session, row, row.source, tokens)
    if failure is not None:
        raise failure
    return connection_id


def _store_connection(runtime, session, row: OAuthState, source: str, tokens: Tokens) -> str:
    if row.connection_id is None:
        connection_id = registry.add_connection(
            session,
            runtime.keys,
            row.tenant_id,
            source,
            "oauth2",
            dict(row.options),
            tokens.as_secrets(),
        )
        action = "connection.authorised"
    else:
        connection_id = row.connection_id
        connection = session.get(Connection, connection_id)
        if connection is None:
            raise NotFound(f"Connection {connection_id} was removed while it was being renewed.")
        session.execute(
            delete(Credential).where(
                Credential.connection_id == connection_id,
                Credential.field.in_(("access_token", "refresh_token", "expires_at")),
            )
        )
        for field, value in tokens.as_secrets().items():
            registry.put_secret(session, runtime.keys, row.tenant_id, connection_id, field, value)
        connection.status, connection.last_error = "active", None
        action = "connection.reauthorised"
    registry.audit(
        session, "oauth", action, row.tenant_id, connection_id=connection_id, source=source
    )
    return connection_id


# -- the token endpoint -----------------------------------------------------------------


async def _token_call(
    runtime: Runtime, endpoints: Endpoints, form: dict[str, str], *, what: str
) -> Tokens:
    """POST a grant to the token endpoint; the only write the read-only guard lets out."""
    client_creds = client_credentials(endpoints.source, endpoints.token)
    host, token_path = _host_and_path(endpoints.token)
    body = {
        **form,
        "client_id": client_creds.client_id,
        "client_secret": client_creds.client_secret,
    }
    timeout = httpx.Timeout(runtime.settings.http_timeout_s, connect=10.0)
    async with _oauth_client(endpoints, endpoints.token, timeout) as client:
        try:
            response = await client.post(endpoints.token, data=body)
            raw = response.content
        except WriteRefused:
            raise
        except httpx.HTTPError as exc:
            raise SourceError(
                f"{what}: the token endpoint {host}{token_path} could not be reached "
                f"({type(exc).__name__})"
            ) from None
    if len(raw) > MAX_TOKEN_RESPONSE_BYTES:
        raise SourceError(f"{what}: the token endpoint {host}{token_path} answered too much")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        payload = None
    status = response.status_code
    error = payload.get("error") if isinstance(payload, dict) else None
    if error or status >= 400:
        code = error if isinstance(error, str) and _ERROR_CODE.match(error) else None
        message = f"{what}: the token endpoint {host}{token_path} answered HTTP {status}"
        if code:
            message += f" ({code})"
        if code in _DEAD_GRANT:
            raise InvalidGrant(message, status=status)
        raise SourceError(message, status=status)
    if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
        raise SourceError(
            f"{what}: the token endpoint {host}{token_path} answered without an access token",
            status=status,
        )
    token_type = str(payload.get("token_type") or "bearer").lower()
    if token_type != "bearer":  # noqa: S105 -- a token type, not a secret
        raise SourceError(f"{what}: the provider issued a {token_type!r} token, not a bearer token")
    expires_at = None
    try:
        if payload.get("expires_in") is not None:
            expires_at = utcnow() + dt.timedelta(seconds=float(payload["expires_in"]))
    except (TypeError, ValueError):
        raise SourceError(f"{what}: the token endpoint sent an unreadable expires_in") from None
    refresh = payload.get("refresh_token")
    return Tokens(
        access_token=payload["access_token"],
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_at=expires_at,
    )


def _oauth_client(endpoints: Endpoints, url: str, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """A client for the authorisation server at ``url``'s origin that may POST to its
    token and revocation endpoints, and nowhere else."""
    parts = urlsplit(url)
    return open_client(
        base_url=f"{parts.scheme}://{parts.netloc}",
        allow=endpoints.allowed_writes(),
        timeout=timeout,
        provider=f"oauth:{parts.netloc}",
    )


# -- 3. tokens for connectors -------------------------------------------------------------


def needs_reauth_message(connection_id: str) -> str:
    return (
        f"the provider no longer accepts WriteVue's authorisation for connection "
        f"{connection_id}; ask the client to reconnect"
    )


class ConnectionTokens:
    """A ``TokenSource`` for one OAuth2 connection; see the module docstring."""

    def __init__(self, runtime: Runtime, connection: ConnectionInfo, stored: dict[str, str]):
        self._runtime = runtime
        self._connection = connection
        self._tokens = Tokens.from_secrets(stored)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ConnectionTokens({self._connection.id}, <redacted>)"

    async def access_token(self) -> str:
        if self._connection.status == NEEDS_REAUTH:
            raise self._needs_reauth()
        if not self._tokens.access_token or not self._tokens.fresh():
            async with self._lock:
                if not self._tokens.access_token or not self._tokens.fresh():
                    await self._refresh(self._tokens.access_token)
        return self._tokens.access_token

    async def refreshed(self, rejected: str) -> str:
        async with self._lock:
            if self._tokens.access_token == rejected:
                await self._refresh(rejected)
        return self._tokens.access_token

    def _needs_reauth(self) -> SourceError:
        cid = self._connection.id
        return SourceError(needs_reauth_message(cid), connection_id=cid, status=401)

    async def _refresh(self, stale: str) -> None:
        # The database work blocks (it may wait up to busy_timeout for another
        # process's lock), so it runs in a thread; the event loop keeps serving others.
        self._tokens = await asyncio.to_thread(self._refresh_locked, stale)

    def _refresh_locked(self, stale: str) -> Tokens:
        runtime, connection = self._runtime, self._connection
        endpoints = _endpoints(connection.source, connection.options)
        dead = False
        with runtime.db.locked_session() as session:
            # Locks the credential rows on PostgreSQL; SQLite is already locked by
            # BEGIN IMMEDIATE. Either way, read what is stored now, after the wait.
            rows = session.scalars(
                select(Credential)
                .where(Credential.connection_id == connection.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).all()
            row = session.get(Connection, connection.id, populate_existing=True)
            if row is None:
                raise SourceError(
                    f"connection {connection.id} no longer exists", connection_id=connection.id
                )
            if row.status == NEEDS_REAUTH:
                raise self._needs_reauth()
            stored = Tokens.from_secrets(
                {
                    r.field: runtime.keys.decrypt_text(
                        r.ciphertext, Binding(r.tenant_id, r.connection_id, r.field)
                    )
                    for r in rows
                }
            )
            if stored.access_token and stored.access_token != stale and stored.fresh():
                # Another process (or an earlier run) refreshed it while we waited.
                log.info("connection %s: using the access token refreshed elsewhere", row.id)
                return stored
            if not stored.refresh_token:
                dead, failure = True, self._needs_reauth()
            else:
                form = {"grant_type": "refresh_token", "refresh_token": stored.refresh_token}
                try:
                    fresh = _run(
                        _token_call(runtime, endpoints, form, what=f"connection {connection.id}")
                    )
                except InvalidGrant:
                    dead, failure = True, self._needs_reauth()
                else:
                    # Providers that do not rotate keep the old refresh token valid.
                    fresh = Tokens(
                        fresh.access_token,
                        fresh.refresh_token or stored.refresh_token,
                        fresh.expires_at,
                    )
                    for field, value in fresh.as_secrets().items():
                        registry.put_secret(
                            session, runtime.keys, row.tenant_id, row.id, field, value
                        )
                    log.info("connection %s: access token refreshed", row.id)
                    return fresh
            if dead:
                log.warning("connection %s: %s", row.id, failure)
                row.status, row.last_error = NEEDS_REAUTH, str(failure)
                registry.audit(
                    session,
                    "oauth",
                    "connection.needs_reauth",
                    row.tenant_id,
                    connection_id=row.id,
                )
        raise failure


def token_source(
    runtime: Runtime, connection: ConnectionInfo, secrets: dict[str, str]
) -> ConnectionTokens:
    """Access tokens for one OAuth2 connection, refreshed as needed (see the module doc)."""
    if connection.auth_kind != "oauth2":
        raise SourceError(
            f"connection {connection.id} does not use OAuth2", connection_id=connection.id
        )
    return ConnectionTokens(runtime, connection, secrets)


# -- 4. revocation --------------------------------------------------------------------------


def revoke_grant(runtime: Runtime, connection_id: str) -> bool:
    """Revoke the connection's grant at the provider (RFC 7009); False when it has no endpoint.

    The stored tokens are left for the caller (erasure) to delete with the connection.
    """
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        stored = registry.get_secrets(session, runtime.keys, connection)
    if connection.auth_kind != "oauth2":
        return False
    endpoints = _endpoints(connection.source, connection.options)
    if not endpoints.revoke:
        return False
    tokens = Tokens.from_secrets(stored)
    if endpoints.revoke_style == "github_grant":
        if not tokens.access_token:
            return False
        return _run(_revoke_github_grant(runtime, endpoints, tokens.access_token, connection_id))
    token, hint = (
        (tokens.refresh_token, "refresh_token")
        if tokens.refresh_token
        else (tokens.access_token, "access_token")
    )
    if not token:
        return False
    return _run(_revoke(runtime, endpoints, token, hint, connection_id))


async def _revoke_github_grant(
    runtime: Runtime, endpoints: Endpoints, access_token: str, connection_id: str
) -> bool:
    """GitHub ends a grant with ``DELETE /applications/{client_id}/grant``: answered 204."""
    creds = client_credentials(endpoints.source, endpoints.token)
    url = endpoints.revoke.replace("{client_id}", quote(creds.client_id, safe=""))
    parts = urlsplit(url)
    host, path = _host_and_path(url)
    async with open_client(
        base_url=f"{parts.scheme}://{parts.netloc}",
        allow=[AllowedWrite("DELETE", host, path)],
        timeout=httpx.Timeout(runtime.settings.http_timeout_s, connect=10.0),
        provider=f"oauth:{parts.netloc}",
        headers={"Accept": "application/vnd.github+json"},
    ) as client:
        try:
            response = await client.request(
                "DELETE",
                path,
                json={"access_token": access_token},
                auth=httpx.BasicAuth(creds.client_id, creds.client_secret),
            )
        except httpx.HTTPError as exc:
            raise SourceError(
                f"connection {connection_id}: the revocation endpoint {host}/applications/…/"
                f"grant could not be reached ({type(exc).__name__})",
                connection_id=connection_id,
            ) from None
    if response.status_code != 204:
        raise SourceError(
            f"connection {connection_id}: the revocation endpoint {host}/applications/…/grant "
            f"answered HTTP {response.status_code}",
            connection_id=connection_id,
            status=response.status_code,
        )
    return True


async def _revoke(
    runtime: Runtime, endpoints: Endpoints, token: str, hint: str, connection_id: str
) -> bool:
    client_creds = client_credentials(endpoints.source, endpoints.token)
    host, revoke_path = _host_and_path(endpoints.revoke)
    timeout = httpx.Timeout(runtime.settings.http_timeout_s, connect=10.0)
    async with _oauth_client(endpoints, endpoints.revoke, timeout) as client:
        try:
            response = await client.post(
                endpoints.revoke,
                data={
                    "token": token,
                    "token_type_hint": hint,
                    "client_id": client_creds.client_id,
                    "client_secret": client_creds.client_secret,
                },
            )
        except httpx.HTTPError as exc:
            raise SourceError(
                f"connection {connection_id}: the revocation endpoint {host}{revoke_path} "
                f"could not be reached ({type(exc).__name__})",
                connection_id=connection_id,
            ) from None
    if response.status_code != 200:
        raise SourceError(
            f"connection {connection_id}: the revocation endpoint {host}{revoke_path} "
            f"answered HTTP {response.status_code}",
            connection_id=connection_id,
            status=response.status_code,
        )
    return True
