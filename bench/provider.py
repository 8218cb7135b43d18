"""The refresh benchmark's provider: ``/bench/events`` served as the sandbox serves it
(``bench.sandbox_pages``: the same pages, the same key check, the same answers to bad
parameters, the same injected latency), by a lean HTTP/1.1 server instead of Tornado.

A provider's CPU is not on the machine that refreshes from it. Here it has to be: the
benchmark's two workers and its provider share two cores. Tornado spent about 0.35 ms
of CPU a page (some 3.5 s of each 1,000-connection run, a quarter of what the workers
themselves used), taken from whichever client it served, WriteVue or the floor. This
server answers a page in a small fraction of that (llhttp parses the requests; pages
are encoded once), so the comparison is between the clients, as on a quiet machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.parse

import httptools

from bench.sandbox_pages import PER_PAGE, account_of, page_json, prepare_accounts

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}


def _answer(status: int, body: bytes | str) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"Content-Type: application/json; charset=utf-8\r\n",
            b"Content-Length: %d\r\n\r\n" % len(data),
            data,
        )
    )


def _error(status: int, message: str) -> bytes:
    return _answer(status, json.dumps({"message": message}))


class _Provider(asyncio.Protocol):
    """One client connection: each request answered after the latency, in order."""

    def __init__(self, latency_s: float, bench_records: int):
        self.latency_s = latency_s
        self.bench_records = bench_records
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.authorization = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(_error(400, "malformed request"))  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        self.url, self.authorization = b"", b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_message_complete(self) -> None:
        answer, delay = self.answer()
        keep = self.parser.should_keep_alive()
        if delay:
            asyncio.get_running_loop().call_later(delay, self.send, answer, keep)
        else:
            self.send(answer, keep)

    def send(self, answer: bytes, keep_alive: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
            if not keep_alive:
                self.transport.close()

    def answer(self) -> tuple[bytes, float]:
        url = httptools.parse_url(self.url)
        path = url.path
        if path == b"/_sandbox/health":
            return _answer(200, b'{"ok": true}'), 0.0
        if path != b"/bench/events":
            return _error(404, "no such endpoint"), self.latency_s
        header = self.authorization.decode("latin-1")
        key = header.removeprefix("Bearer ").strip()
        if not header.startswith("Bearer ") or not key.startswith("bench_"):
            return _error(401, "Bad credentials"), self.latency_s
        query = urllib.parse.parse_qs((url.query or b"").decode("latin-1"))
        try:
            page = int(query.get("page", ["1"])[-1])
            per_page = int(query.get("per_page", [str(PER_PAGE)])[-1])
        except ValueError:
            return _error(400, "page and per_page must be integers"), self.latency_s
        if page < 1 or not 1 <= per_page <= 100:
            return _error(400, "page >= 1 and 1 <= per_page <= 100"), self.latency_s
        today = dt.datetime.now(dt.UTC).date()
        body = page_json(account_of(key), self.bench_records, today, page, per_page)
        return _answer(200, body), self.latency_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve(
    port: int, *, latency_s: float = 0.0, bench_records: int = 1000, bench_accounts: int = 0
) -> None:
    """Serve ``/bench/events`` on 127.0.0.1:``port``; ``bench_accounts`` made up front."""
    if bench_accounts:
        prepare_accounts(bench_accounts, bench_records)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Provider(latency_s, bench_records), "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())
