"""A connection's access and refresh tokens: the token endpoint, refresh with rotation, storage.

``token_source`` hands connectors a valid access token, refreshing it shortly before it
expires or after a 401. Refresh-token rotation is persisted under a cross-process lock
(``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite); a process that
finds the tokens already refreshed by another uses them instead of calling the
provider, so a connection is refreshed exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass

import httpx
from sqlalchemy import select

from .. import registry
from ..errors import CredentialRejected, SourceError
from ..models import Connection, Credential, utcnow
from ..registry import ConnectionInfo
from ..runtime import Runtime
from ..sources.http import WriteRefused
from ..vault import Binding
from .endpoints import (
    ERROR_CODE,
    Endpoints,
    client_credentials,
    connection_endpoints,
    host_and_path,
    oauth_client,
    request_timeout,
    run_blocking,
)

log = logging.getLogger(__name__)

#: refresh this long before the provider's stated expiry, so a request never races it
REFRESH_SKEW = dt.timedelta(seconds=60)
NEEDS_REAUTH = "needs_reauth"
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
# Error codes that mean "this grant is gone; only the user can make a new one".
# GitHub answers 200 with bad_refresh_token / bad_verification_code instead of invalid_grant.
_DEAD_GRANT = frozenset({"invalid_grant", "bad_refresh_token", "bad_verification_code"})


class InvalidGrant(SourceError):
    """The provider refused the code or refresh token: the user must authorise again."""


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


# -- the token endpoint -----------------------------------------------------------------


async def request_tokens(
    runtime: Runtime, endpoints: Endpoints, form: dict[str, str], *, what: str
) -> Tokens:
    """POST a grant to the token endpoint; the only write the read-only guard lets out.

    Errors start with ``what`` and name no connection, so the HTTP layer that asked for
    the token adds the connection and the request it was making.
    """
    client_creds = client_credentials(endpoints.source)
    host, token_path = host_and_path(endpoints.token)
    body = {
        **form,
        "client_id": client_creds.client_id,
        "client_secret": client_creds.client_secret,
    }
    async with oauth_client(endpoints, endpoints.token, request_timeout(runtime)) as client:
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
        code = error if isinstance(error, str) and ERROR_CODE.match(error) else None
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


# -- tokens for connectors -------------------------------------------------------------


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

    def _needs_reauth(self) -> CredentialRejected:
        cid = self._connection.id
        return CredentialRejected(needs_reauth_message(cid), connection_id=cid, status=401)

    async def _refresh(self, stale: str) -> None:
        # The database work blocks (it may wait up to busy_timeout for another
        # process's lock), so it runs in a thread; the event loop keeps serving others.
        self._tokens = await asyncio.to_thread(self._refresh_locked, stale)

    def _refresh_locked(self, stale: str) -> Tokens:
        runtime, connection = self._runtime, self._connection
        endpoints = connection_endpoints(connection)
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
                    fresh = run_blocking(
                        request_tokens(runtime, endpoints, form, what=f"connection {connection.id}")
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
