"""The dashboard benchmark's throwaway warehouse: tenants x 20 metrics x 730 days of facts.

SQLite is loaded with ``executemany`` in big transactions, PostgreSQL with ``COPY``: the
fastest plain loads, since loading is set-up here, not what is measured.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.scratch import scratch_postgres_database

if TYPE_CHECKING:
    from writevue_pipelines.runtime import Runtime

METRICS = [f"metric_{i:02d}" for i in range(20)]
DAYS = 730


@dataclass
class ScratchWarehouse:
    """A loaded warehouse in a throwaway WRITEVUE_HOME, and what it took to load it."""

    runtime: Runtime
    #: WRITEVUE_HOME and WRITEVUE_DATABASE_URL: how a server process finds this warehouse
    env: dict[str, str]
    #: (tenant id, connection id) per tenant
    tenants: list[tuple[str, str]]
    facts: int
    #: seconds to add the tenants and load their facts
    load_s: float


@contextlib.contextmanager
def scratch_warehouse(
    tenant_count: int, today: dt.date, *, postgres: bool = False
) -> Iterator[ScratchWarehouse]:
    """A fresh home whose warehouse (SQLite, or a new PostgreSQL database) holds
    ``tenant_count`` tenants' facts; closed and removed, database included, on exit.

    With ``postgres``, raises ``bench.scratch.PostgresUnavailable`` when the server does
    not answer.
    """
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(scratch_postgres_database()) if postgres else ""
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="writevue-bench-"))
        home = Path(scratch) / "home"
        env = {"WRITEVUE_HOME": str(home), "WRITEVUE_DATABASE_URL": url}
        settings = Settings.from_env(env)
        init_home(settings)
        runtime = Runtime(settings)
        stack.callback(runtime.close)
        started = time.perf_counter()
        tenants = make_tenants(runtime, tenant_count)
        if postgres:
            count = fill_postgres(url, tenants, today)
        else:
            count = fill_sqlite(home / "warehouse.db", tenants, today)
        yield ScratchWarehouse(runtime, env, tenants, count, time.perf_counter() - started)


def _value(tenant: int, metric: int, day: int) -> float:
    return float((tenant * 7919 + metric * 104_729 + day * 31) % 10_000) / 10


#: the layout every bench tenant gets: 20 metrics, 16 stored and 4 calculated from
#: others, as an agency's template would have them (cards, sparklines, line and bar charts)
TEMPLATE = {
    "name": "bench",
    "comparison": "previous",
    "sections": [
        {
            "title": f"Section {s}",
            "items": [
                {"metric": f"rest.{METRICS[s * 4 + i]}", "chart": ("number", "line", "bar")[i % 3]}
                for i in range(4)
            ],
        }
        for s in range(4)
    ]
    + [
        {
            "title": "Calculated",
            "items": [{"metric": f"calc.c{i}", "chart": "line"} for i in range(4)],
        }
    ],
    "calculated": [
        {"name": "c0", "label": "Ratio", "formula": "rest.metric_16 / rest.metric_17"},
        {"name": "c1", "label": "Sum", "formula": "rest.metric_18 + rest.metric_19"},
        {
            "name": "c2",
            "label": "Net",
            "formula": "rest.metric_16 - rest.metric_18 - rest.metric_19",
        },
        {
            "name": "c3",
            "label": "Share",
            "formula": "rest.metric_17 / (rest.metric_17 + rest.metric_19)",
            "unit": "percent",
        },
    ],
}


def make_tenants(runtime, count: int) -> list[tuple[str, str]]:
    """(tenant id, connection id) per tenant, names encrypted as in production, each with
    the ``TEMPLATE`` layout applied."""
    from writevue_pipelines import registry, templates

    made = []
    with runtime.db.session() as session:
        for n in range(count):
            tenant_id = registry.add_tenant(
                session, runtime.keys, f"Bench tenant {n}", f"t{n}@bench.test"
            )
            connection_id = registry.add_connection(
                session,
                runtime.keys,
                tenant_id,
                # a declarative REST connection: its metrics are whatever its spec names
                "rest",
                "api_key",
                {"base_url": "http://127.0.0.1:9", "spec": "/nonexistent/bench.toml"},
                {"api_key": f"rk_bench_{n:06d}_xxxxxxxx"},
            )
            registry.record_refresh_result(session, connection_id, error=None)
            made.append((tenant_id, connection_id))
        templates.save_template(session, templates.Template.from_json(TEMPLATE), replace=True)
        templates.apply_template(session, "bench", [t for t, _ in made])
    return made


def _rows(tenants: list[tuple[str, str]], today: dt.date, stamp: str):
    for t, (tenant_id, connection_id) in enumerate(tenants):
        for m, metric in enumerate(METRICS):
            for d in range(DAYS):
                day = (today - dt.timedelta(days=d)).isoformat()
                yield tenant_id, connection_id, metric, "", day, _value(t, m, d), stamp


def fill_sqlite(path: Path, tenants, today: dt.date) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    written, batch = 0, []
    insert = (
        "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    for row in _rows(tenants, today, stamp):
        batch.append(row)
        if len(batch) >= 200_000:
            with connection:
                connection.executemany(insert, batch)
            written += len(batch)
            batch = []
    with connection:
        connection.executemany(insert, batch)
    written += len(batch)
    connection.execute("ANALYZE")
    connection.close()
    return written


def fill_postgres(url: str, tenants, today: dt.date) -> int:
    import psycopg

    stamp = dt.datetime.now(dt.UTC)
    written = 0
    with psycopg.connect(url) as connection:
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY facts (tenant_id, connection_id, metric, dimension, day, value, updated_at)"
                " FROM STDIN"
            ) as copy:
                for row in _rows(tenants, today, ""):
                    copy.write_row((*row[:6], stamp))
                    written += 1
        connection.execute("ANALYZE facts")
    return written
