"""HTTP/1.1 for httpx: the connections under every source's client.

httpx sends through httpcore by default, whose pure-Python HTTP/1.1 (h11, anyio) cost
more CPU per request than everything else a refresh does with the page: about 0.3 ms of
a ~0.5 ms request here. This transport speaks HTTP/1.1 on asyncio's own transports with
llhttp (``httptools``, the C parser Node.js uses) reading the answers, and keeps what
httpx's transport promises the client above it:

- a pool per transport: at most ``max_connections`` open, at most
  ``max_keepalive_connections`` idle, none idle past ``keepalive_expiry``; a request
  waits for a free connection up to its ``pool`` timeout (``httpx.PoolTimeout``);
- timeouts from the request (``connect``, ``read`` for each wait on the provider,
  ``write``, ``pool``), raised as httpx's timeout exceptions;
- errors as httpx's: ``ConnectError`` (TLS verification included), ``ReadError``,
  ``WriteError``, ``RemoteProtocolError`` (a malformed answer, a connection the provider
  closed mid-answer), ``LocalProtocolError`` (a header or target that would split the
  request), ``UnsupportedProtocol``; none names the URL;
- answers streamed: the body is read as the caller iterates, and the provider's socket
  is not read further while more than ``_HIGH_WATER`` bytes wait unread, so a caller that
  stops at a size cap is not flooded first;
- a connection is reused only when its answer was read to the end, both sides keep it
  alive, and nothing arrived on it since (a provider closing an idle connection is seen
  at once, by asyncio, not when the next request fails on it).

Answer heads are capped (``MAX_HEAD_BYTES``); bodies are the caller's to cap
(``http.get_json`` does). Proxies, HTTP/2 and upgrades are not spoken here: sources use
none of them.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx

#: the most an answer's status line and headers may take (h11, httpcore's parser, allows
#: 100 KiB too)
MAX_HEAD_BYTES = 100 * 1024
#: unread body bytes past which the socket is not read until the caller catches up
_HIGH_WATER = 256 * 1024
#: what each unread piece of a body is counted as besides its bytes (a piece costs memory of
#: its own, so a body sent in tiny chunks reaches the high-water mark as soon)
_PIECE_COST = 64
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: what a method or header name may be (RFC 9110's token)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: what would end a request target early
_SPLITS = re.compile(rb"[\r\n\x00]")
#: what a header value may not hold: control characters but the tab (as h11 refuses them)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request written, its answer parsed as it arrives."""

    def __init__(self, origin: Origin):
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # Lines ended by a bare LF, as h11 reads them (no framing hangs on it).
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        #: set by the answer's reader while it waits, woken by whatever arrives
        self.waiter: asyncio.Future | None = None
        self.idle_since = 0.0
        self.reusable = True
        self.closed = False
        self.error: Exception | None = None
        #: set while asyncio asks the writer to wait (its buffer is full)
        self.drained: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.expecting = False  # a request was sent and its answer is not complete
        self.head_bytes = 0
        #: bytes received since the body last grew: framing, chunk extensions, trailers
        self.unread_framing = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = b""
        self.head_done = False
        self.complete = False
        self.framed = False  # the answer says how long its body is (length or chunks)
        self.skip_body = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False

    # -- asyncio's side ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.complete:
            # More than the answer asked for: the connection is not trusted again.
            self.close()
            return
        if not self.expecting:
            # Nothing was asked: the provider is not speaking HTTP/1.1 as agreed.
            self._fail(httpx.RemoteProtocolError("the provider sent data nobody asked for"))
            return
        if not self.head_done:
            self.head_bytes += len(data)
        buffered = self.buffered
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the provider switched protocols"))
            return
        except httptools.HttpParserError as exc:
            if self.error is None:
                self._fail(httpx.RemoteProtocolError(f"malformed answer ({type(exc).__name__})"))
            else:
                self._fail(self.error)
            return
        if not self.head_done and self.head_bytes > MAX_HEAD_BYTES:
            self._fail(httpx.RemoteProtocolError(f"answer head over {MAX_HEAD_BYTES} bytes"))
            return
        if self.head_done and not self.complete:
            # Endless trailers or chunk extensions: bytes that never become body.
            self.unread_framing = 0 if self.buffered > buffered else self.unread_framing + len(data)
            if self.unread_framing > MAX_HEAD_BYTES:
                self._fail(httpx.RemoteProtocolError(f"answer framing over {MAX_HEAD_BYTES} bytes"))
                return
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._ended()
        return None  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        self.resume_writing()

    def _ended(self, exc: Exception | None = None) -> None:
        self.closed = True
        self.reusable = False
        if self.expecting and not self.complete and self.error is None:
            if self.head_done and not self.framed and exc is None:
                # An answer without a length ends when its connection does (cleanly).
                self.complete = True
            elif exc is not None:
                self.error = httpx.ReadError(f"connection lost ({type(exc).__name__})")
            else:
                self.error = httpx.RemoteProtocolError(
                    "the provider closed the connection without a complete answer"
                )
        self._wake()

    # -- llhttp's callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.reusable = False  # a second answer to one request

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # trailers are not kept (httpx has no place for them)
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.headers, self.reason = [], b""
            return
        self.status = status
        self.head_done = True
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (
                lower == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self.framed = True
        if self.skip_body or status in (204, 304):
            self.framed = True

    def on_body(self, chunk: bytes) -> None:
        if self.complete or self.skip_body:
            return  # past the answer, or a body sent (wrongly) with an answer to HEAD
        self.body.append(chunk)
        self.buffered += len(chunk) + _PIECE_COST

    def on_message_complete(self) -> None:
        if not self.head_done or self.complete:
            return  # the end of an interim answer, or of one nobody asked for
        self.complete = True
        if not self.parser.should_keep_alive():
            self.reusable = False

    # -- the transport's side ---------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def close(self) -> None:
        if self.expecting and not self.complete and self.error is None:
            # Closed by this side mid-answer: not the end an answer without length has.
            self.error = httpx.ReadError("connection closed")
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            try:
                self.transport.close()
            except RuntimeError:
                pass  # its event loop is closed, and with it the socket

    async def wait(self, timeout: float | None, what: str) -> None:
        """Until something arrives (or the connection ends), at most ``timeout``."""
        if self.error is not None or self.closed:
            return
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        try:
            if timeout is None:
                await waiter
            else:
                handle = loop.call_later(timeout, _expire, waiter)
                try:
                    await waiter
                finally:
                    handle.cancel()
        finally:
            self.waiter = None
        if waiter.result() is _EXPIRED:
            raise httpx.ReadTimeout(f"no answer within {timeout:g} s ({what})")

    def take_body(self) -> bytes:
        chunk = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


_EXPIRED = object()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(_EXPIRED)


class _Body(httpx.AsyncByteStream):
    """An answer's body, read from its connection as the caller iterates; the connection
    goes back to the pool once the body has been read to its end."""

    def __init__(self, pool: Http11Transport, connection: _Connection, read_timeout: float | None):
        self._pool = pool
        self._connection: _Connection | None = connection
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        try:
            while True:
                if connection.body:
                    yield connection.take_body()
                    continue
                if connection.complete:
                    break  # whole, whatever came after it (that connection is not reused)
                connection.raise_error()
                if connection.closed:
                    raise httpx.ReadError("connection closed")
                await connection.wait(self._read_timeout, "reading the body")
        except BaseException:
            self._discard()
            raise
        self._connection = None
        self._pool._release(connection)

    async def aclose(self) -> None:
        self._discard()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Not read to its end: the rest would be taken for the next answer.
            connection.close()
            self._pool._release(connection)


class Http11Transport(httpx.AsyncBaseTransport):
    """httpx's transport interface over pooled HTTP/1.1 connections (module docstring)."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits):
        self._ssl_context = ssl_context
        self._max_connections = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._keepalive_expiry = limits.keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._slot_waiters: collections.deque[asyncio.Future] = collections.deque()
        #: connections whose exchange is under way (closed with the transport)
        self._active: set[_Connection] = set()
        self._swept = time.monotonic()
        self._closed = False

    # -- the pool ---------------------------------------------------------------------------

    async def _acquire(self, origin: Origin, timeouts: dict[str, Any]) -> _Connection:
        """An idle connection to ``origin``, or a new one once there is room for it."""
        loop = asyncio.get_running_loop()
        timeout = timeouts.get("pool")
        deadline = None if timeout is None else loop.time() + timeout
        now = time.monotonic()
        if now - self._swept > 1.0:
            self._sweep(now)
        while True:
            if self._closed:
                raise RuntimeError("the transport is closed")
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                self._idle_count -= 1
                if self._fresh(connection):
                    self._active.add(connection)
                    return connection
                self._drop(connection)
            limit = self._max_connections
            if limit is None or self._open < limit:
                self._open += 1
                try:
                    connection = await self._connect(origin, timeouts.get("connect"))
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
                if self._closed:  # closed while connecting
                    connection.close()
                    self._open -= 1
                    raise RuntimeError("the transport is closed")
                self._active.add(connection)
                return connection
            if self._idle_count:
                self._evict_one()  # an idle connection to another provider makes room
                continue
            waiter = loop.create_future()
            self._slot_waiters.append(waiter)
            within = asyncio.timeout_at(deadline)
            try:
                async with within:
                    await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, but leaving: the turn goes to the next
                else:
                    waiter.cancel()  # _wake_one passes over it
                if within.expired():
                    raise httpx.PoolTimeout(f"no free connection within {timeout:g} s") from None
                raise

    def _fresh(self, connection: _Connection) -> bool:
        if connection.closed or not connection.reusable:
            return False
        if connection.loop is not asyncio.get_running_loop():
            return False  # made in an event loop that is gone (a client used across runs)
        expiry = self._keepalive_expiry
        return expiry is None or time.monotonic() - connection.idle_since < expiry

    def _sweep(self, now: float) -> None:
        """Close the idle connections kept past ``keepalive_expiry``."""
        self._swept = now
        for origin in list(self._idle):
            connections = self._idle[origin]
            kept = [c for c in connections if self._fresh(c)]
            for connection in connections:
                if connection not in kept:
                    self._idle_count -= 1
                    self._drop(connection)
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]

    def _evict_one(self) -> None:
        for origin, connections in self._idle.items():
            if connections:
                # The longest idle: the list's first.
                self._drop(connections.pop(0))
                self._idle_count -= 1
                if not connections:
                    del self._idle[origin]
                return

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: _Connection) -> None:
        """A connection whose exchange is over: kept idle if it can be reused, else closed."""
        self._active.discard(connection)
        connection.expecting = False
        if (
            self._closed
            or not connection.reusable
            or connection.closed
            or not connection.complete
            or connection.error is not None
            or (self._max_idle is not None and self._idle_count >= self._max_idle)
        ):
            self._drop(connection)
            return
        connection._reset()
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._idle_count += 1
        if self._slot_waiters:
            # Someone waits for room for another provider: this idle one can give it.
            self._wake_one()

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = self._ssl_context if scheme == "https" else None
        loop = asyncio.get_running_loop()
        within = asyncio.timeout(timeout)
        try:
            async with within:
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                    # Each of a host's addresses tried 250 ms after the one before, as
                    # anyio (httpcore's) did: an address that drops packets does not cost
                    # the whole connect timeout while the next one would answer.
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError as exc:
            if within.expired():
                raise httpx.ConnectTimeout(f"no connection within {timeout:g} s") from None
            raise httpx.ConnectTimeout(f"no connection ({_reason(exc)})") from None  # the OS's
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS failed ({exc.reason or type(exc).__name__})") from None
        except OSError as exc:
            raise httpx.ConnectError(f"could not connect ({_reason(exc)})") from None
        return connection

    # -- an exchange ----------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"{scheme!r} is not spoken here")
        host = url.raw_host.decode("ascii")  # IDNA-encoded by httpx
        if not host:
            raise httpx.UnsupportedProtocol("the request has no host")
        origin = (scheme, host, url.port or _DEFAULT_PORTS[scheme])
        timeouts = request.extensions.get("timeout", {})
        head = _head(request)
        connection = await self._acquire(origin, timeouts)
        read_timeout = timeouts.get("read")
        try:
            connection.expecting = True
            connection.skip_body = request.method == "HEAD"
            await self._send(connection, request, head, timeouts.get("write"))
            while not connection.head_done:
                connection.raise_error()
                if connection.closed:
                    raise httpx.RemoteProtocolError(
                        "the provider closed the connection without answering"
                    )
                await connection.wait(read_timeout, "waiting for the answer")
            if connection.skip_body:
                # llhttp cannot be told an answer to HEAD has no body; it is not reused.
                connection.complete = True
                connection.reusable = False
            if request.headers.get("Connection", "").lower() == "close":
                connection.reusable = False  # as the request said
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Body(self, connection, read_timeout),
            extensions={
                "http_version": b"HTTP/" + connection.parser.get_http_version().encode(),
                "reason_phrase": connection.reason,
            },
        )

    async def _send(
        self, connection: _Connection, request: httpx.Request, head: bytes, timeout: float | None
    ) -> None:
        transport = connection.transport
        if transport is None or connection.closed:
            raise httpx.WriteError("connection closed")
        stream = request.stream
        body = getattr(stream, "_stream", None) if isinstance(stream, httpx.ByteStream) else None
        chunked = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
        if isinstance(body, bytes) and not chunked:
            transport.write(head + body if body else head)  # a GET: one write, no wait
        else:
            try:
                async with asyncio.timeout(timeout):
                    transport.write(head)
                    async for chunk in stream:  # type: ignore[union-attr]
                        if chunk:
                            if chunked:
                                chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                            transport.write(chunk)
                            await self._drained(connection)
                    if chunked:
                        transport.write(b"0\r\n\r\n")
            except TimeoutError:
                raise httpx.WriteTimeout(f"request not sent within {timeout:g} s") from None

    @staticmethod
    async def _drained(connection: _Connection) -> None:
        if connection.drained is not None:
            await connection.drained
        if connection.closed and not connection.head_done:
            connection.raise_error()
            raise httpx.WriteError("connection closed")

    async def aclose(self) -> None:
        """Close every connection, idle or answering; whoever waits for one gets an error."""
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
                self._open -= 1
        self._idle.clear()
        self._idle_count = 0
        for connection in list(self._active):
            connection.close()  # its reader sees it closed, and releases it
            connection._wake()
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # to find the transport closed


def _reason(exc: OSError) -> str:
    """An OS error in words that name no address (its own text may quote one)."""
    if isinstance(exc, socket.gaierror):
        return "the host name did not resolve"
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return type(exc).__name__


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, refused if any would end early or is no token."""
    method = request.method.encode("ascii", "replace")
    target = request.url.raw_path
    raw = request.headers.raw
    if (
        not _TOKEN.fullmatch(method)
        or _SPLITS.search(target)
        or b" " in target
        or any(not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value) for name, value in raw)
    ):
        raise httpx.LocalProtocolError("a request method, target or header would split it")
    headers = request.headers
    if "Transfer-Encoding" in headers and "Content-Length" in headers:
        raise httpx.LocalProtocolError("a request with a length and chunks")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in raw:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
