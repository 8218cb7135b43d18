"""The aggregate fact table: idempotent upserts and per-tenant reads."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat

import polars as pl
from sqlalchemy import Float, String, func, literal, select, union_all
from sqlalchemy.orm import Session

from .models import Connection, Fact, utcnow
from .registry import ConnectionInfo

#: The long format every source's ``aggregate`` returns and the warehouse stores; the one
#: definition of it (sources import it from here).
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
    return normalise_facts_many([frame])[0]


def normalise_facts_many(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """``normalise_facts`` of several connections' facts, in one query (told apart by
    their index, ``_k``); a frame that lacks a column raises before anything runs."""
    for frame in frames:
        missing = [name for name in FACT_SCHEMA if name not in frame.columns]
        if missing:
            raise ValueError(f"aggregates lack columns {missing}")
    cast = (
        pl.col("metric").cast(pl.String),
        pl.col("dimension").cast(pl.String).fill_null(""),
        pl.col("day").cast(pl.Date),
        pl.col("value").cast(pl.Float64),
    )
    return facts_of_each(frames, _normalised, cast)


def facts_of_each(
    frames: list[pl.DataFrame],
    query: Callable[[pl.LazyFrame, list[str]], pl.DataFrame],
    columns: Sequence[pl.Expr] = (),
) -> list[pl.DataFrame]:
    """``query`` of each frame (facts, ``FACT_SCHEMA``; empty for a frame with no rows),
    run once over all of them: their ``columns`` (all of them by default) side by side,
    told apart by their index, ``_k``, which ``query(plan, by)`` groups by as well (``by``
    is empty when only one frame has rows)."""
    present = [(index, frame) for index, frame in enumerate(frames) if frame.height]
    facts: dict[int, pl.DataFrame] = {}
    if len(present) == 1:
        index, frame = present[0]
        facts[index] = query(frame.lazy().select(*columns or [pl.all()]), [])
    elif present:
        plans = [
            frame.lazy().select(pl.lit(index, pl.UInt32).alias("_k"), *columns or [pl.all()])
            for index, frame in present
        ]
        together = query(pl.concat(plans, how="vertical"), ["_k"])
        parts = together.partition_by("_k", as_dict=True, include_key=False)
        facts = {key[0]: part for key, part in parts.items()}
    return [
        facts[index] if index in facts else pl.DataFrame(schema=FACT_SCHEMA)
        for index in range(len(frames))
    ]


def _normalised(facts: pl.LazyFrame, by: list[str]) -> pl.DataFrame:
    # Sorted in the fact table's key order (tenant, connection, day, metric, dimension).
    # A key's values added one after another (polars' own sum adds in blocks whose bounds
    # move with the rows around them: a connection's sums would differ in their last
    # bits with the connections normalised beside it, and from one run to the next).
    return (
        facts.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
        .group_by(*by, "day", "metric", "dimension")
        .agg(pl.col("value").cum_sum().last())
        .sort(*by, "day", "metric", "dimension")
        .select(*by, *FACT_SCHEMA)
        .collect()
    )


def upsert_facts(
    session: Session,
    connection: ConnectionInfo,
    facts: pl.DataFrame,
    *,
    window_start: dt.date | None,
    snapshot_metrics: frozenset[str] = frozenset(),
    normalised: bool = False,
) -> UpsertSummary:
    """Make the connection's facts from ``window_start`` on equal ``facts``
    (``normalised``: as ``normalise_facts`` gives them already).

    Rows whose value is unchanged are not touched, so rerunning a refresh changes
    nothing; rows inside the window that the source no longer reports are removed,
    except those of ``snapshot_metrics``: a source sees those only as of today, so the
    days it no longer reports keep the values their own refresh saw.
    Runs inside the caller's transaction.

    Compare first, then write only the difference: the connection's stored facts over
    the days concerned come back in one bulk read and are compared in polars, so a
    rerun reads once and writes nothing. New rows travel in bulk in key order (on
    PostgreSQL by ``COPY``; should another transaction insert the same keys meanwhile,
    the unique key fails this one whole and the refresh is retried); changed rows go
    through ``INSERT … ON CONFLICT DO UPDATE … WHERE`` the value differs.
    """
    if not normalised:
        facts = normalise_facts(facts)  # sorted in the primary key's order
    days = facts["day"].n_unique() if facts.height else 0
    first_day = facts["day"].min() if facts.height else None
    last_day = facts["day"].max() if facts.height else None
    # The stored days this upsert may change: those it brings, and the whole window.
    bounds = [d for d in (window_start, first_day) if d is not None]
    since = min(bounds) if bounds else None
    until = None if window_start is not None else last_day
    dialect = session.get_bind().dialect.name
    raw = session.connection().connection.driver_connection
    written = removed = 0
    if since is not None:
        stored = (_stored_postgres if dialect == "postgresql" else _stored_sqlite)(
            raw, connection, since, until
        )
        new, changed, gone = _difference(facts, stored, window_start, snapshot_metrics)
        if dialect == "postgresql":
            written, removed = _write_postgres(raw, connection, new, changed, gone)
        else:
            written, removed = _write_sqlite(raw, connection, new, changed, gone)
    return UpsertSummary(
        rows=facts.height,
        written=written,
        removed=removed,
        days=days,
        first_day=first_day,
        last_day=last_day,
    )


_KEY = ["day", "metric", "dimension"]
#: the facts as the stored-rows queries below select them: key columns first
_STORED_SCHEMA = {name: FACT_SCHEMA[name] for name in (*_KEY, "value")}


def _difference(
    facts: pl.DataFrame,
    stored: pl.DataFrame,
    window_start: dt.date | None,
    snapshot_metrics: frozenset[str],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(rows not stored yet, rows whose value changed, stored keys to remove)."""
    if stored.height == 0:
        return facts, facts.clear(), stored.select(_KEY)
    joined = facts.join(
        stored.rename({"value": "stored"}), on=_KEY, how="left", maintain_order="left"
    )
    new = joined.filter(pl.col("stored").is_null()).drop("stored")
    changed = joined.filter(pl.col("stored") != pl.col("value")).drop("stored")
    if window_start is None:
        gone = stored.clear().select(_KEY)
    else:
        gone = stored.filter(
            (pl.col("day") >= window_start) & ~pl.col("metric").is_in(sorted(snapshot_metrics))
        ).join(facts, on=_KEY, how="anti")
    return new, changed, gone.select(_KEY)


def _stored_sqlite(raw, connection, since: dt.date, until: dt.date | None) -> pl.DataFrame:
    query = (
        "SELECT day, metric, dimension, value FROM facts "
        "WHERE tenant_id = ? AND connection_id = ? AND day >= ? AND day <= ?"
    )
    cursor = raw.execute(
        query,
        (
            connection.tenant_id,
            connection.id,
            since.isoformat(),
            (until or dt.date.max).isoformat(),
        ),
    )
    try:
        rows = cursor.fetchall()
    finally:
        cursor.close()
    frame = pl.DataFrame(rows, schema={**_STORED_SCHEMA, "day": pl.String}, orient="row")
    return frame.with_columns(pl.col("day").str.to_date("%Y-%m-%d"))


def _stored_postgres(raw, connection, since: dt.date, until: dt.date | None) -> pl.DataFrame:
    # COPY's text out is the cheapest way to bring many rows back; PostgreSQL prints
    # doubles in their shortest exact form, so they read back bit for bit.
    from psycopg import sql  # here: a SQLite process need not load psycopg

    buffer = bytearray()
    with raw.cursor() as cursor:
        query = sql.SQL(
            "COPY (SELECT day, metric, dimension, value FROM facts WHERE tenant_id = {} "
            "AND connection_id = {} AND day >= {} AND day <= {}) TO STDOUT (FORMAT csv)"
        ).format(connection.tenant_id, connection.id, since, until or dt.date.max)
        with cursor.copy(query) as copy:
            for chunk in copy:
                buffer += chunk
    if not buffer:
        return pl.DataFrame(schema=_STORED_SCHEMA)
    return pl.read_csv(
        bytes(buffer),
        has_header=False,
        new_columns=list(_STORED_SCHEMA),
        schema=_STORED_SCHEMA,
    )  # COPY quotes an empty string (""), which reads back as '', not as null


def _sqlite_timestamp(value: dt.datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime stores: naive UTC, microseconds.
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_rows(connection, rows: pl.DataFrame, *extra: object):
    """Parameter tuples in the key's column order, built in C rather than row by row."""
    columns = [rows["day"].dt.strftime("%Y-%m-%d").to_list()]
    columns += [rows[name].to_list() for name in rows.columns if name != "day"]
    day, metric, dimension, *rest = columns
    tenant, connection_id = repeat(connection.tenant_id), repeat(connection.id)
    return zip(
        tenant, connection_id, day, metric, dimension, *rest, *map(repeat, extra), strict=False
    )


def _write_sqlite(raw, connection, new, changed, gone) -> tuple[int, int]:
    now = _sqlite_timestamp(utcnow())
    cursor = raw.cursor()
    try:
        before = raw.total_changes
        if new.height:
            # SQLite lets one writer in at a time and this transaction read the stored
            # keys, so these are absent: a plain insert, with no conflict probe per row.
            cursor.executemany(
                "INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                _sqlite_rows(connection, new, now),
            )
        if changed.height:
            cursor.executemany(
                "INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant_id, connection_id, day, metric, dimension) DO UPDATE "
                "SET value = excluded.value, updated_at = excluded.updated_at "
                "WHERE facts.value IS NOT excluded.value",
                _sqlite_rows(connection, changed, now),
            )
        written = raw.total_changes - before
        before = raw.total_changes
        if gone.height:
            cursor.executemany(
                "DELETE FROM facts WHERE tenant_id = ? AND connection_id = ? AND day = ? "
                "AND metric = ? AND dimension = ?",
                _sqlite_rows(connection, gone),
            )
        removed = raw.total_changes - before
    finally:
        cursor.close()
    return written, removed


def _csv(connection, rows: pl.DataFrame, now: dt.datetime | None = None) -> bytes:
    columns = [
        pl.lit(connection.tenant_id).alias("tenant_id"),
        pl.lit(connection.id).alias("connection_id"),
        "day",
        "metric",
        "dimension",
    ]
    if now is not None:
        columns += ["value", pl.lit(now.isoformat()).alias("updated_at")]
    buffer = io.BytesIO()
    # Quoted, so an empty dimension is '' and never NULL.
    rows.select(columns).write_csv(buffer, include_header=False, quote_style="non_numeric")
    return buffer.getvalue()


def _write_postgres(raw, connection, new, changed, gone) -> tuple[int, int]:
    now = utcnow()
    written = removed = 0
    with raw.cursor() as cursor:
        if new.height:
            # Keys the bulk read did not find: appended straight into the table.
            with cursor.copy(
                "COPY facts (tenant_id, connection_id, day, metric, dimension, value, updated_at) "
                "FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write(_csv(connection, new, now))
            written += max(cursor.rowcount, 0)
        if changed.height:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS writevue_changed_facts "
                "(LIKE facts INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            with cursor.copy(
                "COPY writevue_changed_facts (tenant_id, connection_id, day, metric, dimension, "
                "value, updated_at) FROM STDIN (FORMAT csv)"
            ) as copy:
                copy.write(_csv(connection, changed, now))
            cursor.execute(
                "INSERT INTO facts SELECT * FROM writevue_changed_facts "
                "ON CONFLICT (tenant_id, connection_id, day, metric, dimension) DO UPDATE "
                "SET value = excluded.value, updated_at = excluded.updated_at "
                "WHERE facts.value IS DISTINCT FROM excluded.value"
            )
            written += max(cursor.rowcount, 0)
            cursor.execute("DROP TABLE writevue_changed_facts")
        if gone.height:
            cursor.execute(
                "DELETE FROM facts f USING unnest(%s::date[], %s::text[], %s::text[]) "
                "AS g(day, metric, dimension) WHERE f.tenant_id = %s AND f.connection_id = %s "
                "AND f.day = g.day AND f.metric = g.metric AND f.dimension = g.dimension",
                (
                    gone["day"].to_list(),
                    gone["metric"].to_list(),
                    gone["dimension"].to_list(),
                    connection.tenant_id,
                    connection.id,
                ),
            )
            removed = max(cursor.rowcount, 0)
    return written, removed


def tenant_facts(session: Session, tenant_id: str, start: dt.date, end: dt.date) -> pl.DataFrame:
    """Every aggregate of one tenant between two days (inclusive), summed over connections.

    One range of the key per connection of the tenant.
    """
    connections = select(Connection.id).where(Connection.tenant_id == tenant_id)
    rows = session.execute(
        select(Fact.metric, Fact.dimension, Fact.day, func.sum(Fact.value))
        .where(
            Fact.tenant_id == tenant_id,
            Fact.connection_id.in_(connections),
            Fact.day >= start,
            Fact.day <= end,
        )
        .group_by(Fact.metric, Fact.dimension, Fact.day)
        .order_by(Fact.day)
    ).all()
    return pl.DataFrame(rows, schema=FACT_SCHEMA, orient="row")


#: one tenant's facts per connection, as ``tenant_connection_facts`` returns them
CONNECTION_FACT_SCHEMA = {"connection_id": pl.String, **FACT_SCHEMA}


def tenant_connection_facts(
    session: Session, tenant_id: str, start: dt.date, end: dt.date
) -> tuple[pl.DataFrame, dict[str, dt.date]]:
    """Every aggregate of one tenant between two days (inclusive), per connection (a
    dashboard combines them by each metric's kind: a gauge is not summed over days), and
    each connection's first day of data (before it: "no data"). One statement."""
    connections = select(Connection.id).where(Connection.tenant_id == tenant_id)
    facts = select(Fact.connection_id, Fact.metric, Fact.dimension, Fact.day, Fact.value).where(
        Fact.tenant_id == tenant_id,
        Fact.connection_id.in_(connections),
        Fact.day >= start,
        Fact.day <= end,
    )
    firsts = (
        select(
            Fact.connection_id,
            literal(None, String).label("metric"),
            literal(None, String).label("dimension"),
            func.min(Fact.day),
            literal(None, Float).label("value"),
        )
        .where(Fact.tenant_id == tenant_id)
        .group_by(Fact.connection_id)
    )
    rows = session.execute(union_all(facts, firsts)).all()
    history = {row[0]: row[3] for row in rows if row[1] is None}
    frame = pl.DataFrame(
        [row for row in rows if row[1] is not None], schema=CONNECTION_FACT_SCHEMA, orient="row"
    )
    return frame, history


def _of_connection(connection_id: str):
    """The facts of one connection, found through its tenant: the key starts with it."""
    tenant = select(Connection.tenant_id).where(Connection.id == connection_id).scalar_subquery()
    return (Fact.tenant_id == tenant) & (Fact.connection_id == connection_id)


def connection_fact_count(session: Session, connection_id: str) -> int:
    return session.scalar(select(func.count()).where(_of_connection(connection_id))) or 0


def duplicate_keys(session: Session, connection_id: str) -> int:
    """How many (metric, dimension, day) keys appear more than once; the schema forbids any."""
    sub = (
        select(Fact.metric, Fact.dimension, Fact.day)
        .where(_of_connection(connection_id))
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
            _of_connection(connection_id),
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
                _of_connection(connection_id),
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
        .where(_of_connection(connection_id), Fact.day >= since)
        .group_by(Fact.metric, Fact.day)
    ).all()
    return [(metric, day, float(total or 0.0)) for metric, day, total in rows]


__all__ = [
    "FACT_SCHEMA",
    "UpsertSummary",
    "connection_fact_count",
    "daily_totals",
    "duplicate_keys",
    "facts_of_each",
    "normalise_facts",
    "normalise_facts_many",
    "tenant_facts",
    "upsert_facts",
    "value_problems",
]
