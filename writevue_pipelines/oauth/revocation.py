"""Ending a connection's grant at its provider, for erasure: RFC 7009 or GitHub's grant deletion."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import httpx

from .. import registry
from ..errors import SourceError
from ..registry import ConnectionInfo
from ..runtime import Runtime
from ..sources.http import AllowedWrite, open_client
from .endpoints import (
    Endpoints,
    client_credentials,
    connection_endpoints,
    host_and_path,
    oauth_client,
    request_timeout,
    run_blocking,
)
from .tokens import Tokens


def revoke_grant(runtime: Runtime, connection_id: str) -> bool:
    """Revoke the connection's grant at the provider (RFC 7009); False when it has no endpoint.

    The stored tokens are left for the caller (erasure) to delete with the connection.
    """
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        stored = registry.get_secrets(session, runtime.keys, connection)
    if connection.auth_kind != "oauth2":
        return False
    return revoke_tokens(runtime, connection, stored)


def revoke_tokens(runtime: Runtime, connection: ConnectionInfo, stored: dict[str, str]) -> bool:
    """Revoke a grant from its tokens and the connection's source and options; False when
    the source has no revocation endpoint. Used directly to retry a revocation that
    failed during an erasure, after the connection's row is gone."""
    connection_id = connection.id
    endpoints = connection_endpoints(connection)
    if not endpoints.revoke:
        return False
    tokens = Tokens.from_secrets(stored)
    if endpoints.revoke_style == "github_grant":
        if not tokens.access_token:
            return False
        return run_blocking(
            _revoke_github_grant(runtime, endpoints, tokens.access_token, connection_id)
        )
    token, hint = (
        (tokens.refresh_token, "refresh_token")
        if tokens.refresh_token
        else (tokens.access_token, "access_token")
    )
    if not token:
        return False
    return run_blocking(_revoke(runtime, endpoints, token, hint, connection_id))


async def _revoke_github_grant(
    runtime: Runtime, endpoints: Endpoints, access_token: str, connection_id: str
) -> bool:
    """GitHub ends a grant with ``DELETE /applications/{client_id}/grant``: answered 204."""
    creds = client_credentials(endpoints.source)
    url = endpoints.revoke.replace("{client_id}", quote(creds.client_id, safe=""))
    parts = urlsplit(url)
    host, path = host_and_path(url)
    async with open_client(
        base_url=f"{parts.scheme}://{parts.netloc}",
        allow=[AllowedWrite("DELETE", host, path)],
        timeout=request_timeout(runtime),
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
            raise SourceError.of_connection(
                connection_id,
                f"the revocation endpoint {host}/applications/…/grant could not be reached "
                f"({type(exc).__name__})",
            ) from None
    if response.status_code != 204:
        raise SourceError.of_connection(
            connection_id,
            f"the revocation endpoint {host}/applications/…/grant "
            f"answered HTTP {response.status_code}",
            status=response.status_code,
        )
    return True


async def _revoke(
    runtime: Runtime, endpoints: Endpoints, token: str, hint: str, connection_id: str
) -> bool:
    client_creds = client_credentials(endpoints.source)
    host, revoke_path = host_and_path(endpoints.revoke)
    async with oauth_client(endpoints, endpoints.revoke, request_timeout(runtime)) as client:
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
            raise SourceError.of_connection(
                connection_id,
                f"the revocation endpoint {host}{revoke_path} "
                f"could not be reached ({type(exc).__name__})",
            ) from None
    if response.status_code == 400 and _already_revoked(response):
        # Google answers 400 invalid_token (where RFC 7009 says 200) for a token it no
        # longer knows: the user removed the access, or an earlier erasure ended it.
        return True
    if response.status_code != 200:
        raise SourceError.of_connection(
            connection_id,
            f"the revocation endpoint {host}{revoke_path} answered HTTP {response.status_code}",
            status=response.status_code,
        )
    return True


def _already_revoked(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == "invalid_token"
