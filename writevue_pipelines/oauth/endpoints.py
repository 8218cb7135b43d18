"""Where a connection's OAuth2 endpoints are, WriteVue's client there, and how it calls them."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import InvalidInput, SourceError
from ..registry import ConnectionInfo
from ..runtime import Runtime
from ..sources import get_source
from ..sources.auth import OAuthSpec
from ..sources.base import Source
from ..sources.http import AllowedWrite, open_client

#: a connection option that moves every endpoint to another origin (the sandbox's)
AUTH_BASE_OPTION = "auth_base_url"
#: what a provider's error code may look like before it is repeated in a message
ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


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
        return [AllowedWrite("POST", *host_and_path(url)) for url in urls if url]


def host_and_path(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.path or "/"


def endpoint_url(spec: OAuthSpec, options: Mapping[str, Any], path: str | None) -> str | None:
    """An endpoint's URL: a path joins the base; ``auth_base_url`` replaces any origin."""
    if path is None:
        return None
    override = str(options.get(AUTH_BASE_OPTION) or "").rstrip("/")
    if "://" in path:  # an endpoint on another host (Google's token endpoint, a spec file's)
        return override + urlsplit(path).path if override else path
    return (override or spec.base_url.rstrip("/")) + path


def endpoints_for(source_name: str, options: Mapping[str, Any]) -> Endpoints:
    """The endpoints a connection of this source with these options authorises against."""
    source = get_source(source_name)
    return _endpoints(source, options, _spec(source, options))


def connection_endpoints(connection: ConnectionInfo) -> Endpoints:
    """A stored connection's endpoints; options gone bad since (a REST spec file edited
    after the connection was made) are that connection's ``SourceError``."""
    source = get_source(connection.source)
    try:
        spec = _spec(source, connection.options)
    except InvalidInput as exc:
        raise SourceError.of_connection(connection.id, str(exc)) from None
    return _endpoints(source, connection.options, spec)


def _spec(source: Source, options: Mapping[str, Any]) -> OAuthSpec | None:
    return source.oauth_spec_for(options) if "oauth2" in source.auth_kinds else None


def _endpoints(source: Source, options: Mapping[str, Any], spec: OAuthSpec | None) -> Endpoints:
    if spec is None:
        raise InvalidInput(
            f"Source {source.name!r} is not connected with OAuth2; "
            "use `writevue connection add` with its API key instead."
        )
    return Endpoints(
        source=source.name,
        authorize=endpoint_url(spec, options, spec.authorize_path),
        token=endpoint_url(spec, options, spec.token_path),
        revoke=endpoint_url(spec, options, spec.revoke_path),
        scopes=tuple(spec.scopes),
        extra_authorize_params=dict(spec.extra_authorize_params),
        revoke_style=spec.revoke_style,
    )


# -- WriteVue's client at the provider ----------------------------------------------------


class NoOAuthClient(InvalidInput):
    """WriteVue's OAuth client at a source is not configured here: the message names the
    variables to set (no secret, no host), so it may be shown wherever the failure is."""


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"ClientCredentials({self.client_id!r}, <redacted>)"


def client_variables(source_name: str) -> tuple[str, str]:
    """The environment variables that hold WriteVue's client id and secret at a source."""
    prefix = "WRITEVUE_OAUTH_" + re.sub(r"[^A-Z0-9]", "_", source_name.upper())
    return f"{prefix}_CLIENT_ID", f"{prefix}_CLIENT_SECRET"


def client_credentials(source_name: str) -> ClientCredentials:
    """WriteVue's OAuth client at this source, from the environment; an error names the
    variables when it is not set."""
    id_variable, secret_variable = client_variables(source_name)
    client_id = os.environ.get(id_variable, "").strip()
    client_secret = os.environ.get(secret_variable, "").strip()
    if client_id and client_secret:
        return ClientCredentials(client_id, client_secret)
    raise NoOAuthClient(
        f"WriteVue has no OAuth client for {source_name}; set {id_variable} and "
        f"{secret_variable} to the app registered with the provider."
    )


# -- calling the authorisation server -----------------------------------------------------


def request_timeout(runtime: Runtime) -> httpx.Timeout:
    """Every call to an authorisation server: the configured timeout, 10 s to connect."""
    return httpx.Timeout(runtime.settings.http_timeout_s, connect=10.0)


def oauth_client(endpoints: Endpoints, url: str, timeout: httpx.Timeout) -> httpx.AsyncClient:
    """A client for the authorisation server at ``url``'s origin that may POST to its
    token and revocation endpoints, and nowhere else."""
    parts = urlsplit(url)
    return open_client(
        base_url=f"{parts.scheme}://{parts.netloc}",
        allow=endpoints.allowed_writes(),
        timeout=timeout,
        provider=f"oauth:{parts.netloc}",
    )


def run_blocking(coro):
    """Run a coroutine to completion from blocking code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A server handler (the connect page's callback) calls in with its loop running.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
