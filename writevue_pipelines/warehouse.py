"""The aggregate fact table: idempotent upserts and per-tenant reads."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import io
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain, islice, repeat

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
        together = query(_side_by_side(present, columns or [pl.all()]), ["_k"])
        parts = together.partition_by("_k", as_dict=True, include_key=False)
        facts = {key[0]: part for key, part in parts.items()}
    return [
        facts[index] if index in facts else pl.DataFrame(schema=FACT_SCHEMA)
        for index in range(len(frames))
    ]


def _side_by_side(frames: Iterable[tuple[int, pl.DataFrame]], columns) -> pl.LazyFrame:
    """The frames' ``columns`` one after another, each row with its frame's index, ``_k``."""
    return pl.concat(
        [
            frame.lazy().select(pl.lit(index, pl.UInt32).alias("_k"), *columns)
            for index, frame in frames
        ],
        how="vertical",
    )


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


@dataclass(frozen=True)
class FactsWrite:
    """One connection's part of ``upsert_facts_many``: its facts, as ``normalise_facts``
    gives them, and the window and snapshot metrics ``upsert_facts`` takes."""

    connection: ConnectionInfo
    facts: pl.DataFrame
    window_start: dt.date | None
    snapshot_metrics: frozenset[str] = frozenset()


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
    write = FactsWrite(connection, facts, window_start, snapshot_metrics)
    return upsert_facts_many(session, [write])[0]


def upsert_facts_many(session: Session, writes: Sequence[FactsWrite]) -> list[UpsertSummary]:
    """``upsert_facts`` of several connections at once, in the caller's transaction: one
    read of their stored facts, one comparison and one statement of each kind (insert,
    update, delete) for all of them; what each one wrote, in their order.

    Should any statement fail, it raises and the caller's transaction (or savepoint)
    holds a part of the writes: roll it back, and write each connection alone to learn
    whose facts failed (``refresh.load_connections`` does).
    """
    summaries: list[UpsertSummary] = []
    compared: list[tuple[int, dt.date, dt.date | None]] = []  # (index, since, until)
    for index, write in enumerate(writes):
        facts = write.facts
        days = facts["day"].n_unique() if facts.height else 0
        first_day = facts["day"].min() if facts.height else None
        last_day = facts["day"].max() if facts.height else None
        summaries.append(UpsertSummary(facts.height, 0, 0, days, first_day, last_day))
        # The stored days this upsert may change: those it brings, and the whole window.
        bounds = [d for d in (write.window_start, first_day) if d is not None]
        if bounds:
            until = None if write.window_start is not None else last_day
            compared.append((index, min(bounds), until))
    if not compared:
        return summaries
    postgres = session.get_bind().dialect.name == "postgresql"
    raw = session.connection().connection.driver_connection
    stored = (_stored_postgres if postgres else _stored_sqlite)(raw, writes, compared)
    indexes = [index for index, _, _ in compared]
    differences = _difference(writes, indexes, stored)
    counts = (_write_postgres if postgres else _write_sqlite)(raw, differences)
    for index, (written, removed) in zip(indexes, counts, strict=True):
        summaries[index] = replace(summaries[index], written=written, removed=removed)
    return summaries


_KEY = ["day", "metric", "dimension"]
#: the facts as the stored-rows queries below select them: the write's index (``_k``),
#: then the key columns
_STORED_SCHEMA = {"_k": pl.UInt32, **{name: FACT_SCHEMA[name] for name in (*_KEY, "value")}}
#: writes whose stored facts one statement reads at most (SQLite caps a compound SELECT)
_STORED_PER_QUERY = 100


@dataclass(frozen=True)
class _Difference:
    """One write's rows not stored yet, rows whose value changed, stored keys to remove."""

    connection: ConnectionInfo
    new: pl.DataFrame
    changed: pl.DataFrame
    gone: pl.DataFrame


def _difference(
    writes: Sequence[FactsWrite], indexes: list[int], stored: pl.DataFrame
) -> list[_Difference]:
    """The difference of each write of ``indexes`` with its stored facts (``stored``, told
    apart by the write's index, ``_k``), in one query for all of them; in their order."""
    keys = pl.DataFrame(schema={name: FACT_SCHEMA[name] for name in _KEY})
    if stored.height == 0:  # nothing stored yet: every fact is new (a first load)
        return [
            _Difference(writes[k].connection, writes[k].facts, writes[k].facts.clear(), keys)
            for k in indexes
        ]
    facts = _side_by_side(((k, writes[k].facts) for k in indexes), FACT_SCHEMA)
    stored_lazy = stored.lazy()
    joined = facts.join(
        stored_lazy.rename({"value": "stored"}),
        on=["_k", *_KEY],
        how="left",
        maintain_order="left",
    )
    new = joined.filter(pl.col("stored").is_null()).drop("stored")
    changed = joined.filter(pl.col("stored") != pl.col("value")).drop("stored")
    # Removed: stored keys inside a write's window that it no longer brings, except its
    # snapshot metrics' (the days a snapshot no longer covers keep their values).
    windowed = [k for k in indexes if writes[k].window_start is not None]
    windows = pl.DataFrame(
        {"_k": windowed, "window_start": [writes[k].window_start for k in windowed]},
        schema={"_k": pl.UInt32, "window_start": pl.Date},
    )
    snapshots = pl.DataFrame(
        [(k, metric) for k in indexes for metric in sorted(writes[k].snapshot_metrics)],
        schema={"_k": pl.UInt32, "metric": pl.String},
        orient="row",
    )
    gone = (
        stored_lazy.join(windows.lazy(), on="_k", how="inner")
        .filter(pl.col("day") >= pl.col("window_start"))
        .join(snapshots.lazy(), on=["_k", "metric"], how="anti")
        .join(facts, on=["_k", *_KEY], how="anti")
        .select("_k", *_KEY)
    )
    new, changed, gone = pl.collect_all([new, changed, gone])
    of_new, of_changed, of_gone = (
        frame.partition_by("_k", as_dict=True, include_key=False) for frame in (new, changed, gone)
    )
    empty_facts = writes[indexes[0]].facts.clear()
    return [
        _Difference(
            writes[k].connection,
            of_new.get((k,), empty_facts),
            of_changed.get((k,), empty_facts),
            of_gone.get((k,), keys),
        )
        for k in indexes
    ]


def _stored_sqlite(raw, writes, compared) -> pl.DataFrame:
    # One statement per _STORED_PER_QUERY writes: a branch each, each on the key's index.
    branch = (
        "SELECT ? AS _k, day, metric, dimension, value FROM facts "
        "WHERE tenant_id = ? AND connection_id = ? AND day >= ? AND day <= ?"
    )
    rows: list = []
    for start in range(0, len(compared), _STORED_PER_QUERY):
        chunk = compared[start : start + _STORED_PER_QUERY]
        parameters = [
            value
            for index, since, until in chunk
            for value in (
                index,
                writes[index].connection.tenant_id,
                writes[index].connection.id,
                since.isoformat(),
                (until or dt.date.max).isoformat(),
            )
        ]
        cursor = raw.execute(" UNION ALL ".join([branch] * len(chunk)), parameters)
        try:
            rows += cursor.fetchall()
        finally:
            cursor.close()
    frame = pl.DataFrame(rows, schema={**_STORED_SCHEMA, "day": pl.String}, orient="row")
    return frame.with_columns(pl.col("day").str.to_date("%Y-%m-%d"))


def _stored_postgres(raw, writes, compared) -> pl.DataFrame:
    # COPY's text out is the cheapest way to bring many rows back; PostgreSQL prints
    # doubles in their shortest exact form, so they read back bit for bit.
    from psycopg import sql  # here: a SQLite process need not load psycopg

    branch = sql.SQL(
        "SELECT {}::int AS _k, day, metric, dimension, value FROM facts WHERE tenant_id = {} "
        "AND connection_id = {} AND day >= {} AND day <= {}"
    )
    buffer = bytearray()
    with raw.cursor() as cursor:
        for start in range(0, len(compared), _STORED_PER_QUERY):
            chunk = compared[start : start + _STORED_PER_QUERY]
            union = sql.SQL(" UNION ALL ").join(
                branch.format(
                    index,
                    writes[index].connection.tenant_id,
                    writes[index].connection.id,
                    since,
                    until or dt.date.max,
                )
                for index, since, until in chunk
            )
            query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(union)
            with cursor.copy(query) as copy:
                for data in copy:
                    buffer += data
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
    # A Date cast to text is its ISO form (as strftime's "%Y-%m-%d", without a query).
    columns = [rows["day"].cast(pl.String).to_list()]
    columns += [rows[name].to_list() for name in rows.columns if name != "day"]
    day, metric, dimension, *rest = columns
    tenant, connection_id = repeat(connection.tenant_id), repeat(connection.id)
    return zip(
        tenant, connection_id, day, metric, dimension, *rest, *map(repeat, extra), strict=False
    )


#: rows one SQLite INSERT carries at most (7 parameters each: well under the 32,766 SQLite
#: allows since 3.32)
_SQLITE_ROWS = 500
_SQLITE_INSERT = (
    "INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, updated_at) "
    "VALUES "
)
_SQLITE_ON_CONFLICT = (
    " ON CONFLICT (tenant_id, connection_id, day, metric, dimension) DO UPDATE "
    "SET value = excluded.value, updated_at = excluded.updated_at "
    "WHERE facts.value IS NOT excluded.value"
)


@functools.lru_cache(maxsize=8)
def _sqlite_insert(rows: int, upsert: bool) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    return _SQLITE_INSERT + values + (_SQLITE_ON_CONFLICT if upsert else "")


def _sqlite_insert_rows(cursor, rows: Iterable[tuple], *, upsert: bool) -> None:
    """Insert the rows, up to ``_SQLITE_ROWS`` a statement.

    Not ``executemany``: that steps the statement once per row, and the sqlite3 module
    lets go of the GIL at each step; a load runs on a thread beside the refresh's event
    loop, and taking the GIL back from it row after row cost up to 10 times the insert's
    own CPU (a statement of many rows is one step).
    """
    # An SQLite built with fewer bound parameters than usual (999 before 3.32) gets fewer
    # rows a statement.
    limit = cursor.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, min(_SQLITE_ROWS, limit // 7))
    rows = iter(rows)
    while chunk := list(islice(rows, per_statement)):
        cursor.execute(_sqlite_insert(len(chunk), upsert), list(chain.from_iterable(chunk)))


def _write_sqlite(raw, differences: list[_Difference]) -> list[tuple[int, int]]:
    """Every difference in a few statements for all; (written, removed) of each.

    SQLite lets one writer in at a time and this transaction read the stored rows, so
    each difference's rows are exactly what its statements change.
    """
    now = _sqlite_timestamp(utcnow())

    def rows(kind: str, *extra: object):
        return chain.from_iterable(
            _sqlite_rows(d.connection, getattr(d, kind), *extra)
            for d in differences
            if getattr(d, kind).height
        )

    cursor = raw.cursor()
    try:
        # Keys the read did not find: a plain insert, with no conflict probe per row.
        _sqlite_insert_rows(cursor, rows("new", now), upsert=False)
        _sqlite_insert_rows(cursor, rows("changed", now), upsert=True)
        if any(d.gone.height for d in differences):
            # Row by row: a DELETE of many keys at once scans the table.
            cursor.executemany(
                "DELETE FROM facts WHERE tenant_id = ? AND connection_id = ? AND day = ? "
                "AND metric = ? AND dimension = ?",
                rows("gone"),
            )
    finally:
        cursor.close()
    return [(d.new.height + d.changed.height, d.gone.height) for d in differences]


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


def _write_postgres(raw, differences: list[_Difference]) -> list[tuple[int, int]]:
    """Every difference in one statement of each kind; (written, removed) of each,
    counted from the rows the statements report changing."""
    now = utcnow()
    updated: collections.Counter[str] = collections.Counter()
    deleted: collections.Counter[str] = collections.Counter()
    with raw.cursor() as cursor:
        if any(d.new.height for d in differences):
            # Keys the bulk read did not find: appended straight into the table.
            with cursor.copy(
                "COPY facts (tenant_id, connection_id, day, metric, dimension, value, updated_at) "
                "FROM STDIN (FORMAT csv)"
            ) as copy:
                for d in differences:
                    if d.new.height:
                        copy.write(_csv(d.connection, d.new, now))
        if any(d.changed.height for d in differences):
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS writevue_changed_facts "
                "(LIKE facts INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            with cursor.copy(
                "COPY writevue_changed_facts (tenant_id, connection_id, day, metric, dimension, "
                "value, updated_at) FROM STDIN (FORMAT csv)"
            ) as copy:
                for d in differences:
                    if d.changed.height:
                        copy.write(_csv(d.connection, d.changed, now))
            cursor.execute(
                "WITH written AS (INSERT INTO facts SELECT * FROM writevue_changed_facts "
                "ON CONFLICT (tenant_id, connection_id, day, metric, dimension) DO UPDATE "
                "SET value = excluded.value, updated_at = excluded.updated_at "
                "WHERE facts.value IS DISTINCT FROM excluded.value RETURNING connection_id) "
                "SELECT connection_id, count(*) FROM written GROUP BY connection_id"
            )
            updated.update(dict(cursor.fetchall()))
            cursor.execute("DROP TABLE writevue_changed_facts")
        gone = [d for d in differences if d.gone.height]
        if gone:
            cursor.execute(
                "WITH removed AS (DELETE FROM facts f USING unnest(%s::text[], %s::text[], "
                "%s::date[], %s::text[], %s::text[]) AS g(tenant_id, connection_id, day, metric, "
                "dimension) WHERE f.tenant_id = g.tenant_id AND f.connection_id = g.connection_id "
                "AND f.day = g.day AND f.metric = g.metric AND f.dimension = g.dimension "
                "RETURNING f.connection_id) "
                "SELECT connection_id, count(*) FROM removed GROUP BY connection_id",
                (
                    [d.connection.tenant_id for d in gone for _ in range(d.gone.height)],
                    [d.connection.id for d in gone for _ in range(d.gone.height)],
                    [day for d in gone for day in d.gone["day"].to_list()],
                    [metric for d in gone for metric in d.gone["metric"].to_list()],
                    [dimension for d in gone for dimension in d.gone["dimension"].to_list()],
                ),
            )
            deleted.update(dict(cursor.fetchall()))
    # A connection is one write of a batch (a refresh's loads take each connection once).
    return [
        (d.new.height + updated[d.connection.id], deleted[d.connection.id]) for d in differences
    ]


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
    "FactsWrite",
    "UpsertSummary",
    "connection_fact_count",
    "daily_totals",
    "duplicate_keys",
    "facts_of_each",
    "normalise_facts",
    "normalise_facts_many",
    "tenant_facts",
    "upsert_facts",
    "upsert_facts_many",
    "value_problems",
]
