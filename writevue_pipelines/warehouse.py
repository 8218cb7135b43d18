"""The aggregate fact table: idempotent upserts and per-tenant reads."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import polars as pl
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Fact, utcnow
from .registry import ConnectionInfo

#: The long format every source produces and the warehouse stores.
FACT_SCHEMA = {"metric": pl.String, "dimension": pl.String, "day": pl.Date, "value": pl.Float64}


@dataclass(frozen=True)
class UpsertSummary:
    rows: int
    written: int
    removed: int
    days: int
    first_day: dt.date | None
    last_day: dt.date | None


def normalise_facts(frame: pl.DataFrame) -> pl.DataFrame:
    """Check a source's output against the long format and sum duplicates."""
    missing = [name for name in FACT_SCHEMA if name not in frame.columns]
    if missing:
        raise ValueError(f"aggregates lack columns {missing}")
    frame = frame.select(
        pl.col("metric").cast(pl.String),
        pl.col("dimension").cast(pl.String).fill_null(""),
        pl.col("day").cast(pl.Date),
        pl.col("value").cast(pl.Float64),
    ).filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    return (
        frame.group_by("metric", "dimension", "day")
        .agg(pl.col("value").sum())
        .sort("day", "metric", "dimension")
    )


def upsert_facts(
    session: Session,
    connection: ConnectionInfo,
    facts: pl.DataFrame,
    *,
    window_start: dt.date | None,
    snapshot_metrics: frozenset[str] = frozenset(),
) -> UpsertSummary:
    """Make the connection's facts from ``window_start`` on equal ``facts``.

    Rows whose value is unchanged are not touched, so rerunning a refresh changes
    nothing; rows inside the window that the source no longer reports are removed,
    except those of ``snapshot_metrics``: a source sees those only as of today, so the
    days it no longer reports keep the values their own refresh saw.
    Runs inside the caller's transaction.

    The rows travel in bulk: on PostgreSQL by ``COPY`` into a temporary table and one
    ``INSERT … ON CONFLICT … WHERE value IS DISTINCT FROM``; on SQLite by one prepared
    upsert run with ``executemany``. Either way the staged keys then find the stale rows
    in one ``DELETE``.
    """
    # In the unique key's order: each index grows at its end instead of at random pages.
    facts = normalise_facts(facts).sort("metric", "dimension", "day")
    now = utcnow()
    dialect = session.get_bind().dialect.name
    raw = session.connection().connection.driver_connection
    # A connection's first load (its history backfill) has nothing to conflict with or
    # remove: the rows go in as a plain bulk insert.
    has_rows = session.scalar(select(Fact.id).where(Fact.connection_id == connection.id).limit(1))
    if has_rows is None:
        written = _insert_new(raw, dialect, connection, facts, now)
        removed = 0
    elif dialect == "postgresql":
        written, removed = _upsert_postgres(
            raw, connection, facts, now, window_start, sorted(snapshot_metrics)
        )
    else:
        written, removed = _upsert_sqlite(
            raw, connection, facts, now, window_start, sorted(snapshot_metrics)
        )
    days = facts["day"].n_unique() if facts.height else 0
    return UpsertSummary(
        rows=facts.height,
        written=written,
        removed=removed,
        days=days,
        first_day=facts["day"].min() if facts.height else None,
        last_day=facts["day"].max() if facts.height else None,
    )


def _insert_new(raw, dialect, connection, facts, now) -> int:
    if dialect == "postgresql":
        ids = (connection.tenant_id, connection.id)
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY facts (tenant_id, connection_id, metric, dimension, day, value, updated_at) "
                "FROM STDIN"
            ) as copy,
        ):
            for row in facts.iter_rows():
                copy.write_row((*ids, *row, now))
        return facts.height
    cursor = raw.cursor()
    try:
        cursor.executemany(
            "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            _sqlite_params(connection, facts, now),
        )
    finally:
        cursor.close()
    return facts.height


def _sqlite_params(connection, facts, now) -> list[tuple]:
    return facts.select(
        pl.lit(connection.tenant_id).alias("tenant_id"),
        pl.lit(connection.id).alias("connection_id"),
        "metric",
        "dimension",
        pl.col("day").dt.strftime("%Y-%m-%d"),
        "value",
        pl.lit(_sqlite_timestamp(now)).alias("updated_at"),
    ).rows()


def _upsert_postgres(raw, connection, facts, now, window_start, kept) -> tuple[int, int]:
    with raw.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS writevue_incoming_facts (metric text, "
            "dimension text, day date, value double precision) ON COMMIT DROP"
        )
        cursor.execute("TRUNCATE writevue_incoming_facts")
        with cursor.copy(
            "COPY writevue_incoming_facts (metric, dimension, day, value) FROM STDIN"
        ) as copy:
            for row in facts.iter_rows():
                copy.write_row(row)
        cursor.execute(
            "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, "
            "updated_at) SELECT %s, %s, metric, dimension, day, value, %s "
            "FROM writevue_incoming_facts "
            "ON CONFLICT (connection_id, metric, dimension, day) DO UPDATE "
            "SET value = excluded.value, updated_at = excluded.updated_at "
            "WHERE facts.value IS DISTINCT FROM excluded.value",
            (connection.tenant_id, connection.id, now),
        )
        written = max(cursor.rowcount, 0)
        removed = 0
        if window_start is not None:
            cursor.execute(
                "DELETE FROM facts f WHERE f.connection_id = %s AND f.day >= %s "
                "AND NOT (f.metric = ANY(%s)) AND NOT EXISTS "
                "(SELECT 1 FROM writevue_incoming_facts i WHERE i.metric = f.metric "
                "AND i.dimension = f.dimension AND i.day = f.day)",
                (connection.id, window_start, kept),
            )
            removed = max(cursor.rowcount, 0)
    return written, removed


def _sqlite_timestamp(value: dt.datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime stores: naive UTC, microseconds.
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _upsert_sqlite(raw, connection, facts, now, window_start, kept) -> tuple[int, int]:
    params = _sqlite_params(connection, facts, now)
    rows = [row[2:5] for row in params]
    cursor = raw.cursor()
    try:
        before = raw.total_changes
        cursor.executemany(
            "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (connection_id, metric, dimension, day) DO UPDATE "
            "SET value = excluded.value, updated_at = excluded.updated_at "
            "WHERE facts.value IS NOT excluded.value",
            params,
        )
        written = raw.total_changes - before
        removed = 0
        if window_start is not None:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS writevue_incoming_keys "
                "(metric TEXT, dimension TEXT, day TEXT, PRIMARY KEY (metric, dimension, day))"
            )
            cursor.execute("DELETE FROM writevue_incoming_keys")
            cursor.executemany(
                "INSERT INTO writevue_incoming_keys VALUES (?, ?, ?)",
                rows,
            )
            before = raw.total_changes
            cursor.execute(
                "DELETE FROM facts WHERE connection_id = ? AND day >= ? "
                "AND metric NOT IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
                "(SELECT 1 FROM writevue_incoming_keys i WHERE i.metric = facts.metric "
                "AND i.dimension = facts.dimension AND i.day = facts.day)",
                (connection.id, window_start.isoformat(), json.dumps(kept)),
            )
            removed = raw.total_changes - before
            cursor.execute("DELETE FROM writevue_incoming_keys")
    finally:
        cursor.close()
    return written, removed


def tenant_facts(session: Session, tenant_id: str, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Every aggregate of one tenant between two days (inclusive), summed over connections."""
    rows = session.execute(
        select(Fact.metric, Fact.dimension, Fact.day, func.sum(Fact.value))
        .where(Fact.tenant_id == tenant_id, Fact.day >= start, Fact.day <= end)
        .group_by(Fact.metric, Fact.dimension, Fact.day)
        .order_by(Fact.day)
    ).all()
    return pl.DataFrame(rows, schema=FACT_SCHEMA, orient="row")


def connection_fact_count(session: Session, connection_id: str) -> int:
    return session.scalar(select(func.count()).where(Fact.connection_id == connection_id)) or 0


def duplicate_keys(session: Session, connection_id: str) -> int:
    """How many (metric, dimension, day) keys appear more than once; the schema forbids any."""
    sub = (
        select(Fact.metric, Fact.dimension, Fact.day)
        .where(Fact.connection_id == connection_id)
        .group_by(Fact.metric, Fact.dimension, Fact.day)
        .having(func.count() > 1)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(sub)) or 0


def value_problems(session: Session, connection_id: str, nonnegative: list[str]) -> tuple[int, int]:
    """(values that are not finite numbers, negative values of metrics that cannot be negative)."""
    huge = 1.0e308
    nonfinite = session.scalar(
        select(func.count()).where(
            Fact.connection_id == connection_id,
            (Fact.value.is_(None))
            | (Fact.value != Fact.value)  # NaN is the one value unequal to itself
            | (Fact.value > huge)
            | (Fact.value < -huge),
        )
    )
    negative = 0
    if nonnegative:
        negative = session.scalar(
            select(func.count()).where(
                Fact.connection_id == connection_id,
                Fact.metric.in_(nonnegative),
                Fact.value < 0,
            )
        )
    return nonfinite or 0, negative or 0


def daily_totals(
    session: Session, connection_id: str, since: dt.date
) -> list[tuple[str, dt.date, float]]:
    """(metric, day, total over dimensions) of one connection from ``since`` on."""
    rows = session.execute(
        select(Fact.metric, Fact.day, func.sum(Fact.value))
        .where(Fact.connection_id == connection_id, Fact.day >= since)
        .group_by(Fact.metric, Fact.day)
    ).all()
    return [(metric, day, float(total or 0.0)) for metric, day, total in rows]


__all__ = [
    "FACT_SCHEMA",
    "UpsertSummary",
    "connection_fact_count",
    "daily_totals",
    "duplicate_keys",
    "normalise_facts",
    "tenant_facts",
    "upsert_facts",
    "value_problems",
]
