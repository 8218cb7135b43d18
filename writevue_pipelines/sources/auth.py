"""How a connector proves who it is: API key, HTTP basic, or an OAuth2 bearer token.

Each is an ``httpx.Auth``, so connectors pass ``auth=`` and never touch a secret
themselves. OAuth2 tokens come from a ``TokenSource`` (see ``writevue_pipelines.oauth``),
which refreshes them and persists rotation; a 401 makes it refresh once and retry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from ..errors import SourceError

AUTH_KINDS = ("oauth2", "api_key", "basic")


@dataclass(frozen=True)
class ApiKeyPlacement:
    """Where a provider wants its API key: a header (with a prefix) or a query parameter."""

    header: str | None = "Authorization"
    prefix: str = "Bearer "
    query_param: str | None = None


@dataclass(frozen=True)
class OAuthSpec:
    """A provider's OAuth2 endpoints, relative to its authorisation server's base URL."""

    base_url: str
    authorize_path: str
    token_path: str
    revoke_path: str | None = None
    scopes: tuple[str, ...] = ()
    extra_authorize_params: dict[str, str] = field(default_factory=dict)
    #: "rfc7009": POST the token to ``revoke_path``. "github_grant": GitHub's
    #: ``DELETE /applications/{client_id}/grant`` with the client's basic auth and the
    #: access token in a JSON body, which ends the whole grant.
    revoke_style: str = "rfc7009"


class ApiKeyAuth(httpx.Auth):
    def __init__(self, key: str, placement: ApiKeyPlacement):
        if not key:
            raise SourceError("the connection has no API key; add it again")
        self._key = key
        self._placement = placement

    def auth_flow(self, request: httpx.Request):
        placement = self._placement
        if placement.query_param:
            request.url = request.url.copy_merge_params({placement.query_param: self._key})
        else:
            request.headers[placement.header or "Authorization"] = f"{placement.prefix}{self._key}"
        yield request

    def __repr__(self) -> str:  # never the key
        return "ApiKeyAuth(<redacted>)"


class BasicAuth(httpx.BasicAuth):
    def __repr__(self) -> str:
        return "BasicAuth(<redacted>)"


class TokenSource(Protocol):
    async def access_token(self) -> str:
        """A token that is valid now (refreshing it first if it is about to expire)."""

    async def refreshed(self, rejected: str) -> str:
        """A token other than ``rejected``, which the provider refused."""


class OAuth2BearerAuth(httpx.Auth):
    def __init__(self, tokens: TokenSource):
        self._tokens = tokens

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._tokens.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self._tokens.refreshed(token)
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def sync_auth_flow(self, request):
        raise RuntimeError("OAuth2 sources are read with the async client")

    def __repr__(self) -> str:
        return "OAuth2BearerAuth(<redacted>)"
