"""The aggregate fact table: idempotent upserts and per-tenant reads."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import Fact, utcnow
from .registry import ConnectionInfo

#: The long format every source produces and the warehouse stores.
FACT_SCHEMA = {"metric": pl.String, "dimension": pl.String, "day": pl.Date, "value": pl.Float64}

_BATCH = 5_000


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
) -> UpsertSummary:
    """Make the connection's facts from ``window_start`` on equal ``facts``.

    Rows whose value is unchanged are not touched, so rerunning a refresh changes
    nothing; rows inside the window that the source no longer reports are removed.
    Runs inside the caller's transaction.
    """
    facts = normalise_facts(facts)
    now = utcnow()
    records = [
        {
            "tenant_id": connection.tenant_id,
            "connection_id": connection.id,
            "metric": metric,
            "dimension": dimension,
            "day": day,
            "value": value,
            "updated_at": now,
        }
        for metric, dimension, day, value in facts.iter_rows()
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    written = 0
    for start in range(0, len(records), _BATCH):
        chunk = records[start : start + _BATCH]
        stmt = insert(Fact).values(chunk)
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection_id", "metric", "dimension", "day"],
            set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            where=Fact.value != stmt.excluded.value,
        ).returning(Fact.id)
        # Counted from RETURNING: rowcount is not reliable across drivers for upserts.
        written += len(session.execute(stmt).all())

    removed = 0
    if window_start is not None:
        keep = {(r["metric"], r["dimension"], r["day"]) for r in records}
        existing = session.execute(
            select(Fact.id, Fact.metric, Fact.dimension, Fact.day).where(
                Fact.connection_id == connection.id, Fact.day >= window_start
            )
        ).all()
        stale_ids = [row.id for row in existing if (row.metric, row.dimension, row.day) not in keep]
        for start in range(0, len(stale_ids), _BATCH):
            result = session.execute(
                delete(Fact).where(Fact.id.in_(stale_ids[start : start + _BATCH]))
            )
            removed += result.rowcount or 0

    days = facts["day"].n_unique() if facts.height else 0
    return UpsertSummary(
        rows=facts.height,
        written=written,
        removed=removed,
        days=days,
        first_day=facts["day"].min() if facts.height else None,
        last_day=facts["day"].max() if facts.height else None,
    )


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


__all__ = [
    "FACT_SCHEMA",
    "UpsertSummary",
    "connection_fact_count",
    "duplicate_keys",
    "normalise_facts",
    "tenant_facts",
    "upsert_facts",
]
