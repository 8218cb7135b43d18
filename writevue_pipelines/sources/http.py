"""The one HTTP layer every connector uses: read-only, patient, bounded and discreet.

Behaviour lives in one httpx transport (``GuardedTransport``) around the HTTP/1.1 of
``http11.Http11Transport``, so connectors only ever call ``open_client`` and
``get_json``. For each request, in order:

- the read-only guard refuses any request but GET and HEAD before it leaves the
  process, except an explicit allow-list of (method, host, path);
- retries: connect errors, timeouts, 429 and 5xx are retried with exponential backoff
  and full jitter, honouring ``Retry-After`` (seconds or an HTTP date), and so are
  GitHub-style secondary rate limits (403/429 with ``Retry-After``, or a 403 whose body
  names a "secondary rate limit"). A write (an allow-listed POST) is only retried when
  the provider cannot have acted on it: a failed connect or a 429;
- each attempt first waits out its credential's rate-limit pause and then holds one of
  the provider's in-flight slots (one limit shared by every client of that provider in
  the process) until its answer has been read. ``x-ratelimit-remaining`` /
  ``x-ratelimit-reset`` are read from every answer: once a credential's budget is
  spent, its further requests wait for the reset, up to ``RateLimitPolicy.max_pause_s``;
  a longer wait fails the request with a ``SourceError`` instead of stalling a run for
  an hour;
- each exchange (the request sent, its whole answer read) has a deadline,
  ``EXCHANGE_DEADLINE_FACTOR`` times the read timeout by default: httpx's read timeout
  bounds each wait for a chunk, so a provider dripping bytes just under it could
  otherwise hold a refresh for ever.

``get_json`` caps the response size and turns anything unusable into a ``SourceError``
that names the connection, endpoint and status, never a secret.

Nothing here puts a query string, header or response body into an exception text (API
keys may travel as query parameters) and this module logs nothing; httpx's own request
log line loses its query string to ``writevue_pipelines.redaction``.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import functools
import hashlib
import http.cookiejar
import json
import random
import re
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import CredentialRejected, SourceError
from .http11 import Http11Transport

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Keep every pooled connection alive: closing the ones above a smaller keep-alive
# limit after each burst means a new TCP connection for most requests of a batch.
DEFAULT_LIMITS = httpx.Limits(max_connections=50, max_keepalive_connections=50)
#: requests in flight per provider when no client names a limit: as many as one client's
#: connection pool, so the shared limit only tightens when a provider asks for it
DEFAULT_MAX_IN_FLIGHT = DEFAULT_LIMITS.max_connections or 50
MAX_RESPONSE_BYTES = 20 * 1024 * 1024
#: the longest one exchange may take, as a multiple of the read timeout (see the module
#: docstring): 30 s reads give each exchange 120 s
EXCHANGE_DEADLINE_FACTOR = 4
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: statuses that make the layer look at an answer before handing it back
_RETRY_OR_403 = RETRY_STATUSES | {403}
#: where an answer carries its exchange's deadline to the body's reader: (event loop time,
#: seconds allowed), or (None, None) for none
_DEADLINE = "writevue.deadline"
USER_AGENT = "WriteVue/0.1 (read-only dashboard sync)"
READ_METHODS = frozenset({"GET", "HEAD"})
# A 403 body is only read to look for a secondary-rate-limit notice; it is small.
_PEEK_BYTES = 64 * 1024


class WriteRefused(SourceError):
    """A request that could change data at a provider was stopped before leaving the process."""


class RateLimited(SourceError):
    """A provider asked for a longer wait than the layer allows; the next refresh retries."""

    def __init__(self, message: str, *, wait_s: float, status: int | None = None):
        super().__init__(message, status=status)
        self.wait_s = wait_s


@dataclass(frozen=True)
class AllowedWrite:
    method: str
    host: str
    path: str


@dataclass
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    sleep: Any = field(default=asyncio.sleep, repr=False)

    def backoff(self, attempt: int) -> float:
        # Full jitter: a random wait up to the exponential bound spreads out retries.
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


@dataclass(frozen=True)
class RateLimitPolicy:
    """How the layer treats a provider's rate-limit signals."""

    #: pause once ``x-ratelimit-remaining`` is at or below this
    reserve: int = 0
    #: the longest a request waits for a reset or a ``Retry-After``; beyond it, fail
    max_pause_s: float = 120.0
    #: wait after a secondary rate limit that names no time (GitHub: at least a minute)
    secondary_wait_s: float = 60.0


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


def rate_limit_reset_at(value: str | None, *, now: float | None = None) -> float | None:
    """Epoch seconds of an ``x-ratelimit-reset``: GitHub sends epoch seconds, some
    providers send seconds from now; a value too small to be a recent epoch is the latter."""
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number < 0:
        return None
    if number < 1_000_000_000:
        return (now if now is not None else time.time()) + number
    return number


def redact_url(url: httpx.URL | str) -> str:
    """A URL safe to log or show: scheme, host and path; no user info, query or fragment."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<unparseable URL>"
    if not parsed.host:
        return parsed.path
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"


# -- per-provider concurrency and rate-limit state ---------------------------------------------


class _InFlightLimit:
    """A counting limit whose size may change; bound to one event loop."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        while self.active >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the turn this task was given to the next one
                raise
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        for _ in range(max(0, limit - self.active)):
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


# asyncio primitives belong to one event loop, so limits are kept per loop; a process
# usually runs one loop at a time, and every client of a provider on it shares one limit.
_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _InFlightLimit]] = (
    weakref.WeakKeyDictionary()
)
# Rate-limit pauses are plain deadlines, shared by every loop and thread of the process:
# (provider, credential digest) -> epoch seconds before which no request is sent.
_pauses: dict[tuple[str, str], float] = {}
_pauses_lock = threading.Lock()
# provider -> the in-flight limit a client asked for; every loop's limit follows it
_configured_limits: dict[str, int] = {}


def _credential_digest(request: httpx.Request) -> str:
    # Providers count rate limits per credential, so one tenant's spent budget must not
    # stall another's. Only a one-way digest of the header is kept, never the header.
    value = request.headers.get("Authorization")
    return hashlib.sha256(value.encode()).hexdigest()[:32] if value else ""


def pause_until(bucket: tuple[str, str], until: float) -> None:
    with _pauses_lock:
        now = time.time()
        for key in [k for k, v in _pauses.items() if v <= now]:
            del _pauses[key]
        if until > now and until > _pauses.get(bucket, 0.0):
            _pauses[bucket] = until


def paused_for(bucket: tuple[str, str]) -> float:
    """Seconds this bucket must still wait; 0 when it may send now."""
    with _pauses_lock:
        return max(0.0, _pauses.get(bucket, 0.0) - time.time())


class GuardedTransport(httpx.AsyncBaseTransport):
    """The read-only guard, retries, rate-limit pauses, the provider's in-flight limit and
    each exchange's deadline, around the connections' transport (see the module docstring)."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        provider: str,
        allow: Iterable[AllowedWrite] = (),
        retry: RetryPolicy | None = None,
        rate_limit: RateLimitPolicy | None = None,
        deadline_s: float | None = None,
    ):
        self._inner = inner
        self.provider = provider
        self._allow = frozenset((a.method.upper(), a.host.lower(), a.path) for a in allow)
        self.policy = retry or RetryPolicy()
        self.rate_limit = rate_limit or RateLimitPolicy()
        self.deadline_s = deadline_s
        # the running loop's limits, looked up once per loop rather than per request
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_limits: dict[str, _InFlightLimit] = {}

    def bucket(self, request: httpx.Request) -> tuple[str, str]:
        return (self.provider, _credential_digest(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.method.upper()
        is_read = method in READ_METHODS
        if not is_read:
            url = request.url
            if (method, url.host.lower(), url.path) not in self._allow:
                raise WriteRefused(
                    f"refused {method} {url.host}{url.path}: WriteVue only reads from sources"
                )
        policy = self.policy
        bucket = self.bucket(request)
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            try:
                response = await self._exchange(request, bucket)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                # Nothing reached the provider, so even a write may be sent again.
                if last:
                    raise
                await policy.sleep(policy.backoff(attempt))
                continue
            except (httpx.TimeoutException, httpx.RemoteProtocolError):
                # A write may have reached the provider before the answer was lost.
                if last or not is_read:
                    raise
                await policy.sleep(policy.backoff(attempt))
                continue
            if response.status_code not in _RETRY_OR_403:
                return response
            response, server_wait = await self._server_wait(request, response)
            if server_wait is None or last or (not is_read and response.status_code != 429):
                return response
            await response.aclose()
            if server_wait == 0.0:
                await policy.sleep(policy.backoff(attempt))
                continue
            wait = max(server_wait, policy.backoff(attempt))
            if wait > self.rate_limit.max_pause_s:
                raise RateLimited(
                    f"{request.url.host} asked WriteVue to wait {wait:.0f} s, longer than "
                    f"the {self.rate_limit.max_pause_s:.0f} s it waits",
                    wait_s=wait,
                    status=response.status_code,
                )
            # Every request of this credential waits, not just this one.
            pause_until(bucket, time.time() + wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, request: httpx.Request, bucket: tuple[str, str]) -> httpx.Response:
        """One attempt: wait out the credential's pause, take a provider slot (held until
        the answer's body is closed), send within the exchange's deadline."""
        if _pauses:  # no lock needed to see that nobody is paused at all
            wait = paused_for(bucket)
            if wait > 0:
                if wait > self.rate_limit.max_pause_s:
                    raise RateLimited(
                        f"{request.url.host} rate limit is spent for another {wait:.0f} s, "
                        f"longer than the {self.rate_limit.max_pause_s:.0f} s WriteVue waits",
                        wait_s=wait,
                    )
                # One sleep, not a loop: a later signal that extends the pause is seen by
                # the provider answering 429 again, which the retries handle.
                await self.policy.sleep(wait)
        limit = self._limit()
        await limit.acquire()
        try:
            if self.deadline_s is None:
                deadline = None
                response = await self._inner.handle_async_request(request)
            else:
                deadline = asyncio.get_running_loop().time() + self.deadline_s
                within = asyncio.timeout_at(deadline)
                try:
                    async with within:
                        response = await self._inner.handle_async_request(request)
                except TimeoutError:
                    if not within.expired():
                        raise
                    # Retried like any other timeout; the message names no URL.
                    raise httpx.ReadTimeout(
                        f"no answer within the {self.deadline_s:g} s deadline", request=request
                    ) from None
        except BaseException:
            limit.release()
            raise
        self._observe(bucket, response)
        response.extensions[_DEADLINE] = (deadline, self.deadline_s)
        # The slot is held until the body has been read, so the cap counts whole exchanges.
        response.stream = _ReleaseOnClose(response.stream, limit.release)
        return response

    def _limit(self) -> _InFlightLimit:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._loop_limits = _limits.setdefault(loop, {})
        size = _configured_limits.get(self.provider, DEFAULT_MAX_IN_FLIGHT)
        limit = self._loop_limits.get(self.provider)
        if limit is None:
            limit = self._loop_limits[self.provider] = _InFlightLimit(size)
        elif limit.limit != size:
            limit.resize(size)
        return limit

    def _observe(self, bucket: tuple[str, str], response: httpx.Response) -> None:
        remaining = response.headers.get("x-ratelimit-remaining", "").strip()
        if not remaining.lstrip("-").isdigit() or int(remaining) > self.rate_limit.reserve:
            return
        reset_at = rate_limit_reset_at(response.headers.get("x-ratelimit-reset"))
        if reset_at is not None:
            pause_until(bucket, reset_at)

    async def _server_wait(
        self, request: httpx.Request, response: httpx.Response
    ) -> tuple[httpx.Response, float | None]:
        """(response, seconds the provider asks for): 0 means plain backoff, None no retry.

        A spent primary budget (remaining 0) waits in ``_exchange``, which ``_observe``
        has already told the reset; the retry then only backs off briefly.
        """
        status = response.status_code
        headers = response.headers
        retry_after = retry_after_seconds(headers.get("Retry-After"))
        if retry_after is not None:
            return response, retry_after
        spent = headers.get("x-ratelimit-remaining", "").strip() == "0"
        if status == 403:
            if spent and headers.get("x-ratelimit-reset"):
                return response, 0.0
            # Its body is read within what is left of the exchange's deadline.
            deadline, deadline_s = response.extensions.get(_DEADLINE, (None, None))
            within = asyncio.timeout_at(deadline)
            try:
                async with within:
                    response, body = await _peek(request, response)
            except TimeoutError:
                if not within.expired():
                    raise
                await response.aclose()
                raise httpx.ReadTimeout(
                    f"no answer within the {deadline_s:g} s deadline", request=request
                ) from None
            if b"secondary rate limit" in body.lower():
                return response, self.rate_limit.secondary_wait_s
            return response, None
        return response, 0.0

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ReleaseOnClose(httpx.AsyncByteStream):
    def __init__(self, stream: Any, release: Callable[[], None]):
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def __aiter__(self):
        # The wrapped stream's own iterator: no extra step per chunk.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        try:
            if hasattr(self._stream, "aclose"):
                await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


async def _peek(request: httpx.Request, response: httpx.Response) -> tuple[httpx.Response, bytes]:
    """Read a (small) error body and hand back an equivalent, still unread response."""
    raw = bytearray()
    async for chunk in response.aiter_raw():
        raw.extend(chunk)
        if len(raw) > _PEEK_BYTES:
            break
    await response.aclose()
    again = httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(bytes(raw)),
        extensions=response.extensions,
        request=request,
    )
    try:
        # A throwaway copy decodes any Content-Encoding for the check.
        text = httpx.Response(200, headers=response.headers, content=bytes(raw)).content
    except httpx.DecodingError:
        text = b""
    return again, text


# -- the client ------------------------------------------------------------------------------


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client of the process (httpx's defaults).

    Loading the CA bundle costs ~17 ms of CPU, and a batch opens dozens of clients.
    """
    return httpx.create_ssl_context()


def _transport(limits: httpx.Limits) -> httpx.AsyncBaseTransport:
    """The connections under a client: HTTP/1.1 spoken by ``http11.Http11Transport``."""
    return Http11Transport(ssl_context=shared_ssl_context(), limits=limits)


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing.

    A client is shared by many tenants' connections: a cookie one provider account set
    must never travel with another tenant's request, and sources need no cookies.
    """

    def extract_cookies(self, response, request) -> None:
        return None

    def set_cookie(self, cookie) -> None:
        return None


class _Cookieless(httpx.Cookies):
    """The client's cookies: the jar that keeps nothing, not even asked (httpx would build
    a ``urllib`` request for every answer only for the jar to drop its cookies)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class SourceClient(httpx.AsyncClient):
    """The async client ``open_client`` makes: an ``httpx.AsyncClient`` that keeps no cookie."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._cookies = _Cookieless(_NoCookies())

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return None  # nothing is kept, whatever is set


def exchange_deadline_s(timeout: httpx.Timeout) -> float | None:
    """The default deadline of one exchange for a client with this timeout (None: none)."""
    if timeout.read is None:
        return None
    return timeout.read * EXCHANGE_DEADLINE_FACTOR


_FROM_TIMEOUT: Any = object()


def open_client(
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    allow: Iterable[AllowedWrite] = (),
    retry: RetryPolicy | None = None,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    limits: httpx.Limits = DEFAULT_LIMITS,
    provider: str | None = None,
    max_in_flight: int | None = None,
    rate_limit: RateLimitPolicy | None = None,
    deadline_s: float | None = _FROM_TIMEOUT,
) -> httpx.AsyncClient:
    """An async client for one provider; share it across a batch of connections.

    ``provider`` names the concurrency limit and rate-limit state this client shares
    with every other client of the same provider (default: the base URL's host and
    port); ``max_in_flight`` sets that limit (default ``DEFAULT_MAX_IN_FLIGHT``).
    ``deadline_s`` bounds each exchange, request sent and answer read (default
    ``exchange_deadline_s(timeout)``; None for no deadline).
    """
    if provider is None:
        parsed = httpx.URL(base_url)
        provider = f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host
    if max_in_flight is not None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        # The last client to name a provider's limit sets it for every client of it.
        _configured_limits[provider] = max_in_flight
    if deadline_s is _FROM_TIMEOUT:
        deadline_s = exchange_deadline_s(timeout)
    inner = _transport(limits)
    transport = GuardedTransport(
        inner,
        provider=provider,
        allow=allow,
        retry=retry,
        rate_limit=rate_limit,
        deadline_s=deadline_s,
    )
    return SourceClient(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
    )


#: a request path that is the same whether httpx or ``_request_url`` joins it to the base
#: URL: unreserved characters only, one leading slash
_PLAIN_PATH = re.compile(r"/(?:[A-Za-z0-9._~-]+/?)*")


def _request_url(
    client: httpx.AsyncClient, path: str, params: dict[str, Any] | None
) -> tuple[httpx.URL | str, dict[str, Any] | None]:
    """(url, params) to send: a plain path and its parameters joined to the client's base
    URL in one parse, which is what httpx makes of them in three; anything else as given."""
    if params is None or client.params or not _PLAIN_PATH.fullmatch(path):
        return path, params
    base = client.base_url
    if not base.is_absolute_url:
        return path, params
    root = str(base)  # a base URL without a path prints without its "/"
    if not root.endswith("/"):
        root += "/"
    return httpx.URL(root + path[1:], params=params), None


def endpoint_of(path: str) -> str:
    """What an error may name of a request target: its path (and host), never its query."""
    return redact_url(path)


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
    return await request_json(
        client,
        "GET",
        path,
        connection_id=connection_id,
        params=params,
        headers=headers,
        auth=auth,
        max_bytes=max_bytes,
    )


ErrorForStatus = Callable[[int, Any], "SourceError | None"]


async def request_json(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    connection_id: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    auth: httpx.Auth | None = None,
    json_body: Any = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
    endpoint: str | None = None,
    error_for_status: ErrorForStatus | None = None,
) -> tuple[Any, httpx.Response]:
    """One request answered with JSON; any failure is a ``SourceError`` safe to log.

    A method other than GET must be allow-listed in the client (the read-only guard
    refuses it otherwise). ``error_for_status(status, document)`` lets a connector turn
    a provider's error document into its own sentence for statuses of 400 and above.
    """

    # What errors name (path and host, never the query), worked out only for an error.
    def named() -> str:
        return endpoint or endpoint_of(path)

    url, params = _request_url(client, path, params)
    try:
        async with client.stream(
            method,
            url,
            params=params,
            headers=headers,
            json=json_body,
            auth=auth or httpx.USE_CLIENT_DEFAULT,
        ) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise SourceError.of_connection(
                    connection_id,
                    f"{named()} answered {response.status_code} with {declared} bytes, "
                    f"over the {max_bytes}-byte cap",
                    status=response.status_code,
                )
            # The rest of the exchange's deadline, set when the request was sent.
            deadline, deadline_s = response.extensions.get(_DEADLINE, (None, None))
            within = asyncio.timeout_at(deadline)
            body = bytearray()
            try:
                async with within:
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise SourceError.of_connection(
                                connection_id,
                                f"{named()} sent more than {max_bytes} bytes",
                                status=response.status_code,
                            )
            except TimeoutError:
                if not within.expired():
                    raise
                # Not retried, like a read that timed out: the next refresh tries again.
                raise SourceError.of_connection(
                    connection_id,
                    f"{named()} did not finish answering within {deadline_s:g} s",
                    status=response.status_code,
                ) from None
    except WriteRefused:
        raise
    except RateLimited as exc:
        raise SourceError.of_connection(
            connection_id,
            f"{named()} is rate limited ({exc}); the next refresh carries on",
            status=exc.status or 429,
        ) from None
    except SourceError as exc:
        if exc.connection_id is None:
            # Raised below this call (an auth flow, say) without naming the connection.
            raise type(exc).of_connection(
                connection_id, f"{named()}: {exc}", status=exc.status
            ) from None
        raise
    except httpx.TimeoutException:
        raise SourceError.of_connection(
            connection_id, f"{named()} timed out after retries"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, UnicodeError) as exc:
        # Only the type: httpx's messages may quote the URL with its query string.
        raise SourceError.of_connection(
            connection_id, f"{named()} could not be reached ({type(exc).__name__})"
        ) from None
    status = response.status_code
    if status < 400:
        try:
            return json.loads(body), response
        # RecursionError: nesting deeper than the parser descends ("[[[[…"), which no API
        # sends
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise SourceError.of_connection(
                connection_id,
                f"{named()} answered HTTP {status} with a body that is not JSON",
                status=status,
            ) from None
    if error_for_status is not None:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            document = None
        custom = error_for_status(status, document)
        if custom is not None:
            raise custom
    # A 403 that asked for a wait (a secondary rate limit, retried until given up) is
    # not a refused credential: the next refresh carries on without the client.
    if status == 429 or (status == 403 and _asked_to_wait(response, body)):
        raise SourceError.of_connection(
            connection_id,
            f"{named()} is rate limited (HTTP {status}) after retries; the next refresh carries on",
            status=status,
        )
    if status in (401, 403):
        raise CredentialRejected.of_connection(
            connection_id,
            f"{named()} refused the credentials (HTTP {status}); reconnect the source",
            status=status,
        )
    raise SourceError.of_connection(
        connection_id, f"{named()} answered HTTP {status}", status=status
    )


def _asked_to_wait(response: httpx.Response, body: bytearray) -> bool:
    """Whether an error answer says it is a rate limit: a spent budget, a ``Retry-After``
    or the words in its body."""
    spent = response.headers.get("x-ratelimit-remaining", "").strip() == "0"
    return spent or "Retry-After" in response.headers or b"rate limit" in body.lower()
