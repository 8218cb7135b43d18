"""Stripe: gross volume, fees, net and refunds per day and currency, and new customers per day.

Read from balance transactions (what Stripe's own reports use) and customers, with a
restricted or secret API key, through Stripe's list APIs: ``limit``,
``starting_after``/``has_more`` pagination (the shared ``StartingAfterPaginator``) and
``created[gte]`` for incremental reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import ClassVar

import httpx
import polars as pl

from ..aggregates_only import MAX_VALUES_LIMIT
from ..errors import SourceError
from ..warehouse import FACT_SCHEMA
from .auth import ApiKeyPlacement
from .base import Dimension, FetchRequest, FetchResult, MetricKind, Polarity, Source, Unit
from .http import get_json
from .paginators import PagesSeen, Paginator, StartingAfterPaginator

# Stripe amounts are in the currency's smallest unit, except for these.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
SALE_TYPES = ("charge", "payment")
REFUND_TYPES = ("refund", "payment_refund")

RAW_SCHEMA = {
    "kind": pl.String,  # balance_transaction or customer
    "id": pl.String,
    "created": pl.Int64,
    "type": pl.String,
    "amount": pl.Int64,
    "fee": pl.Int64,
    "net": pl.Int64,
    "currency": pl.String,
}


class StripeSource(Source):
    name = "stripe"
    title = "Stripe"
    description = "Payments: gross volume, fees, net and refunds per currency; new customers."
    auth_kinds = ("api_key",)
    api_key_placement = ApiKeyPlacement(header="Authorization", prefix="Bearer ")
    default_base_url = "https://api.stripe.com"
    metrics = {
        "gross_volume": "Gross volume",
        "net": "Net volume",
        "fees": "Fees",
        "refunds": "Refunds",
        "charges": "Payments",
        "new_customers": "New customers",
    }
    metric_kinds: ClassVar[dict[str, MetricKind]] = dict.fromkeys(metrics, "counter")
    metric_units: ClassVar[dict[str, Unit]] = dict.fromkeys(
        ("gross_volume", "net", "fees", "refunds"), "money"
    )
    metric_polarity: ClassVar[dict[str, Polarity]] = {"fees": "up_bad", "refunds": "up_bad"}
    #: money metrics per ISO 4217 currency code (a closed list of about 180, never a
    #: customer); the counts carry no breakdown
    dimension: ClassVar[Dimension] = Dimension("currency", max_values=MAX_VALUES_LIMIT)
    #: net volume goes below zero on a day of more refunds than sales
    signed_metrics: ClassVar[frozenset[str]] = frozenset({"net"})
    stream = "balance_transactions"
    pages: ClassVar[Paginator] = StartingAfterPaginator(limit=100)

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        started = time.perf_counter()
        since = int(dt.datetime.combine(request.window_start, dt.time(), dt.UTC).timestamp())
        (transactions, t_requests), (customers, c_requests) = await asyncio.gather(
            self._list(client, request, "/v1/balance_transactions", since, _transaction_row),
            self._list(client, request, "/v1/customers", since, _customer_row),
        )
        records = pl.DataFrame(transactions + customers, schema=RAW_SCHEMA, orient="row")
        newest = records["created"].max() if records.height else None
        return FetchResult(
            records=records,
            next_cursor=str(newest) if newest is not None else request.cursor,
            requests=t_requests + c_requests,
            latency_s=time.perf_counter() - started,
        )

    async def _list(self, client, request: FetchRequest, path: str, since: int, to_row):
        """Every object of one list endpoint created since ``since``, newest first."""
        connection_id = request.connection.id
        page = self.pages.first(path, {"created[gte]": since})
        rows: list[dict] = []
        requests = 0
        seen = PagesSeen()
        while page is not None:
            if not seen.advances(page.url, page.params):
                raise SourceError.of_connection(
                    connection_id, f"{path} pagination does not advance (the same page again)"
                )
            body, response = await get_json(
                client, page.url, connection_id=connection_id, params=page.params, auth=request.auth
            )
            requests += 1
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise SourceError.of_connection(
                    connection_id, f"{path} answered without a data list"
                )
            rows.extend(to_row(item, connection_id, path) for item in body["data"])
            page = self.pages.next(page, body, response, body["data"])
        return rows, requests

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        if records.height == 0:
            return pl.DataFrame(schema=FACT_SCHEMA)
        frame = records.with_columns(
            pl.from_epoch("created", time_unit="s").dt.date().alias("day"),
            pl.col("currency").str.to_lowercase(),
        )
        money = frame.filter(pl.col("kind") == "balance_transaction").with_columns(
            pl.when(pl.col("currency").is_in(list(ZERO_DECIMAL)))
            .then(1.0)
            .otherwise(100.0)
            .alias("unit")
        )
        sales = pl.col("type").is_in(SALE_TYPES)
        refunds = pl.col("type").is_in(REFUND_TYPES)
        per_currency = money.group_by("day", "currency").agg(
            ((pl.col("amount") / pl.col("unit")).filter(sales).sum()).alias("gross_volume"),
            ((-pl.col("amount") / pl.col("unit")).filter(refunds).sum()).alias("refunds"),
            (pl.col("fee") / pl.col("unit")).sum().alias("fees"),
            ((pl.col("net") / pl.col("unit")).filter(sales | refunds).sum()).alias("net"),
        )
        long_money = per_currency.unpivot(
            index=["day", "currency"], variable_name="metric", value_name="value"
        ).rename({"currency": "dimension"})
        counts = pl.concat(
            [
                money.filter(sales)
                .group_by("day")
                .agg(pl.len().alias("value"))
                .with_columns(pl.lit("charges").alias("metric")),
                frame.filter(pl.col("kind") == "customer")
                .group_by("day")
                .agg(pl.len().alias("value"))
                .with_columns(pl.lit("new_customers").alias("metric")),
            ]
        ).with_columns(pl.lit("").alias("dimension"))
        columns = [
            pl.col("metric"),
            pl.col("dimension"),
            pl.col("day"),
            pl.col("value").cast(pl.Float64),
        ]
        return pl.concat([long_money.select(columns), counts.select(columns)])


def _int(value: object) -> int:
    # Stripe sends integers; tolerate numeric strings and nulls from drift or proxies.
    if value is None or value == "":
        return 0
    return int(value)


def _transaction_row(item: object, connection_id: str, path: str) -> dict:
    """Keep only what aggregation needs; ignore every other field."""
    try:
        return {
            "kind": "balance_transaction",
            "id": str(item["id"]),
            "created": int(item["created"]),
            "type": str(item.get("type") or ""),
            "amount": _int(item["amount"]),
            "fee": _int(item.get("fee")),
            "net": _int(item.get("net", _int(item["amount"]) - _int(item.get("fee")))),
            "currency": str(item["currency"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise _drift(exc, connection_id, path) from None


def _customer_row(item: object, connection_id: str, path: str) -> dict:
    try:
        return {
            "kind": "customer",
            "id": str(item["id"]),
            "created": int(item["created"]),
            "type": None,
            "amount": None,
            "fee": None,
            "net": None,
            "currency": None,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise _drift(exc, connection_id, path) from None


def _drift(exc: Exception, connection_id: str, path: str) -> SourceError:
    if isinstance(exc, KeyError):
        what = f"lacks the required field {exc.args[0]!r}"
    elif isinstance(exc, TypeError) and "subscriptable" in str(exc):
        what = "is not an object"
    else:
        what = "has a field of the wrong type"
    return SourceError.of_connection(connection_id, f"an item from {path} {what}")
