"""The one HTTP layer every connector uses: read-only, patient, bounded and discreet.

Behaviour is added by wrapping httpx transports, so connectors only ever call
``open_client`` and ``get_json``:

- ``ReadOnlyTransport`` refuses any request but GET and HEAD before it leaves the
  process, except an explicit allow-list of (method, host, path).
- ``RetryTransport`` retries connect errors, timeouts, 429 and 5xx with exponential
  backoff and jitter, honouring ``Retry-After``.
- ``get_json`` caps the response size and turns anything unusable into a
  ``SourceError`` that names the connection, endpoint and status, never a secret.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import SourceError

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=20)
MAX_RESPONSE_BYTES = 20 * 1024 * 1024
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "WriteVue/0.1 (read-only dashboard sync)"


class WriteRefused(SourceError):
    """A request that could change data at a provider was stopped before leaving the process."""


@dataclass(frozen=True)
class AllowedWrite:
    method: str
    host: str
    path: str


class ReadOnlyTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, allow: Iterable[AllowedWrite] = ()):
        self._inner = inner
        self._allow = frozenset((a.method.upper(), a.host.lower(), a.path) for a in allow)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.method.upper()
        if method not in ("GET", "HEAD"):
            key = (method, request.url.host.lower(), request.url.path)
            if key not in self._allow:
                raise WriteRefused(
                    f"refused {method} {request.url.host}{request.url.path}: "
                    "WriteVue only reads from sources"
                )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    sleep: Any = field(default=asyncio.sleep, repr=False)

    def backoff(self, attempt: int) -> float:
        # Full jitter: a random wait up to the exponential bound spreads out retries.
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class RetryTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, policy: RetryPolicy | None = None):
        self._inner = inner
        self.policy = policy or RetryPolicy()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            try:
                response = await self._inner.handle_async_request(request)
            except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError):
                if last:
                    raise
                await policy.sleep(policy.backoff(attempt))
                continue
            if response.status_code not in RETRY_STATUSES or last:
                return response
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            await response.aclose()
            delay = policy.backoff(attempt)
            if wait is not None:
                delay = min(max(wait, delay), policy.max_delay_s * 4)
            await policy.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._inner.aclose()


def open_client(
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    allow: Iterable[AllowedWrite] = (),
    retry: RetryPolicy | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    limits: httpx.Limits = DEFAULT_LIMITS,
) -> httpx.AsyncClient:
    """An async client for one provider; share it across a batch of connections."""
    inner = httpx.AsyncHTTPTransport(limits=limits, retries=0)
    transport = ReadOnlyTransport(RetryTransport(inner, retry), allow)
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
    )


async def get_json(
    client: httpx.AsyncClient,
    path: str,
    *,
    connection_id: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    auth: httpx.Auth | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> tuple[Any, httpx.Response]:
    """GET a JSON document; any failure is a ``SourceError`` safe to log."""
    endpoint = path.split("?", 1)[0]
    try:
        async with client.stream(
            "GET", path, params=params, headers=headers, auth=auth or httpx.USE_CLIENT_DEFAULT
        ) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise SourceError(
                    f"connection {connection_id}: {endpoint} answered {response.status_code} with "
                    f"{declared} bytes, over the {max_bytes}-byte cap",
                    connection_id=connection_id,
                    status=response.status_code,
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise SourceError(
                        f"connection {connection_id}: {endpoint} sent more than {max_bytes} bytes",
                        connection_id=connection_id,
                        status=response.status_code,
                    )
    except WriteRefused:
        raise
    except SourceError:
        raise
    except httpx.TimeoutException:
        raise SourceError(
            f"connection {connection_id}: {endpoint} timed out after retries",
            connection_id=connection_id,
        ) from None
    except httpx.HTTPError as exc:
        raise SourceError(
            f"connection {connection_id}: {endpoint} could not be reached ({type(exc).__name__})",
            connection_id=connection_id,
        ) from None
    status = response.status_code
    if status in (401, 403):
        raise SourceError(
            f"connection {connection_id}: {endpoint} refused the credentials (HTTP {status}); "
            "reconnect the source",
            connection_id=connection_id,
            status=status,
        )
    if status >= 400:
        raise SourceError(
            f"connection {connection_id}: {endpoint} answered HTTP {status}",
            connection_id=connection_id,
            status=status,
        )
    try:
        return json.loads(bytes(body)), response
    except (ValueError, UnicodeDecodeError):
        raise SourceError(
            f"connection {connection_id}: {endpoint} answered HTTP {status} "
            "with a body that is not JSON",
            connection_id=connection_id,
            status=status,
        ) from None
