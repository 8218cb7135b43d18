"""The fact table's schema: migration 0006 keeps every stored fact, and the key serves reads."""

from __future__ import annotations

import datetime as dt
import uuid

import polars as pl
import pytest
from sqlalchemy import create_engine, inspect, text
from support import add_connection, connection_info

from writevue_pipelines import warehouse
from writevue_pipelines.database import alembic_config, normalise_url


def _migrate(url: str, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


def test_upgrade_to_0006_keeps_every_fact(database_url):
    _migrate(database_url, "0005")
    engine = create_engine(normalise_url(database_url))
    tenant, connection = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name_ct, email_ct, created_at) VALUES (:t, :b, :b, :s)"),
            {"t": tenant, "b": b"x", "s": stamp},
        )
        conn.execute(
            text(
                "INSERT INTO connections (id, tenant_id, source, auth_kind, options, status, "
                "created_at) VALUES (:c, :t, 'stripe', 'api_key', '{}', 'active', :s)"
            ),
            {"c": connection, "t": tenant, "s": stamp},
        )
        conn.execute(
            text(
                "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, "
                "updated_at) VALUES (:t, :c, :m, :d, :day, :v, :s)"
            ),
            [
                {"t": tenant, "c": connection, "m": m, "d": d, "day": day, "v": v, "s": stamp}
                for m, d, day, v in [
                    ("revenue", "eur", dt.date(2026, 1, 2), 2.5),
                    ("revenue", "", dt.date(2026, 1, 1), 1.0),
                    ("orders", "", dt.date(2026, 1, 1), 3.0),
                ]
            ],
        )
    engine.dispose()

    _migrate(database_url, "head")

    engine = create_engine(normalise_url(database_url))
    try:
        key = inspect(engine).get_pk_constraint("facts")["constrained_columns"]
        assert key == ["tenant_id", "connection_id", "day", "metric", "dimension"]
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT metric, dimension, day, value FROM facts ORDER BY day, metric")
            ).all()
        assert [(m, d, str(day), v) for m, d, day, v in rows] == [
            ("orders", "", "2026-01-01", 3.0),
            ("revenue", "", "2026-01-01", 1.0),
            ("revenue", "eur", "2026-01-02", 2.5),
        ]
    finally:
        engine.dispose()


def test_facts_table_is_clustered_on_its_key_on_sqlite(runtime):
    with runtime.db.engine.connect() as conn:
        ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'facts'")).scalar()
        indexes = conn.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'facts'")
        ).all()
    assert "WITHOUT ROWID" in ddl and indexes == []


def test_a_tenants_view_reads_one_range_of_the_key_per_connection_on_sqlite(runtime):
    from sqlalchemy import event

    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "FROM facts" in statement:
            seen.append((statement, parameters))

    event.listen(runtime.db.engine, "before_cursor_execute", record)
    try:
        with runtime.db.session() as session:
            warehouse.tenant_facts(session, "t", dt.date(2026, 1, 1), dt.date(2026, 2, 1))
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", record)
    ((statement, parameters),) = seen
    with runtime.db.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    detail = " ".join(row[-1] for row in plan)
    assert (
        "SEARCH facts USING PRIMARY KEY (tenant_id=? AND connection_id=? AND day>? AND day<?)"
        in detail
    ), detail


def test_changed_new_and_gone_rows_in_one_upsert(any_runtime):
    rt = any_runtime
    tenant, connection_id = add_connection(rt, "stripe", "api_key", {}, {"api_key": "sk_test_x"})
    connection = connection_info(rt, connection_id)
    day = dt.date(2026, 3, 1)

    def frame(rows):
        return pl.DataFrame(rows, schema=warehouse.FACT_SCHEMA, orient="row")

    first = frame(
        [("m", "", day, 1.0), ("m", "eur", day, 2.0), ("m", "", day + dt.timedelta(1), 3.0)]
    )
    with rt.db.session() as session:
        assert warehouse.upsert_facts(session, connection, first, window_start=day).written == 3
    second = frame([("m", "", day, 1.0), ("m", "eur", day, 5.0), ("n", "", day, 7.0)])
    with rt.db.session() as session:
        summary = warehouse.upsert_facts(session, connection, second, window_start=day)
        stored = warehouse.tenant_facts(session, tenant, day, day + dt.timedelta(5))
    assert (summary.written, summary.removed) == (2, 1)
    assert sorted(stored.iter_rows()) == sorted(second.iter_rows())
    with rt.db.session() as session:
        again = warehouse.upsert_facts(session, connection, second, window_start=day)
    assert (again.written, again.removed) == (0, 0)
