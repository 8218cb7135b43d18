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
from writevue_pipelines.sources import FetchRequest, get_source
from writevue_pipelines.sources.http import WriteRefused, open_client, retry_after_seconds
from writevue_sandbox import stripe_data

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


def _sandbox_objects(objects_for_day, key: str, start: dt.date) -> list[dict]:
    account = stripe_data.account_for_key(key)
    now = int(time.time())
    return [
        item
        for day in range(stripe_data.day_number(start), now // 86400 + 1)
        for item in objects_for_day(account, day)
        if item["created"] <= now
    ]


def test_fetch_reads_every_page_of_both_lists_from_the_window_start(sandbox):
    start = dt.date.today() - dt.timedelta(days=20)
    result = asyncio.run(_fetch(sandbox.url, KEY, start))
    transactions = _sandbox_objects(stripe_data.balance_transactions_for_day, KEY, start)
    customers = _sandbox_objects(stripe_data.customers_for_day, KEY, start)
    assert len(transactions) > 100  # more than one page
    kinds = result.records["kind"].value_counts().sort("kind").rows()
    assert kinds == [("balance_transaction", len(transactions)), ("customer", len(customers))]
    pages = -(-len(transactions) // 100) + max(1, -(-len(customers) // 100))
    assert result.requests == pages
    assert result.next_cursor == str(max(t["created"] for t in transactions + customers))


def test_aggregates_match_the_sandbox_ledger(sandbox):
    """Gross, refunds, fees and net per day and currency, computed independently."""
    start = dt.date.today() - dt.timedelta(days=10)
    facts = get_source("stripe").aggregate(asyncio.run(_fetch(sandbox.url, KEY, start)).records)
    got = {(m, d, day): v for m, d, day, v in facts.iter_rows()}
    expected: dict = {}
    account = stripe_data.account_for_key(KEY)
    now = int(time.time())
    for day_no in range(stripe_data.day_number(start), now // 86400 + 1):
        day = dt.date(1970, 1, 1) + dt.timedelta(days=day_no)
        for charge in stripe_data.charges_for_day(account, day_no):
            if charge["created"] > now or charge["status"] != "succeeded":
                continue
            cur, amount = charge["currency"], charge["amount"] / 100
            fee = stripe_data.stripe_fee(charge["amount"]) / 100
            for metric, value in (("gross_volume", amount), ("fees", fee), ("net", amount - fee)):
                expected[(metric, cur, day)] = expected.get((metric, cur, day), 0) + value
            expected[("charges", "", day)] = expected.get(("charges", "", day), 0) + 1
            if charge["refunded"]:
                expected[("refunds", cur, day)] = expected.get(("refunds", cur, day), 0) + amount
                expected[("net", cur, day)] -= amount
        customers = [
            c for c in stripe_data.customers_for_day(account, day_no) if c["created"] <= now
        ]
        if customers:
            expected[("new_customers", "", day)] = len(customers)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    # Anything else the connector reports is a zero (a currency-day with no refunds).
    assert all(v == 0 for k, v in got.items() if k not in expected)


def test_aggregation_handles_zero_decimal_currencies():
    source = get_source("stripe")
    day = int(dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC).timestamp())
    records = pl.DataFrame(
        {
            "kind": ["balance_transaction"] * 3 + ["customer"],
            "id": ["a", "b", "c", "d"],
            "created": [day] * 4,
            "type": ["charge", "charge", "refund", None],
            "amount": [1000, 500, -1000, None],
            "fee": [59, 0, 0, None],
            "net": [941, 500, -1000, None],
            "currency": ["usd", "jpy", "usd", None],
        }
    )
    value = {(m, d): v for m, d, _, v in source.aggregate(records).iter_rows()}
    assert value[("gross_volume", "usd")] == 10.00
    assert value[("gross_volume", "jpy")] == 500  # zero-decimal currency
    assert value[("refunds", "usd")] == 10.00
    assert value[("net", "usd")] == pytest.approx(-0.59)
    assert value[("charges", "")] == 2 and value[("new_customers", "")] == 1


def test_drift_is_tolerated_but_a_missing_required_field_fails_that_connection():
    from writevue_pipelines.sources.stripe import _transaction_row

    item = {
        "id": "txn_1",
        "created": "1700000000",
        "amount": "250",
        "fee": None,
        "currency": "usd",
        "surprise": {"new": "field"},
    }
    row = _transaction_row(item, "c1", "/v1/x")
    assert row["created"] == 1700000000 and row["amount"] == 250 and row["fee"] == 0
    with pytest.raises(SourceError, match="lacks the required field 'currency'") as err:
        _transaction_row({"id": "t", "created": 1, "amount": 1}, "c1", "/v1/balance_transactions")
    assert "c1" in str(err.value)


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
