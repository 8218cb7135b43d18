"""The HTTP layer's overall deadline for one exchange, against the sandbox's ``drip`` fault.

httpx's read timeout bounds each wait for a chunk, not the whole answer: a provider that
sends a few bytes just before every read timeout would hold a refresh for ever. The layer
gives every exchange (request sent, answer read to its end) a deadline of its own.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from support import add_stripe_connection, remember_secret

from writevue_pipelines import refresh, warehouse
from writevue_pipelines.errors import CredentialRejected, SourceError
from writevue_pipelines.sources.auth import ApiKeyAuth, ApiKeyPlacement
from writevue_pipelines.sources.http import (
    EXCHANGE_DEADLINE_FACTOR,
    RetryPolicy,
    exchange_deadline_s,
    get_json,
    open_client,
)
from writevue_sandbox import SandboxServer
from writevue_sandbox.faults import with_faults

CONNECTION = "44444444-4444-4444-4444-444444444444"


def _token(plan: str) -> str:
    token = remember_secret(f"ghp_{uuid.uuid4().hex}")
    return with_faults(token, plan) if plan else token


async def _read(url: str, token: str, **client_kwargs):
    async with open_client(
        base_url=url,
        provider=f"test-{uuid.uuid4().hex}",
        retry=RetryPolicy(attempts=2, base_delay_s=0.001, max_delay_s=0.01),
        **client_kwargs,
    ) as client:
        return await get_json(
            client,
            "/users/acme-org",
            connection_id=CONNECTION,
            auth=ApiKeyAuth(token, ApiKeyPlacement()),
        )


def test_the_default_deadline_is_a_multiple_of_the_read_timeout():
    assert exchange_deadline_s(httpx.Timeout(30.0, connect=10.0)) == 30.0 * EXCHANGE_DEADLINE_FACTOR
    assert exchange_deadline_s(httpx.Timeout(1.0)) == EXCHANGE_DEADLINE_FACTOR
    assert exchange_deadline_s(httpx.Timeout(None)) is None  # no timeout asked, none added


def test_a_body_dripped_within_the_deadline_is_read_whole():
    # Each piece arrives well within the read timeout and the whole within the deadline.
    with SandboxServer(drip_s=0.5) as sandbox:
        body, _ = asyncio.run(
            _read(sandbox.url, _token("drip"), timeout=httpx.Timeout(1.0), deadline_s=5.0)
        )
        assert body["login"] == "acme-org" and sandbox.counters["fault.drip"] == 1


def test_a_body_dripped_past_the_deadline_fails_cleanly_though_no_read_timed_out():
    # 20 pieces over 4 s: one every 0.2 s, far inside the 1 s read timeout, so only the
    # exchange's deadline can end it.
    with SandboxServer(drip_s=4.0) as sandbox:
        token = _token("drip")
        with pytest.raises(SourceError) as caught:
            asyncio.run(_read(sandbox.url, token, timeout=httpx.Timeout(1.0), deadline_s=1.0))
        assert sandbox.counters["fault.drip"] == 1  # the answer was under way
    message = str(caught.value)
    assert message == (
        f"connection {CONNECTION}: /users/acme-org did not finish answering within 1 s"
    )
    assert caught.value.connection_id == CONNECTION
    assert not isinstance(caught.value, CredentialRejected)
    assert token.split("__f_")[0] not in message


def test_a_refused_answer_dripped_past_the_deadline_is_no_refused_credential():
    # A 403's body is read by the layer (to see whether it names a secondary rate limit):
    # within the exchange's deadline too. A provider that drips it must not hold the
    # refresh, nor pass for a refused credential.
    dripped = []

    async def drip_403(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 400\r\n\r\n")
            for _ in range(40):  # 40 bytes a piece, one every 0.1 s: 10 pieces in 4 s
                writer.write(b"x" * 10)
                await writer.drain()
                dripped.append(1)
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def go():
        server = await asyncio.start_server(drip_403, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await _read(
                f"http://127.0.0.1:{port}",
                _token(""),
                timeout=httpx.Timeout(1.0),
                deadline_s=1.0,
            )
        finally:
            server.close()

    with pytest.raises(SourceError) as caught:
        asyncio.run(go())
    assert not isinstance(caught.value, CredentialRejected)
    assert str(caught.value) == f"connection {CONNECTION}: /users/acme-org timed out after retries"
    assert 0 < len(dripped) < 40  # the answer had begun, and was not waited for to its end


def test_a_refresh_ends_a_dripping_connection_and_loads_the_others(home, monkeypatch):
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    # A 1 s read timeout gives a refresh's exchanges a deadline of a few seconds; the
    # dripping provider takes far longer, one piece well within every read timeout.
    monkeypatch.setenv("WRITEVUE_HTTP_TIMEOUT_S", "1")
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "3")
    init_home(Settings.from_env())
    runtime = Runtime(Settings.from_env())
    drip_s = 4 * EXCHANGE_DEADLINE_FACTOR
    with SandboxServer(drip_s=drip_s) as sandbox:
        tenant, clean = add_stripe_connection(runtime, sandbox.url, "sk_test_deadline_clean")
        key = with_faults(remember_secret("sk_test_deadline_drip"), "drip")
        _, dripping = add_stripe_connection(runtime, sandbox.url, key, tenant_id=tenant)
        outcomes = refresh.refresh_connections(runtime, [clean, dripping])
        assert sandbox.counters["fault.drip"] >= 1
    assert outcomes[clean].error is None and outcomes[clean].loaded.facts > 0
    failed = outcomes[dripping]
    assert failed.fetched is None and isinstance(failed.error, SourceError)
    assert "did not finish answering within" in str(failed.error)
    assert dripping in str(failed.error) and "sk_test_deadline_drip" not in str(failed.error)
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, dripping) == 0
    runtime.close()
