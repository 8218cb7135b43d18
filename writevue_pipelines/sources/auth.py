"""How a connector proves who it is: API key, HTTP basic, or an OAuth2 bearer token.

Each is an ``httpx.Auth``, so connectors pass ``auth=`` and never touch a secret
themselves. ``AUTHS`` builds one by name from an ``AuthConfig`` (how to present the
credentials, never the credentials): a declarative spec names its auth type, and a
hand-written connector's ``Source.build_auth`` picks the entry for the connection's
kind. OAuth2 tokens come from a ``TokenSource`` (see ``writevue_pipelines.oauth``),
which refreshes them and persists rotation; a 401 makes it refresh once and retry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from ..errors import SourceError


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


# -- chosen by name ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthConfig:
    """How to present a connection's credentials; never the credentials themselves."""

    type: str
    #: api_key: "header" or "query"
    location: str = "header"
    #: api_key: the header or query parameter name
    name: str = "Authorization"
    #: api_key in a header: what precedes the key ("Bearer ", "Token ", or nothing)
    prefix: str = ""
    #: oauth2: the provider's endpoints and scopes for the authorisation flow
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    scopes: tuple[str, ...] = ()

    @classmethod
    def api_key(cls, placement: ApiKeyPlacement) -> AuthConfig:
        """An API key sent where a connector's ``ApiKeyPlacement`` says."""
        if placement.query_param:
            return cls("api_key", location="query", name=placement.query_param)
        return cls("api_key", name=placement.header or "Authorization", prefix=placement.prefix)

    @property
    def credential_kind(self) -> str:
        """The connection auth kind whose stored secrets this presents."""
        return AUTHS[self.type][0]


AuthBuilder = Callable[[AuthConfig, Mapping[str, str], TokenSource | None], httpx.Auth]


def _bearer(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    return ApiKeyAuth(secrets.get("api_key", ""), ApiKeyPlacement("Authorization", "Bearer "))


def _api_key(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    if config.location == "query":
        placement = ApiKeyPlacement(header=None, prefix="", query_param=config.name)
    else:
        placement = ApiKeyPlacement(header=config.name, prefix=config.prefix)
    return ApiKeyAuth(secrets.get("api_key", ""), placement)


def _basic(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    if not secrets.get("username") or not secrets.get("password"):
        raise SourceError("the connection's username or password is missing; add them again")
    return BasicAuth(secrets["username"], secrets["password"])


def _oauth2(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    if tokens is None:
        raise SourceError("the connection has no OAuth2 token source; reconnect it")
    return OAuth2BearerAuth(tokens)


#: auth type -> (connection auth kind whose secrets it uses, builder)
AUTHS: dict[str, tuple[str, AuthBuilder]] = {
    "api_key": ("api_key", _api_key),
    "basic": ("basic", _basic),
    "bearer": ("api_key", _bearer),
    "oauth2": ("oauth2", _oauth2),
}


def build_auth(
    config: AuthConfig,
    secrets: Mapping[str, str],
    tokens: TokenSource | None = None,
    *,
    connection_id: str,
) -> httpx.Auth:
    """One connection's credentials as an ``httpx.Auth``; a missing one names the connection."""
    try:
        return AUTHS[config.type][1](config, secrets, tokens)
    except SourceError as exc:
        raise SourceError.of_connection(connection_id, str(exc)) from None
