"""Stripe: charges by day and currency, read with a restricted or secret API key."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import polars as pl

from ..errors import SourceError
from .base import FetchRequest, FetchResult, Source
from .http import get_json

# Stripe amounts are in the currency's smallest unit, except for these.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())

RAW_SCHEMA = {
    "id": pl.String,
    "created": pl.Int64,
    "amount": pl.Int64,
    "amount_refunded": pl.Int64,
    "currency": pl.String,
    "status": pl.String,
}


class StripeSource(Source):
    name = "stripe"
    title = "Stripe"
    description = "Payments: gross volume, charges and refunds per day and currency."
    auth_kinds = ("api_key",)
    default_base_url = "https://api.stripe.com"
    metrics = {
        "gross_volume": "Gross volume",
        "charges": "Successful charges",
        "refunded": "Refunded",
    }
    stream = "charges"
    page_size = 100

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        connection_id = request.connection.id
        window_start = dt.datetime.combine(request.window_start, dt.time(), dt.UTC)
        params: dict[str, str | int] = {
            "limit": self.page_size,
            "created[gte]": int(window_start.timestamp()),
        }
        rows: list[dict] = []
        requests = 0
        started = time.perf_counter()
        while True:
            body, _ = await get_json(
                client, "/v1/charges", connection_id=connection_id, params=params, auth=request.auth
            )
            requests += 1
            if not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise SourceError(
                    f"connection {connection_id}: /v1/charges answered without a data list",
                    connection_id=connection_id,
                )
            for item in body["data"]:
                rows.append(_charge_row(item, connection_id))
            if not body.get("has_more") or not body["data"]:
                break
            params["starting_after"] = rows[-1]["id"]
        records = pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row")
        newest = records["created"].max() if records.height else None
        next_cursor = str(newest) if newest is not None else request.cursor
        return FetchResult(
            records=records,
            next_cursor=next_cursor,
            requests=requests,
            latency_s=time.perf_counter() - started,
        )

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        if records.height == 0:
            return pl.DataFrame(
                schema={
                    "metric": pl.String,
                    "dimension": pl.String,
                    "day": pl.Date,
                    "value": pl.Float64,
                }
            )
        frame = records.with_columns(
            pl.from_epoch("created", time_unit="s").dt.date().alias("day"),
            pl.col("currency").str.to_lowercase(),
        ).with_columns(
            pl.when(pl.col("currency").is_in(list(ZERO_DECIMAL)))
            .then(1.0)
            .otherwise(100.0)
            .alias("unit"),
        )
        succeeded = frame.filter(pl.col("status") == "succeeded")
        gross = (
            succeeded.group_by("day", "currency")
            .agg((pl.col("amount") / pl.col("unit")).sum().alias("value"))
            .with_columns(pl.lit("gross_volume").alias("metric"))
        )
        refunded = (
            succeeded.group_by("day", "currency")
            .agg((pl.col("amount_refunded") / pl.col("unit")).sum().alias("value"))
            .with_columns(pl.lit("refunded").alias("metric"))
        )
        charges = (
            succeeded.group_by("day")
            .agg(pl.len().cast(pl.Float64).alias("value"))
            .with_columns(pl.lit("").alias("currency"), pl.lit("charges").alias("metric"))
        )
        columns = ["metric", "currency", "day", "value"]
        return pl.concat(
            [gross.select(columns), refunded.select(columns), charges.select(columns)]
        ).rename({"currency": "dimension"})


def _charge_row(item: object, connection_id: str) -> dict:
    """Keep only what aggregation needs; tolerate drift in everything else."""
    if not isinstance(item, dict):
        raise SourceError(
            f"connection {connection_id}: a charge is not an object", connection_id=connection_id
        )
    try:
        return {
            "id": str(item["id"]),
            "created": int(item["created"]),
            "amount": int(item.get("amount") or 0),
            "amount_refunded": int(item.get("amount_refunded") or 0),
            "currency": str(item["currency"]),
            "status": str(item.get("status") or ""),
        }
    except KeyError as exc:
        raise SourceError(
            f"connection {connection_id}: a charge lacks the required field {exc.args[0]!r}",
            connection_id=connection_id,
        ) from None
    except (TypeError, ValueError):
        raise SourceError(
            f"connection {connection_id}: a charge has a field of the wrong type",
            connection_id=connection_id,
        ) from None
