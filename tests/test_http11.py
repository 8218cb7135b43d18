"""The HTTP/1.1 every source's client speaks (``sources/http11.py``), against real
loopback servers that answer as providers do and as broken or hostile ones might: answers
framed every way HTTP/1.1 allows, connections kept or closed, heads too large, bodies too
fast, servers that hang; and requests that would split a header."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
from collections.abc import Awaitable, Callable

import httpx
import pytest

from writevue_pipelines.sources import http as layer
from writevue_pipelines.sources.http11 import MAX_HEAD_BYTES, Http11Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback server running ``handler`` for each connection; counts connections and
    requests, and how many connections were open at once."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.bodies: list[bytes] = []
        self.open = 0
        self.most_open = 0
        self.sent = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head (its body read by Content-Length or chunks); None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        self.requests.append(head)
        lines = head.decode("latin-1").lower().split("\r\n")
        length = next((int(x.split(":")[1]) for x in lines if x.startswith("content-length:")), 0)
        if any(x.startswith("transfer-encoding:") and "chunked" in x for x in lines):
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                body += (await reader.readexactly(size + 2))[:-2]
                if size == 0:
                    break
        else:
            body = await reader.readexactly(length)
        self.bodies.append(body)
        return head

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def answer_each(reader, writer, server, answer=ok()) -> None:
    """Keep the connection, answer every request with ``answer``."""
    while await server.read_request(reader) is not None:
        writer.write(answer)
        await writer.drain()


def client(url: str, **limits) -> httpx.AsyncClient:
    transport = Http11Transport(
        ssl_context=layer.shared_ssl_context(),
        limits=httpx.Limits(**{"max_connections": 10, "max_keepalive_connections": 10, **limits}),
    )
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=5)


def run(handler: Handler, scenario: Callable[[httpx.AsyncClient], Awaitable], **limits):
    """(scenario's result, server) with the scenario's client against a server."""

    async def go():
        server = Server(handler)
        async with server as url, client(url, **limits) as http:
            result = await scenario(http)
            await asyncio.sleep(0.05)
            return result, server

    return asyncio.run(go())


def test_every_source_client_speaks_through_it():
    source_client = layer.open_client(base_url="http://127.0.0.1:9")
    assert isinstance(source_client._transport._inner, Http11Transport)
    asyncio.run(source_client.aclose())


def test_a_kept_alive_connection_carries_every_request():
    async def three(http):
        return [(await http.get("/x")).json() for _ in range(3)]

    bodies, server = run(answer_each, three)
    assert bodies == [{"ok": True}] * 3
    assert server.connections == 1 and len(server.requests) == 3
    assert server.requests[0].startswith(b"GET /x HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in server.requests[0].lower()


def test_answers_framed_by_chunks_compressed_or_ended_by_closing_are_read_whole():
    document = {"data": list(range(2000))}
    raw = json.dumps(document).encode()
    packed = gzip.compress(raw)

    async def chunked(reader, writer, server):
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(raw), 1000):
                piece = raw[start : start + 1000]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    async def gzipped(reader, writer, server):
        await answer_each(reader, writer, server, ok(packed, b"Content-Encoding: gzip\r\n"))

    async def until_close(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for start in range(0, len(raw), 4000):
            writer.write(raw[start : start + 4000])
            await writer.drain()

    async def twice(http):
        return [(await http.get("/x")).json() for _ in range(2)]

    for handler, connections in ((chunked, 1), (gzipped, 1), (until_close, 2)):
        bodies, server = run(handler, twice)
        assert bodies == [document, document], handler.__name__
        assert server.connections == connections, handler.__name__


def test_a_connection_the_provider_says_it_closes_is_not_reused():
    async def closing(reader, writer, server):
        await server.read_request(reader)
        writer.write(ok(extra=b"Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.5)  # still open: the client must not wait for the close

    async def two(http):
        return [(await http.get("/x")).status_code for _ in range(2)]

    statuses, server = run(closing, two)
    assert statuses == [200, 200] and server.connections == 2


def test_an_answer_cut_short_is_an_error_and_its_connection_is_dropped():
    async def short(reader, writer, server):
        await server.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok"')
        await writer.drain()

    async def scenario(http):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/x")
        return http._transport._open

    still_open, _ = run(short, scenario)
    assert still_open == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd" + b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd" + b"garbage!!\r\n\r\n",
    ],
    ids=["bad-status", "not-http", "two-lengths", "unasked-answer", "garbage-after"],
)
def test_a_malformed_answer_is_a_protocol_error_never_reused(answer):
    async def bad(reader, writer, server):
        while await server.read_request(reader) is not None:
            writer.write(answer)
            await writer.drain()

    async def scenario(http):
        outcomes = []
        for _ in range(2):
            try:
                response = await http.get("/x")
                outcomes.append(response.content)
            except httpx.RemoteProtocolError:
                outcomes.append("protocol error")
        return outcomes

    outcomes, server = run(bad, scenario)
    if b"Content-Length: 4\r\n" in answer:
        # The first answer is whole; what followed it makes the connection untrusted.
        assert outcomes == [b"abcd", b"abcd"] and server.connections == 2
    else:
        assert outcomes == ["protocol error"] * 2 and server.connections == 2


def test_an_endless_head_is_refused_at_the_cap():
    async def endless(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(MAX_HEAD_BYTES // 1000 * 4):
            writer.write(b"X-Filler: " + b"a" * 990 + b"\r\n")
            await writer.drain()

    async def scenario(http):
        with pytest.raises(httpx.RemoteProtocolError, match="head over"):
            await http.get("/x")

    run(endless, scenario)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Key": "abc\r\nX-Injected: 1"},
        {"X-Key": "abc\nX-Injected: 1"},
        {"X-Key": "abc\x00"},
        {"X-Key": "abc\x1b[2J"},
        {"Bad Name": "x"},
    ],
)
def test_a_header_that_would_split_the_request_is_refused_before_sending(headers):
    async def scenario(http):
        with pytest.raises(httpx.LocalProtocolError):
            await http.get("/x", headers=headers)

    _, server = run(answer_each, scenario)
    assert server.requests == []


def test_a_provider_that_never_answers_times_out_and_its_connection_is_dropped():
    async def silent(reader, writer, server):
        await server.read_request(reader)
        await asyncio.sleep(5)

    async def scenario(http):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/x", timeout=httpx.Timeout(5, read=0.2))
        return loop.time() - started, http._transport._open

    (took, still_open), _ = run(silent, scenario)
    assert took < 2 and still_open == 0


def stalling(answer_begun: bytes) -> Handler:
    """A server that begins an answer (``answer_begun``) and then sends nothing more."""

    async def stalls(reader, writer, server):
        await server.read_request(reader)
        writer.write(answer_begun)
        await writer.drain()
        await asyncio.sleep(5)

    return stalls


def test_a_body_that_stalls_times_out():
    stalls = stalling(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async def scenario(http):
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/x", timeout=httpx.Timeout(5, read=0.2))

    run(stalls, scenario)


def test_no_more_connections_than_the_limit_and_a_pool_timeout():
    async def slow(reader, writer, server):
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.1)
            writer.write(ok())
            await writer.drain()

    async def many(http):
        responses = await asyncio.gather(*(http.get("/x") for _ in range(8)))
        return [r.status_code for r in responses]

    statuses, server = run(slow, many, max_connections=2)
    assert statuses == [200] * 8
    assert server.most_open == 2 and len(server.requests) == 8

    async def starved(http):
        first = asyncio.create_task(http.get("/x"))
        await asyncio.sleep(0.02)
        with pytest.raises(httpx.PoolTimeout):
            await http.get("/x", timeout=httpx.Timeout(5, pool=0.05))
        return (await first).status_code

    status, _ = run(slow, starved, max_connections=1)
    assert status == 200


def test_a_body_left_unread_drops_its_connection():
    async def scenario(http):
        async with http.stream("GET", "/x") as response:
            async for _ in response.aiter_raw():
                break  # read no further
        await http.get("/x")
        return http._transport._open

    big = ok(b"x" * 2_000_000)
    still_open, server = run(lambda r, w, s: answer_each(r, w, s, big), scenario)
    assert server.connections == 2 and still_open == 1


def test_a_fast_provider_cannot_fill_memory_past_what_the_reader_asked_for():
    total = 256 * 1024 * 1024

    async def flood(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * (1024 * 1024)
        while server.sent < total:
            writer.write(block)
            await writer.drain()
            server.sent += len(block)

    async def scenario(http):
        async with http.stream("GET", "/x") as response:
            async for _ in response.aiter_raw():
                await asyncio.sleep(0.5)  # a slow reader: the provider must wait
                break

    _, server = run(flood, scenario)
    # Only what the kernel's socket buffers and the high-water mark hold was sent.
    assert server.sent < 32 * 1024 * 1024


def test_head_interim_and_empty_answers():
    async def varied(reader, writer, server):
        while (head := await server.read_request(reader)) is not None:
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"/interim" in head:
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"[1]"))
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async def scenario(http):
        head = await asyncio.wait_for(http.head("/x"), 2)
        interim = await http.get("/interim")
        empty = await http.get("/empty")
        again = await http.get("/empty")
        return head, interim, empty, again

    (head, interim, empty, again), server = run(varied, scenario)
    assert (head.status_code, head.content) == (200, b"")
    assert (interim.status_code, interim.json()) == (200, [1])
    assert "link" not in interim.headers
    assert (empty.status_code, empty.content, again.status_code) == (204, b"", 204)
    # HEAD's connection is not reused (its answer's length is not its body's); the rest are.
    assert server.connections == 2


def test_request_bodies_are_sent_whole_or_in_chunks():
    async def scenario(http):
        await http.post("/token", data={"grant_type": "refresh_token", "x": "y"})

        async def pieces():
            yield b"abc"
            yield b""
            yield b"defg"

        await http.post("/upload", content=pieces())

    _, server = run(answer_each, scenario)
    assert server.bodies == [b"grant_type=refresh_token&x=y", b"abcdefg"]
    assert b"transfer-encoding: chunked" in server.requests[1].lower()


def test_idle_connections_expire():
    async def scenario(http):
        await http.get("/x")
        await asyncio.sleep(0.3)
        await http.get("/x")

    _, server = run(answer_each, scenario, keepalive_expiry=0.1)
    assert server.connections == 2


def test_a_request_cancelled_while_waiting_drops_its_connection():
    async def silent(reader, writer, server):
        await server.read_request(reader)
        await asyncio.sleep(5)

    async def scenario(http):
        task = asyncio.create_task(http.get("/x"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return http._transport._open, http._transport._idle_count

    counts, _ = run(silent, scenario)
    assert counts == (0, 0)


def test_connect_failures_are_connect_errors_that_name_no_url():
    async def scenario():
        async with client("http://127.0.0.1:9") as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await http.get("/x?api_key=secret-value")
            return str(caught.value)

    message = asyncio.run(scenario())
    assert "secret-value" not in message and "127.0.0.1" not in message


def test_a_connection_that_speaks_while_idle_is_not_reused():
    async def chatty(reader, writer, server):
        await server.read_request(reader)
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(ok(b'{"unasked": true}'))  # nobody asked
        await answer_each(reader, writer, server)

    async def scenario(http):
        first = (await http.get("/x")).json()
        await asyncio.sleep(0.3)
        return first, (await http.get("/x")).json()

    bodies, server = run(chatty, scenario)
    assert bodies == ({"ok": True}, {"ok": True}) and server.connections == 2


def test_a_client_used_again_in_another_event_loop_opens_new_connections():
    async def serve_twice():
        server = Server(answer_each)
        async with server as url:
            http = client(url)

            def in_another_loop(n: int) -> list[int]:
                async def reads():
                    return [(await http.get("/x")).status_code for _ in range(n)]

                return asyncio.run(reads())

            first = await asyncio.to_thread(in_another_loop, 2)
            second = await asyncio.to_thread(in_another_loop, 2)
            return first + second, server.connections

    statuses, connections = asyncio.run(serve_twice())
    assert statuses == [200] * 4 and connections == 2


def test_a_waiter_woken_then_cancelled_passes_its_turn_on():
    async def closing(reader, writer, server):
        await server.read_request(reader)
        writer.write(ok(extra=b"Connection: close\r\n"))
        await writer.drain()

    async def scenario(http):
        held = await http.send(http.build_request("GET", "/a"), stream=True)  # the one slot
        second = asyncio.create_task(http.get("/b"))
        third = asyncio.create_task(http.get("/c", timeout=httpx.Timeout(5, pool=2)))
        await asyncio.sleep(0.1)
        await held.aclose()  # frees the slot and wakes the second...
        second.cancel()  # ...which leaves in the same turn of the loop
        return (await third).status_code

    status, _ = run(closing, scenario, max_connections=1)
    assert status == 200


def test_a_reset_in_a_body_without_length_is_an_error_not_its_end():
    async def reset(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[1,2,3")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def scenario(http):
        with pytest.raises(httpx.ReadError):
            await http.get("/x")

    run(reset, scenario)


@pytest.mark.parametrize("endless", [b"X-Trailer: a\r\n", b"a" * 1000], ids=["many", "one"])
def test_endless_trailers_are_refused_at_the_cap(endless):
    async def trailing(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        if not endless.startswith(b"X-"):
            writer.write(b"X-Trailer: ")
        for _ in range(MAX_HEAD_BYTES // len(endless) * 4):
            writer.write(endless)
            await writer.drain()
        await asyncio.sleep(5)

    async def scenario(http):
        with pytest.raises(httpx.RemoteProtocolError, match="framing over"):
            await asyncio.wait_for(http.get("/x"), 4)

    run(trailing, scenario)


def test_a_body_in_tiny_chunks_is_held_back_as_soon():
    async def tiny(reader, writer, server):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"1\r\na\r\n" * 10_000
        for _ in range(2_000):
            writer.write(block)
            await writer.drain()

    async def scenario(http):
        async with http.stream("GET", "/x") as response:
            async for _ in response.aiter_raw():
                await asyncio.sleep(1)  # a slow reader
                return len(response.stream._stream._connection.body)  # httpx's wrapper, ours

    pieces, _ = run(tiny, scenario)
    # Without counting what each piece costs, a quarter of a million would wait.
    assert pieces < 100_000


def test_closing_the_client_closes_answers_being_read_and_fails_waiters():
    async def scenario(http):
        transport = http._transport
        streamed = await http.send(http.build_request("GET", "/a"), stream=True)
        waiting = asyncio.create_task(
            transport.handle_async_request(http.build_request("GET", "/b"))
        )
        await asyncio.sleep(0.1)
        await transport.aclose()
        await asyncio.sleep(0.05)  # asyncio has reported the connections closed
        with pytest.raises(httpx.ReadError):
            await streamed.aread()
        with pytest.raises(RuntimeError, match="closed"):
            await waiting
        return transport._open

    for framing in (b"Content-Length: 10\r\n", b""):  # a length, or none (until close)
        slow = stalling(b"HTTP/1.1 200 OK\r\n%s\r\nabc" % framing)
        still_open, _ = run(slow, scenario, max_connections=1)
        assert still_open == 0


def test_answers_as_lenient_as_h11_where_framing_is_not_at_stake():
    async def quirky(reader, writer, server):
        while (head := await server.read_request(reader)) is not None:
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # body: wrong
            elif b"/old" in head:
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]")
            else:
                writer.write(b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\n{}")  # bare LFs
            await writer.drain()

    async def scenario(http):
        lf = await http.get("/x")
        head = await http.head("/x")
        old = await http.get("/old")
        return lf, head, old

    (lf, head, old), _ = run(quirky, scenario)
    assert (lf.json(), lf.headers["x-a"]) == ({}, "b")
    assert head.content == b""
    assert (old.http_version, old.json()) == ("HTTP/1.0", [])


def test_a_request_that_says_close_is_not_kept():
    async def scenario(http):
        await http.get("/x", headers={"Connection": "close"})
        await http.get("/x")

    _, server = run(answer_each, scenario)
    assert server.connections == 2
