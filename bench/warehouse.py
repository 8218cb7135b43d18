"""Benchmark: warehouse upsert throughput on SQLite and PostgreSQL against plain bulk loads.

    python -m bench.warehouse --rows 1000000

For each database, the same ``rows`` facts (one connection, metrics x dimensions x
days) are written three ways in the same session:

- baseline: the fastest plain load of the same rows (tenant and connection UUIDs
  included) into a fresh table of the same columns with no index (PostgreSQL ``COPY``;
  SQLite ``executemany`` of a plain ``INSERT``);
- upsert: ``warehouse.upsert_facts`` into the real ``facts`` table, empty for this
  connection (its primary key maintained);
- rerun: the same upsert again, which must change no row.

ratio = baseline time / upsert time (1.0: as fast as the plain load). PostgreSQL is
skipped when the server (WRITEVUE_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres) does not answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import polars as pl

from bench.scratch import PostgresUnavailable, scratch_postgres_database


def make_facts(rows: int) -> pl.DataFrame:
    metrics, dimensions = 10, 100
    days = max(1, -(-rows // (metrics * dimensions)))
    frame = (
        pl.DataFrame({"metric": [f"metric_{m}" for m in range(metrics)]})
        .join(pl.DataFrame({"dimension": [f"dim_{d:03d}" for d in range(dimensions)]}), how="cross")
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


def sqlite_baseline(path: Path, facts: pl.DataFrame) -> float:
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
        conn.execute(
            "CREATE TABLE baseline (tenant_id TEXT, connection_id TEXT, metric TEXT, "
            "dimension TEXT, day TEXT, value REAL, updated_at TEXT)"
        )
        start = time.perf_counter()
        conn.executemany("INSERT INTO baseline VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
        return time.perf_counter() - start


def postgres_baseline(url: str, facts: pl.DataFrame) -> float:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE baseline (tenant_id text, connection_id text, metric text, "
            "dimension text, day date, value double precision, updated_at timestamptz)"
        )
        conn.commit()
        now = dt.datetime.now(dt.UTC)
        ids = (BASELINE_TENANT, BASELINE_CONNECTION)
        start = time.perf_counter()
        with cursor.copy(
            "COPY baseline (tenant_id, connection_id, metric, dimension, day, value, updated_at) "
            "FROM STDIN"
        ) as copy:
            for metric, dimension, day, value in facts.iter_rows():
                copy.write_row((*ids, metric, dimension, day, value, now))
        conn.commit()
        return time.perf_counter() - start


def upsert_three_times(
    database_url: str, home: Path, facts: pl.DataFrame
) -> list[tuple[float, int]]:
    """(seconds, rows changed) of: the first upsert, its rerun, an upsert changing every value."""
    os.environ["WRITEVUE_HOME"] = str(home)
    os.environ["WRITEVUE_DATABASE_URL"] = database_url
    from writevue_pipelines import registry, warehouse
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    try:
        with runtime.db.session() as session:
            tenant = registry.add_tenant(session, runtime.keys, "Bench", "bench@example.com")
            connection_id = registry.add_connection(
                session, runtime.keys, tenant, "stripe", "api_key", {}, {"api_key": "sk_test_bench"}
            )
            connection = registry.get_connection(session, connection_id)
        window = facts["day"].min()
        passes = []
        for frame in (facts, facts, facts.with_columns(pl.col("value") + 1)):
            start = time.perf_counter()
            with runtime.db.session() as session:
                summary = warehouse.upsert_facts(session, connection, frame, window_start=window)
            passes.append((time.perf_counter() - start, summary.written + summary.removed))
        return passes
    finally:
        runtime.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    facts = make_facts(args.rows)
    workdir = Path(tempfile.mkdtemp(prefix="writevue-bench-warehouse-"))
    results: dict[str, tuple[float, list[tuple[float, int]]]] = {}

    base = sqlite_baseline(workdir / "baseline.db", facts)
    results["sqlite"] = (
        base,
        upsert_three_times(
            f"sqlite:///{workdir / 'sqlite-home' / 'warehouse.db'}", workdir / "sqlite-home", facts
        ),
    )

    try:
        with scratch_postgres_database() as url:
            base = postgres_baseline(url, facts)
            results["postgres"] = (base, upsert_three_times(url, workdir / "postgres-home", facts))
    except PostgresUnavailable as exc:  # a missing server is reported, not fatal
        print(f"PostgreSQL skipped: {exc}")
    except Exception as exc:  # so is a failure there: the SQLite figures still print
        print(f"PostgreSQL skipped: {type(exc).__name__}")

    columns = ("database", "baseline s", "upsert s", "rows/s", "ratio", "rerun s", "changed")
    columns += ("update-all s", "update ratio")
    print(" ".join(f"{c:>12}" for c in columns))
    ratios = {}
    for name, (base, passes) in results.items():
        (first, wrote), (rerun, rewrote), (update, updated) = passes
        ratios[name] = base / first
        values = (name, f"{base:.2f}", f"{first:.2f}", f"{args.rows / first:.0f}")
        values += (f"{ratios[name]:.2f}", f"{rerun:.2f}", f"{rewrote}", f"{update:.2f}")
        values += (f"{base / update:.2f}",)
        print(" ".join(f"{v:>12}" for v in values))
        if wrote != args.rows or rewrote != 0 or updated != args.rows:
            print(f"  {name}: wrote {wrote}, rerun changed {rewrote}, update changed {updated}")
    print(
        f"sqlite_ratio={ratios.get('sqlite', float('nan')):.2f} "
        f"postgres_ratio={ratios.get('postgres', float('nan')):.2f}"
    )


if __name__ == "__main__":
    main()
