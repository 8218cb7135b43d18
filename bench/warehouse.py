"""Benchmark: warehouse upsert throughput on SQLite and PostgreSQL against plain bulk loads.

    python -m bench.warehouse --rows 1000000 [--big-rows 10000000] [--repeat 3]

For each database, the same ``rows`` facts (one connection, metrics x dimensions x
days, a polars frame as a source returns it) are written in the same session,
``--repeat`` times (the median is reported):

- baseline: the fastest plain bulk load of the same frame into the same ``facts`` table
  (the same primary key, the same connection settings and durability: on SQLite WAL
  with synchronous=NORMAL, on PostgreSQL the same server and table), for a connection id
  of its own: the frame sorted in the key's order (inserting in key order is what makes
  a keyed load fast), then SQLite ``executemany`` of a plain ``INSERT`` or PostgreSQL
  ``COPY`` of polars' CSV, then the commit. Timed from the frame to the commit, as the
  upsert is;
- heap (a reference, not the target): the same rows into a fresh table with no index at
  all (the former baseline): the cost of keeping a key is in its ratio;
- upsert: ``warehouse.upsert_facts`` into the real ``facts`` table, for a new
  connection: it reads what is stored, compares, and writes the difference;
- rerun: the same upsert again, which must change no row;
- update-all: an upsert changing every value.

Then the facts table is filled with ``--big-rows`` rows of other connections (10M by
default: where the primary key's depth, page splits and the cache matter) and the
baseline, the heap and the upsert are measured again, ``--repeat`` times, the baseline
into that same big table.

ratio = baseline time / upsert time, per repetition, median reported (1.0: as fast as
the plain load). CPU is this process's (the client; SQLite's work is all here) plus, on
PostgreSQL, the server backend's serving the connection (from /proc), so ``cpu ratio``
compares the CPU per row of both ways; the server's background writers are not counted
for either. On this shared machine the CPU ratios carry the targets. PostgreSQL is
skipped when the server (WRITEVUE_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres) does not answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import polars as pl

from bench.procfs import cpu_s
from bench.scratch import PostgresUnavailable, scratch_postgres_database

METRICS, DIMENSIONS = 10, 100
#: rows of one filler connection in the big table: 100 days of 10 metrics x 100
#: dimensions, as the fill queries below make them
FILLER_ROWS = 100_000


def make_facts(rows: int) -> pl.DataFrame:
    days = max(1, -(-rows // (METRICS * DIMENSIONS)))
    frame = (
        pl.DataFrame({"metric": [f"metric_{m}" for m in range(METRICS)]})
        .join(pl.DataFrame({"dimension": [f"dim_{d:03d}" for d in range(DIMENSIONS)]}), how="cross")
        .join(
            pl.DataFrame(
                {
                    "day": pl.date_range(
                        dt.date(2020, 1, 1),
                        dt.date(2020, 1, 1) + dt.timedelta(days - 1),
                        eager=True,
                    )
                }
            ),
            how="cross",
        )
        .head(rows)
    )
    return frame.with_columns((pl.int_range(pl.len()) % 997 * 1.5).alias("value"))


# The baselines store the same rows as the upsert: a tenant id and a connection id (UUIDs,
# as WriteVue's are) on every row, with the same metrics, dimensions, days and values.
BASELINE_TENANT = str(uuid.uuid4())
BASELINE_CONNECTION = str(uuid.uuid4())
SQLITE_STAMP = "%Y-%m-%d %H:%M:%S.%f"


@dataclass
class Timed:
    seconds: float
    cpu_s: float
    changed: int = 0


def timed(run: Callable[[], int], server_pid: int | None = None) -> Timed:
    """Wall and CPU seconds of ``run()`` (this process, plus a server backend's if given)."""
    server = cpu_s(server_pid) if server_pid else 0.0
    cpu, start = time.process_time(), time.perf_counter()
    changed = run()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    if server_pid:
        cpu += cpu_s(server_pid) - server
    return Timed(seconds, cpu, changed)


# -- the heap reference: plain bulk loads into an unindexed table -----------------------------


def sqlite_heap(path: Path, facts: pl.DataFrame, table: str) -> Timed:
    rows = facts.select(
        pl.lit(BASELINE_TENANT).alias("tenant_id"),
        pl.lit(BASELINE_CONNECTION).alias("connection_id"),
        "metric",
        "dimension",
        pl.col("day").dt.strftime("%Y-%m-%d"),
        "value",
        pl.lit("2026-01-01 00:00:00.000000").alias("updated_at"),
    ).rows()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as the warehouse's connections
        conn.execute(
            f"CREATE TABLE {table} (tenant_id TEXT, connection_id TEXT, metric TEXT, "
            "dimension TEXT, day TEXT, value REAL, updated_at TEXT)"
        )

        def load() -> int:
            # ``table`` is one of this module's own names, never input.
            conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)  # noqa: S608
            conn.commit()
            return len(rows)

        return timed(load)


def postgres_heap(url: str, facts: pl.DataFrame, table: str) -> Timed:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {table} (tenant_id text, connection_id text, metric text, "
            "dimension text, day date, value double precision, updated_at timestamptz)"
        )
        conn.commit()
        now = dt.datetime.now(dt.UTC)
        ids = (BASELINE_TENANT, BASELINE_CONNECTION)

        def load() -> int:
            with cursor.copy(
                f"COPY {table} (tenant_id, connection_id, metric, dimension, day, value, "
                "updated_at) FROM STDIN"
            ) as copy:
                for metric, dimension, day, value in facts.iter_rows():
                    copy.write_row((*ids, metric, dimension, day, value, now))
            conn.commit()
            return facts.height

        return timed(load, conn.info.backend_pid)


# -- the baseline: a plain bulk load into the facts table itself -------------------------------

_FACT_COLUMNS = "tenant_id, connection_id, day, metric, dimension, value, updated_at"


def _keyed(facts: pl.DataFrame, stamp: str) -> pl.DataFrame:
    """The frame's rows for a connection of their own, in the key's order, every column."""
    return facts.sort("day", "metric", "dimension").select(
        pl.lit(str(uuid.uuid4())).alias("tenant_id"),
        pl.lit(str(uuid.uuid4())).alias("connection_id"),
        pl.col("day").dt.strftime("%Y-%m-%d"),
        "metric",
        "dimension",
        "value",
        pl.lit(stamp).alias("updated_at"),
    )


def sqlite_load(raw, facts: pl.DataFrame) -> int:
    keyed = facts.sort("day", "metric", "dimension")
    # Column by column into tuples, the same values repeated (cheaper than
    # ``DataFrame.rows()``), as the upsert makes its parameters.
    stamp = dt.datetime.now(dt.UTC).strftime(SQLITE_STAMP)
    rows = zip(
        repeat(str(uuid.uuid4())),
        repeat(str(uuid.uuid4())),
        keyed["day"].dt.strftime("%Y-%m-%d").to_list(),
        keyed["metric"].to_list(),
        keyed["dimension"].to_list(),
        keyed["value"].to_list(),
        repeat(stamp),
        strict=False,
    )
    cursor = raw.cursor()
    try:
        cursor.executemany(
            f"INSERT INTO facts ({_FACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            rows,
        )
    finally:
        cursor.close()
    return keyed.height


def postgres_load(raw, facts: pl.DataFrame) -> int:
    data = _keyed(facts, dt.datetime.now(dt.UTC).isoformat()).write_csv(
        include_header=False, quote_style="non_numeric"
    )
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY facts ({_FACT_COLUMNS}) FROM STDIN (FORMAT csv)") as copy,
    ):
        copy.write(data.encode())
    return facts.height


# -- filling the facts table with other connections' rows, fast ------------------------------


def fill_sqlite(path: Path, rows: int) -> int:
    """``rows`` facts of other connections, generated inside SQLite (each connection's
    rows in key order, the connections at random places of the key)."""
    stamp = dt.datetime.now(dt.UTC).strftime(SQLITE_STAMP)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    insert = """
        WITH RECURSIVE
          d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 99),
          m(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM m WHERE i < 9),
          x(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM x WHERE i < 99)
        INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, updated_at)
        SELECT ?, ?, date('2020-01-01', '+' || d.i || ' days'), 'metric_' || m.i,
               printf('dim_%03d', x.i), ((d.i * 7 + m.i * 13 + x.i) % 997) * 1.5, ?
        FROM d CROSS JOIN m CROSS JOIN x
    """
    written = 0
    while written < rows:
        with connection:
            connection.execute(insert, (str(uuid.uuid4()), str(uuid.uuid4()), stamp))
        written += FILLER_ROWS
    connection.execute("ANALYZE")
    connection.close()
    return written


def fill_postgres(url: str, rows: int) -> int:
    """``rows`` facts of other connections, generated by the server (as ``fill_sqlite``)."""
    import psycopg

    insert = """
        INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, updated_at)
        SELECT %s, %s, DATE '2020-01-01' + d, 'metric_' || m, 'dim_' || lpad(x::text, 3, '0'),
               ((d * 7 + m * 13 + x) %% 997) * 1.5, now()
        FROM generate_series(0, 99) d
        CROSS JOIN generate_series(0, 9) m
        CROSS JOIN generate_series(0, 99) x
        ORDER BY d, m, x
    """
    written = 0
    with psycopg.connect(url) as connection:
        while written < rows:
            connection.execute(insert, (str(uuid.uuid4()), str(uuid.uuid4())))
            connection.commit()
            written += FILLER_ROWS
        connection.execute("ANALYZE facts")
    return written


# -- the upserts ------------------------------------------------------------------------------


class Warehouse:
    """A fresh WRITEVUE_HOME on one database: new connections, upserts timed."""

    def __init__(self, database_url: str, home: Path):
        os.environ["WRITEVUE_HOME"] = str(home)
        os.environ["WRITEVUE_DATABASE_URL"] = database_url
        from writevue_pipelines.home import init_home
        from writevue_pipelines.runtime import Runtime
        from writevue_pipelines.settings import Settings

        settings = Settings.from_env()
        init_home(settings)
        self.runtime = Runtime(settings)
        self.postgres = database_url.startswith("postgresql")

    def close(self) -> None:
        self.runtime.close()

    def new_connection(self):
        from writevue_pipelines import registry

        with self.runtime.db.session() as session:
            tenant = registry.add_tenant(session, self.runtime.keys, "Bench", "bench@example.com")
            connection_id = registry.add_connection(
                session,
                self.runtime.keys,
                tenant,
                "stripe",
                "api_key",
                {},
                {"api_key": "sk_test_bench"},
            )
            return registry.get_connection(session, connection_id)

    def timed(self, work: Callable) -> Timed:
        """``work(session)`` (its count of rows changed) and the commit, in one of the
        warehouse's own sessions: wall and CPU seconds, the backend's CPU included."""
        from sqlalchemy import text

        with self.runtime.db.session() as session:
            backend = None
            if self.postgres:
                backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            server = cpu_s(backend) if backend else 0.0
            cpu, start = time.process_time(), time.perf_counter()
            changed = work(session)
            session.commit()
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu + (cpu_s(backend) - server if backend else 0.0)
        return Timed(seconds, cpu, changed)

    def upsert(self, connection, frame: pl.DataFrame) -> Timed:
        from writevue_pipelines import warehouse

        window = frame["day"].min()

        def upsert(session) -> int:
            summary = warehouse.upsert_facts(session, connection, frame, window_start=window)
            return summary.written + summary.removed

        return self.timed(upsert)

    def baseline(self, frame: pl.DataFrame) -> Timed:
        """The plain bulk load of ``frame`` into the same table (``sqlite_load``,
        ``postgres_load``), in a session like the upsert's."""
        load = postgres_load if self.postgres else sqlite_load
        return self.timed(lambda session: load(_driver(session), frame))


def _driver(session):
    return session.connection().connection.driver_connection


@dataclass
class Round:
    """One repetition: the baseline, the heap reference and the upserts measured beside it."""

    baseline: Timed
    heap: Timed
    upsert: Timed
    rerun: Timed | None = None
    update: Timed | None = None

    @property
    def ratio(self) -> float:
        return self.baseline.seconds / self.upsert.seconds

    @property
    def cpu_ratio(self) -> float:
        return self.baseline.cpu_s / self.upsert.cpu_s

    @property
    def heap_cpu_ratio(self) -> float:
        return self.heap.cpu_s / self.upsert.cpu_s


@dataclass
class Results:
    empty: list[Round] = field(default_factory=list)
    big: list[Round] = field(default_factory=list)
    big_rows: int = 0
    fill_s: float = 0.0
    problems: list[str] = field(default_factory=list)


def measure(
    target: Warehouse,
    heap: Callable[[str], Timed],
    fill: Callable[[], int],
    facts: pl.DataFrame,
    args,
) -> Results:
    results = Results()
    for index in range(args.repeat):
        # The first baseline goes into an empty table, as the first upsert does.
        base = target.baseline(facts)
        reference = heap(f"heap_{index}")
        connection = target.new_connection()
        first = target.upsert(connection, facts)
        rerun = target.upsert(connection, facts)
        update = target.upsert(connection, facts.with_columns(pl.col("value") + 1))
        results.empty.append(Round(base, reference, first, rerun, update))
        if (first.changed, rerun.changed, update.changed) != (facts.height, 0, facts.height):
            results.problems.append(
                f"wrote {first.changed}, rerun changed {rerun.changed}, "
                f"update changed {update.changed} of {facts.height}"
            )
    if args.big_rows:
        started = time.perf_counter()
        results.big_rows = fill()
        results.fill_s = time.perf_counter() - started
        for index in range(args.repeat):
            base = target.baseline(facts)
            reference = heap(f"heap_big_{index}")
            connection = target.new_connection()
            results.big.append(Round(base, reference, target.upsert(connection, facts)))
    return results


def run_sqlite(workdir: Path, facts: pl.DataFrame, args) -> Results:
    home = workdir / "sqlite-home"
    target = Warehouse(f"sqlite:///{home / 'warehouse.db'}", home)
    try:
        return measure(
            target,
            lambda table: sqlite_heap(workdir / "heap.db", facts, table),
            lambda: fill_sqlite(home / "warehouse.db", args.big_rows),
            facts,
            args,
        )
    finally:
        target.close()


def run_postgres(url: str, workdir: Path, facts: pl.DataFrame, args) -> Results:
    target = Warehouse(url, workdir / "postgres-home")
    try:
        return measure(
            target,
            lambda table: postgres_heap(url, facts, table),
            lambda: fill_postgres(url, args.big_rows),
            facts,
            args,
        )
    finally:
        target.close()


# -- the report -------------------------------------------------------------------------------


def _median(values) -> float:
    return statistics.median(values)


def print_report(rows: int, results: dict[str, Results]) -> dict[str, float]:
    columns = ("database", "table", "baseline s", "upsert s", "rows/s", "ratio")
    columns += ("base cpu s", "upsert cpu s", "cpu ratio", "heap cpu s", "heap cpu rt")
    columns += ("rerun s", "update s")
    print(" ".join(f"{c:>12}" for c in columns))
    summary: dict[str, float] = {}
    for name, result in results.items():
        for label, rounds, suffix in (
            ("empty", result.empty, ""),
            (f"+{result.big_rows / 1e6:g}M rows", result.big, "_10m"),
        ):
            if not rounds:
                continue
            upsert = _median(r.upsert.seconds for r in rounds)
            ratio = _median(r.ratio for r in rounds)
            cpu_ratio = _median(r.cpu_ratio for r in rounds)
            summary[f"{name}_ratio{suffix}"] = ratio
            summary[f"{name}_cpu_ratio{suffix}"] = cpu_ratio
            values = (name, label, f"{_median(r.baseline.seconds for r in rounds):.2f}")
            values += (f"{upsert:.2f}", f"{rows / upsert:.0f}", f"{ratio:.2f}")
            values += (f"{_median(r.baseline.cpu_s for r in rounds):.2f}",)
            values += (f"{_median(r.upsert.cpu_s for r in rounds):.2f}", f"{cpu_ratio:.2f}")
            values += (f"{_median(r.heap.cpu_s for r in rounds):.2f}",)
            values += (f"{_median(r.heap_cpu_ratio for r in rounds):.2f}",)
            reruns = [r.rerun.seconds for r in rounds if r.rerun]
            updates = [r.update.seconds for r in rounds if r.update]
            values += (f"{_median(reruns):.2f}" if reruns else "-",)
            values += (f"{_median(updates):.2f}" if updates else "-",)
            print(" ".join(f"{v:>12}" for v in values))
        if result.big_rows:
            print(f"  {name}: {result.big_rows:,} rows of other connections added in "
                  f"{result.fill_s:.0f} s")  # fmt: skip
        for problem in result.problems:
            print(f"  {name}: {problem}")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--big-rows",
        type=int,
        default=10_000_000,
        help="rows of other connections in the facts table for the second run (0: skip it)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    facts = make_facts(args.rows)
    results: dict[str, Results] = {}
    with tempfile.TemporaryDirectory(prefix="writevue-bench-warehouse-") as scratch:
        workdir = Path(scratch)
        results["sqlite"] = run_sqlite(workdir, facts, args)
        if not args.no_postgres:
            try:
                with scratch_postgres_database() as url:
                    results["postgres"] = run_postgres(url, workdir, facts, args)
            except PostgresUnavailable as exc:  # a missing server is reported, not fatal
                print(f"PostgreSQL skipped: {exc}")
            except Exception as exc:  # so is a failure there: the SQLite figures still print
                print(f"PostgreSQL skipped: {type(exc).__name__}")
    summary = print_report(args.rows, results)
    keys = ["sqlite_ratio", "postgres_ratio", "sqlite_ratio_10m", "postgres_ratio_10m"]
    keys += ["sqlite_cpu_ratio", "postgres_cpu_ratio", "sqlite_cpu_ratio_10m"]
    keys += ["postgres_cpu_ratio_10m"]
    print(
        f"rows={args.rows} repeat={args.repeat} "
        + " ".join(f"{key}={summary.get(key, float('nan')):.2f}" for key in keys)
    )


if __name__ == "__main__":
    main()
