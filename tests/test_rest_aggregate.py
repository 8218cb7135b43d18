"""The declarative REST source aggregates its raw rows in one grouping pass; it must give
exactly what the plain way gives (a filter and a grouping per aggregation), on raw rows
with nulls, ties in time, every aggregation and several breakdowns and days."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest

from writevue_pipelines.sources.rest import RAW_SCHEMA, RestSource
from writevue_pipelines.warehouse import FACT_SCHEMA


def plain_aggregate(records: pl.DataFrame) -> pl.DataFrame:
    """The aggregation as it was first written: one filter and group_by per aggregation."""
    if records.height == 0:
        return pl.DataFrame(schema=FACT_SCHEMA)
    keys = ["metric", "dimension", "day"]
    ordered = records.sort("at", "seq")
    parts = []
    for agg, expression in (
        ("sum", pl.col("value").sum()),
        ("count", pl.col("value").count().cast(pl.Float64)),
        ("mean", pl.col("value").mean()),
        ("last", pl.col("value").drop_nulls().last()),
        ("first", pl.col("value").drop_nulls().first()),
    ):
        rows = ordered.filter(pl.col("agg") == agg)
        if rows.height:
            parts.append(rows.group_by(keys).agg(expression.alias("value")).select(*keys, "value"))
    facts = pl.concat(parts).with_columns(pl.col("value").cast(pl.Float64))
    return facts.filter(pl.col("value").is_not_null()).sort(keys)


def _raw(seed: int, metrics: dict[str, str], records: int) -> pl.DataFrame:
    rng = random.Random(seed)
    start = dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()
    at = [start + rng.choice([0, 3600, 86_400 * rng.randint(0, 6) + rng.random()])
          for _ in range(records)]  # fmt: skip
    dimension = [rng.choice(["", "paid", "open", "EUR"]) for _ in range(records)]
    rows = []
    for metric, agg in metrics.items():
        for seq in range(records):
            value = rng.choice([None, rng.uniform(-1e6, 1e6), float(rng.randint(0, 9)), 0.1])
            if agg == "count" and value is not None:
                value = 1.0
            rows.append((metric, agg, dimension[seq], at[seq], seq, value))
    frame = pl.DataFrame(
        rows,
        schema={k: v for k, v in RAW_SCHEMA.items() if k != "day"},
        orient="row",
    )
    day = pl.from_epoch((pl.col("at") * 1_000_000).floor().cast(pl.Int64), time_unit="us")
    return frame.with_columns(day.dt.date().alias("day")).select(list(RAW_SCHEMA))


METRIC_SETS = [
    {"amount": "sum", "events": "count"},
    {"revenue": "sum", "orders": "count", "rated": "count", "rating": "mean", "items": "last"},
    {"level": "first"},
    {"level": "last", "low": "first", "avg": "mean"},
]


@pytest.mark.parametrize("metrics", METRIC_SETS, ids=lambda m: ",".join(m.values()))
@pytest.mark.parametrize("seed", range(6))
def test_one_grouping_pass_gives_what_a_pass_per_aggregation_gives(metrics, seed):
    records = _raw(seed, metrics, records=[1, 7, 60, 400, 1000, 3][seed])
    got = RestSource().aggregate(records)
    expected = plain_aggregate(records)
    assert got.schema == expected.schema == pl.Schema(FACT_SCHEMA)
    assert got.equals(expected)  # the same rows, order and bits
    assert got.height > 0


def test_no_rows_give_no_facts():
    facts = RestSource().aggregate(pl.DataFrame(schema=RAW_SCHEMA))
    assert facts.height == 0 and facts.schema == pl.Schema(FACT_SCHEMA)
