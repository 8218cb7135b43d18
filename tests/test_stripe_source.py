"""The Stripe source against the sandbox over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import httpx
import polars as pl
import pytest
from support import add_stripe_connection

from writevue_pipelines import refresh
from writevue_pipelines.errors import SourceError
from writevue_pipelines.registry import ConnectionInfo
from writevue_pipelines.sandbox import stripe_data
from writevue_pipelines.sources import FetchRequest, get_source
from writevue_pipelines.sources.http import WriteRefused, open_client, retry_after_seconds

KEY = "sk_test_source_check_77"


def _connection(url: str) -> ConnectionInfo:
    return ConnectionInfo(
        id="11111111-1111-1111-1111-111111111111",
        tenant_id="t",
        source="stripe",
        auth_kind="api_key",
        options={"base_url": url},
        status="active",
        last_error=None,
        last_refreshed_at=None,
    )


async def _fetch(url: str, key: str, start: dt.date):
    source = get_source("stripe")
    async with open_client(base_url=url) as client:
        connection = _connection(url)
        auth = source.build_auth(connection, {"api_key": key})
        return await source.fetch(client, FetchRequest(connection, auth, start, None))


def test_sandbox_pages_like_stripe(sandbox):
    headers = {"Authorization": f"Bearer {KEY}"}
    first = httpx.get(f"{sandbox.url}/v1/charges", params={"limit": 3}, headers=headers).json()
    assert first["object"] == "list" and first["has_more"] is True and len(first["data"]) == 3
    created = [c["created"] for c in first["data"]]
    assert created == sorted(created, reverse=True)
    second = httpx.get(
        f"{sandbox.url}/v1/charges",
        params={"limit": 3, "starting_after": first["data"][-1]["id"]},
        headers=headers,
    ).json()
    assert not {c["id"] for c in first["data"]} & {c["id"] for c in second["data"]}
    assert second["data"][0]["created"] <= first["data"][-1]["created"]
    again = httpx.get(f"{sandbox.url}/v1/charges", params={"limit": 3}, headers=headers).json()
    assert again["data"] == first["data"]  # seeded: the same account sees the same data
    other = httpx.get(
        f"{sandbox.url}/v1/charges",
        params={"limit": 3},
        headers={"Authorization": "Bearer sk_test_other"},
    ).json()
    assert other["data"] != first["data"]


def test_sandbox_refuses_bad_keys_and_unknown_cursors(sandbox):
    assert httpx.get(f"{sandbox.url}/v1/charges").status_code == 401
    assert (
        httpx.get(f"{sandbox.url}/v1/charges", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    bad = httpx.get(
        f"{sandbox.url}/v1/charges",
        params={"starting_after": "ch_nope"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "resource_missing"


def test_fetch_reads_every_page_from_the_window_start(sandbox):
    start = dt.date.today() - dt.timedelta(days=20)
    result = asyncio.run(_fetch(sandbox.url, KEY, start))
    account = stripe_data.account_for_key(KEY)
    now = int(time.time())
    expected = [
        c
        for day in range(stripe_data.day_number(start), now // 86400 + 1)
        for c in stripe_data.charges_for_day(account, day)
        if c["created"] <= now
    ]
    assert result.records.height == len(expected) > 100
    assert result.requests == -(-len(expected) // 100)  # ceil: has_more ends the loop
    assert set(result.records.columns) == {
        "id",
        "created",
        "amount",
        "amount_refunded",
        "currency",
        "status",
    }
    assert result.next_cursor == str(max(c["created"] for c in expected))


def test_aggregation_gives_gross_volume_per_day_and_currency():
    source = get_source("stripe")
    day = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
    records = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "created": [int(day.timestamp())] * 4,
            "amount": [1000, 2550, 500, 700],
            "amount_refunded": [0, 2550, 0, 0],
            "currency": ["usd", "usd", "jpy", "usd"],
            "status": ["succeeded", "succeeded", "succeeded", "failed"],
        }
    )
    facts = source.aggregate(records)
    value = {(m, d): v for m, d, _, v in facts.iter_rows()}
    assert value[("gross_volume", "usd")] == 35.50
    assert value[("gross_volume", "jpy")] == 500  # zero-decimal currency
    assert value[("refunded", "usd")] == 25.50
    assert value[("charges", "")] == 3


def test_a_bad_key_is_a_clean_error_for_that_connection_only(runtime, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    tenant, good = add_stripe_connection(runtime, sandbox.url, KEY)
    _, bad = add_stripe_connection(runtime, sandbox.url, "bad_key_wrong_prefix", tenant_id=tenant)
    results = asyncio.run(refresh.fetch_connections(runtime, [good, bad]))
    assert isinstance(results[bad], SourceError) and not isinstance(results[good], Exception)
    message = str(results[bad])
    assert "refused the credentials" in message and "bad_key" not in message
    assert "bad_key_wrong_prefix" not in caplog.text and KEY not in caplog.text


def test_the_http_layer_refuses_writes_before_they_leave(sandbox):
    async def attempt(method):
        async with open_client(base_url=sandbox.url) as client:
            await client.request(method, "/v1/charges", json={"amount": 1})

    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(WriteRefused):
            asyncio.run(attempt(method))
    assert sandbox.counters["stripe.write_attempts"] == 0


def test_retry_after_accepts_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None
