"""The declarative REST source aggregates its raw rows in one grouping pass; it must give
exactly what the plain way gives (each group's values in time order, added one after
another), on raw rows with nulls, ties in time, every aggregation and several breakdowns
and days, and the same bits whatever it is aggregated with."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest

from writevue_pipelines.sources.rest import RAW_SCHEMA, RestSource
from writevue_pipelines.warehouse import FACT_SCHEMA, normalise_facts, normalise_facts_many


def plain_aggregate(records: pl.DataFrame) -> pl.DataFrame:
    """The aggregation spelled out in Python: each (metric, dimension, day)'s values in
    time order (ties in the records' order), added one after another."""
    if records.height == 0:
        return pl.DataFrame(schema=FACT_SCHEMA)
    groups: dict[tuple, tuple[str, list]] = {}
    for row in records.sort("at", "seq").iter_rows(named=True):
        key = (row["metric"], row["dimension"], row["day"])
        groups.setdefault(key, (row["agg"], []))[1].append(row["value"])
    rows = []
    for key, (agg, values) in sorted(groups.items()):
        present = [value for value in values if value is not None]
        total = 0.0
        for value in present:
            total += value
        value = {
            "sum": total,
            "count": float(len(present)),
            "mean": total / len(present) if present else None,
            "last": present[-1] if present else None,
            "first": present[0] if present else None,
        }[agg]
        if value is not None:
            rows.append((*key, value))
    return pl.DataFrame(rows, schema=FACT_SCHEMA, orient="row")


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
@pytest.mark.parametrize("seed", range(7))
def test_one_grouping_pass_gives_what_a_pass_per_aggregation_gives(metrics, seed):
    records = _raw(seed, metrics, records=[1, 7, 60, 400, 1000, 3, 20_000][seed])
    got = RestSource().aggregate(records)
    expected = plain_aggregate(records)
    assert got.schema == expected.schema == pl.Schema(FACT_SCHEMA)
    assert got.equals(expected)  # the same rows, order and bits
    assert got.height > 0


def test_no_rows_give_no_facts():
    facts = RestSource().aggregate(pl.DataFrame(schema=RAW_SCHEMA))
    assert facts.height == 0 and facts.schema == pl.Schema(FACT_SCHEMA)


def test_connections_aggregated_together_get_the_bits_each_gets_alone():
    """A load aggregates every connection staged with it in one query: each connection's
    facts must be exactly those of its own aggregation, whatever it was loaded with."""
    frames = [
        _raw(seed, METRIC_SETS[seed % len(METRIC_SETS)], records=size)
        for seed, size in enumerate([1000, 0, 60, 40_000, 7, 1000, 3])
    ]
    together = RestSource().aggregate_many(frames)
    alone = [RestSource().aggregate(frame) for frame in frames]
    assert len(together) == len(frames)
    for got, expected in zip(together, alone, strict=True):
        assert got.schema == pl.Schema(FACT_SCHEMA)
        assert got.equals(expected)
    assert together[1].height == 0 and together[0].height > 0


def test_facts_normalised_together_get_the_bits_each_gets_alone():
    rng = random.Random(7)
    day = dt.date(2024, 3, 1)

    def facts(rows: int) -> pl.DataFrame:
        # duplicate keys, whose values the normalisation sums
        return pl.DataFrame(
            {
                "metric": [rng.choice(["a", "b"]) for _ in range(rows)],
                "dimension": [rng.choice(["", "x", None]) for _ in range(rows)],
                "day": [day + dt.timedelta(days=rng.randint(0, 3)) for _ in range(rows)],
                "value": [rng.uniform(-1e6, 1e6) for _ in range(rows)],
            },
            schema=FACT_SCHEMA,
        )

    frames = [facts(rows) for rows in (5000, 0, 300, 2000)]
    together = normalise_facts_many(frames)
    for got, frame in zip(together, frames, strict=True):
        assert got.equals(normalise_facts(frame))
