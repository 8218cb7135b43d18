"""The HTTP layer's connections (``sources/http11.py`` under every source's client): pooled
connections a provider has closed are not reused, and HTTPS works and verifies. Against
real loopback servers: plain HTTP, and TLS with a certificate made here."""

from __future__ import annotations

import asyncio
import ssl
import uuid

import httpx
import pytest

from writevue_devtools.tls import make_tls_cert
from writevue_pipelines.sources import http as layer
from writevue_pipelines.sources.http import RetryPolicy, get_json, open_client

CONNECTION = "66666666-6666-6666-6666-666666666666"
BODY = b'{"ok": true}'


class OneAnswerServer:
    """Answers each connection's first request, then closes that connection (without
    saying so in the answer, as a provider's idle timeout does); counts connections."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head:
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
                )
                await writer.drain()
                await asyncio.sleep(0.05)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _three_reads(server: OneAnswerServer) -> list:
    async with (
        server as url,
        open_client(
            base_url=url,
            provider=f"test-{uuid.uuid4().hex}",
            retry=RetryPolicy(attempts=1),  # a reused dead connection would fail the read
        ) as client,
    ):
        bodies = []
        for _ in range(3):
            body, _ = await get_json(client, "/x", connection_id=CONNECTION)
            bodies.append(body)
            await asyncio.sleep(0.2)  # the server has closed the connection by now
        return bodies


def test_a_connection_the_provider_closed_is_not_reused():
    server = OneAnswerServer()
    assert asyncio.run(_three_reads(server)) == [{"ok": True}] * 3
    assert server.connections == 3 and server.requests == 3


def test_https_reads_through_the_layer(tmp_path, monkeypatch):
    cert, key = make_tls_cert(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(layer, "shared_ssl_context", lambda: trusting)
    server = OneAnswerServer(served)
    assert asyncio.run(_three_reads(server)) == [{"ok": True}] * 3
    assert server.connections == 3


def test_an_untrusted_certificate_is_refused(tmp_path):
    cert, key = make_tls_cert(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    with pytest.raises(Exception) as caught:
        asyncio.run(_three_reads(OneAnswerServer(served)))
    assert "could not be reached (ConnectError)" in str(caught.value)


def test_plain_httpx_still_works_beside_the_layer():
    # The layer changes only its own clients' transports.
    assert isinstance(httpx.AsyncClient()._transport, httpx.AsyncHTTPTransport)
