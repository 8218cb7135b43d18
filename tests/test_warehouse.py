"""Warehouse writes are idempotent upserts; the cursor moves only with them."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest
from support import add_stripe_connection, fetch_to_staging

from writevue_pipelines import refresh, registry, warehouse
from writevue_pipelines.errors import SourceError
from writevue_pipelines.home import init_home
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings
from writevue_pipelines.sources import get_source


def _connection(rt, sandbox_url: str):
    return add_stripe_connection(rt, sandbox_url, "sk_test_warehouse")


def test_refresh_twice_writes_no_duplicate_rows(any_runtime, sandbox):
    rt = any_runtime
    tenant, connection = _connection(rt, sandbox.url)
    fetch_to_staging(rt, connection)
    first = refresh.load_connection(rt, connection)
    with rt.db.session() as session:
        count = warehouse.connection_fact_count(session, connection)
        cursor = registry.get_cursor(session, connection, "balance_transactions")
    assert first.facts == count > 0 and cursor is not None
    fetch_to_staging(rt, connection)
    refresh.load_connection(rt, connection)
    with rt.db.session() as session:
        assert warehouse.duplicate_keys(session, connection) == 0
        assert warehouse.connection_fact_count(session, connection) == count
        facts = warehouse.tenant_facts(session, tenant, dt.date(2000, 1, 1), dt.date(2100, 1, 1))
    assert set(facts["metric"]) == set(get_source("stripe").metrics)


def test_rerun_of_the_same_upsert_changes_no_row(any_runtime, sandbox):
    rt = any_runtime
    _tenant, connection_id = _connection(rt, sandbox.url)
    facts = pl.DataFrame(
        {
            "metric": ["m", "m"],
            "dimension": ["", "eur"],
            "day": [dt.date(2026, 1, 1)] * 2,
            "value": [1.0, 2.5],
        }
    )
    with rt.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        assert warehouse.upsert_facts(session, connection, facts, window_start=None).written == 2
    with rt.db.session() as session:
        again = warehouse.upsert_facts(session, connection, facts, window_start=None)
    assert again.written == 0 and again.rows == 2


def test_days_the_source_no_longer_reports_are_removed_inside_the_window(runtime, sandbox):
    rt = runtime
    _tenant, connection_id = _connection(rt, sandbox.url)
    day = dt.date(2026, 3, 1)
    with rt.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        frame = pl.DataFrame(
            {
                "metric": ["m", "m"],
                "dimension": ["", ""],
                "day": [day, day + dt.timedelta(1)],
                "value": [1.0, 1.0],
            }
        )
        warehouse.upsert_facts(session, connection, frame, window_start=None)
        result = warehouse.upsert_facts(session, connection, frame.head(1), window_start=day)
    assert result.removed == 1


def test_failed_load_leaves_facts_and_cursor_untouched(any_runtime, sandbox, monkeypatch):
    """A load that fails after it wrote facts and moved the cursor, in its one transaction,
    leaves both as they were: they roll back together."""
    rt = any_runtime
    _tenant, connection = _connection(rt, sandbox.url)
    fetch_to_staging(rt, connection)
    refresh.load_connection(rt, connection)

    def state(session):
        return (
            warehouse.connection_fact_count(session, connection),
            registry.get_cursor(session, connection, "balance_transactions"),
        )

    with rt.db.session() as session:
        before = state(session)
    # The next load stages different figures (one record: the window's other days go)
    # and a new cursor, so a load that commits would change both.
    staged = rt.settings.staging_dir / connection
    fetch_to_staging(rt, connection)
    one_record = refresh.read_staged_records(rt, connection).head(1)
    refresh.write_staged_records(rt, connection, one_record)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest.update(next_cursor="cursor-of-the-failed-load", window_start="2000-01-01")
    (staged / "manifest.json").write_text(json.dumps(manifest))

    inside: list[tuple[int, str | None]] = []

    record_loads = registry.record_loads

    def fail_once_written(session, *args, **kwargs):
        # The load's last step, in its transaction: facts and cursor are already written.
        record_loads(session, *args, **kwargs)
        inside.append(state(session))
        raise RuntimeError("the database went away in the middle of the load")

    monkeypatch.setattr(registry, "record_loads", fail_once_written)
    with pytest.raises(RuntimeError, match="went away"):
        refresh.load_connection(rt, connection)
    (written,) = inside
    assert written[0] != before[0] and written[1] == "cursor-of-the-failed-load"
    with rt.db.session() as session:
        assert state(session) == before


def _staging_unwritable(rt) -> None:
    """A file where the staging folder goes: anything staged on disk fails (for root too)."""
    staging = rt.settings.staging_dir
    if staging.exists():
        staging.rmdir()
    staging.write_text("not a folder")


def test_a_refresh_hands_records_to_their_load_in_memory_and_stages_nothing_on_disk(
    any_runtime, sandbox
):
    """A refresh run's fetch hands each connection's records to its load in memory: with
    no staging folder to write to, it still refreshes, and no raw record touches disk."""
    rt = any_runtime
    _tenant, connection = _connection(rt, sandbox.url)
    _staging_unwritable(rt)
    outcome = refresh.refresh_connections(rt, [connection])[connection]
    assert outcome.error is None, outcome.error
    assert outcome.loaded.facts == outcome.loaded.written > 0
    with rt.db.session() as session:
        assert registry.get_cursor(session, connection, "balance_transactions") is not None
        assert registry.get_connection(session, connection).last_refreshed_at is not None


def test_records_past_the_memory_budget_wait_for_their_load_on_disk(home, sandbox, monkeypatch):
    """Past WRITEVUE_STAGING_MEMORY_MB (0: at once) a fetched connection's records are
    staged on disk: without a folder to stage in, its refresh fails, saying why."""
    monkeypatch.setenv("WRITEVUE_STAGING_MEMORY_MB", "0")
    settings = Settings.from_env()
    init_home(settings)
    rt = Runtime(settings)
    try:
        _tenant, connection = _connection(rt, sandbox.url)
        _staging_unwritable(rt)
        outcome = refresh.refresh_connections(rt, [connection])[connection]
        assert isinstance(outcome.error, NotADirectoryError), outcome.error
        assert outcome.loaded is None
    finally:
        rt.close()


def test_the_handoff_holds_records_within_its_budget_and_gives_them_back_once():
    records = pl.DataFrame({"metric": ["m"] * 500, "day": [dt.date(2026, 1, 1)] * 500})
    manifest = {"window_start": "2026-01-01"}
    probe = refresh.Handoff(10**9)
    assert probe.keep("probe", records, manifest)
    size = probe.held_bytes
    assert 0 < size < records.estimated_size()  # held compressed

    handoff = refresh.Handoff(2 * size)
    assert handoff.keep("a", records, manifest) and handoff.keep("a", records, manifest)
    assert handoff.held_bytes == size  # held again in place of the first, counted once
    assert handoff.keep("b", records, manifest)
    assert not handoff.keep("c", records, manifest)  # past the budget: the caller stages it
    assert handoff.held_bytes == 2 * size
    taken, taken_manifest = handoff.take("a")
    assert taken.equals(records) and taken_manifest == manifest
    assert handoff.take("a") is None and handoff.take("c") is None
    assert handoff.held_bytes == size
    assert handoff.keep("c", records, manifest)  # room again


def test_staged_raw_records_are_deleted_once_aggregated(runtime, sandbox):
    _tenant, connection = _connection(runtime, sandbox.url)
    fetch_to_staging(runtime, connection)
    assert (runtime.settings.staging_dir / connection / "records.parquet").exists()
    refresh.load_connection(runtime, connection)
    assert not (runtime.settings.staging_dir / connection).exists()
    with pytest.raises(SourceError, match="nothing staged"):
        refresh.load_connection(runtime, connection)


def test_snapshot_history_survives_later_refreshes(runtime, sandbox):
    """Stars on Monday stay Monday's stars when Tuesday's refresh only sees Tuesday."""
    _tenant, connection_id = _connection(runtime, sandbox.url)
    monday, tuesday = dt.date(2026, 3, 2), dt.date(2026, 3, 3)

    def snapshot(day, value):
        return pl.DataFrame(
            {"metric": ["stars"], "dimension": ["o/r"], "day": [day], "value": [value]}
        )

    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        warehouse.upsert_facts(session, connection, snapshot(monday, 10.0), window_start=monday)
        result = warehouse.upsert_facts(
            session,
            connection,
            snapshot(tuesday, 12.0),
            window_start=monday,
            snapshot_metrics=frozenset({"stars"}),
        )
    assert result.removed == 0
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, connection_id) == 2


def _facts_frame(*rows) -> pl.DataFrame:
    return warehouse.normalise_facts(
        pl.DataFrame(list(rows), schema=warehouse.FACT_SCHEMA, orient="row")
    )


def test_connections_upserted_together_write_what_each_writes_alone(any_runtime, sandbox):
    """``upsert_facts_many`` compares and writes several connections' facts in one read
    and one statement of each kind: each connection ends with the rows, and reports the
    counts, that ``upsert_facts`` of it alone gives, whatever the others bring."""
    rt = any_runtime
    d1, d2, d3, d4 = (dt.date(2026, 5, day) for day in (1, 2, 3, 4))
    cases = [
        # (stored before, facts brought, window start, snapshot metrics, written, removed)
        (
            [("m", "", d1, 1.0), ("m", "", d2, 2.0), ("m", "", d3, 3.0), ("m", "x", d3, 5.0),
             ("s", "", d2, 7.0)],
            [("m", "", d2, 2.5), ("m", "", d3, 3.0), ("m", "", d4, 4.0), ("s", "", d4, 8.0)],
            d2, frozenset({"s"}), 3, 1,
        ),
        ([], [("m", "", d1, 1.0), ("n", "eu", d1, 2.0)], None, frozenset(), 2, 0),
        ([("m", "", d1, 1.0), ("m", "", d2, 2.0)], [], d2, frozenset(), 0, 1),
        ([("m", "", d1, 1.0)], [], None, frozenset(), 0, 0),
        ([("m", "", d3, 1.0)], [("m", "", d3, 1.0)], d1, frozenset(), 0, 0),
    ]  # fmt: skip

    def connections(name: str) -> list:
        ids = [
            add_stripe_connection(rt, sandbox.url, f"sk_test_{name}{i}", name=f"{name} {i}")[1]
            for i in range(len(cases))
        ]
        with rt.db.session() as session:
            found = [registry.get_connection(session, connection_id) for connection_id in ids]
            for connection, (before, *_rest) in zip(found, cases, strict=True):
                if before:
                    warehouse.upsert_facts(
                        session, connection, _facts_frame(*before), window_start=None
                    )
        return found

    together, alone = connections("together"), connections("alone")
    writes = [
        warehouse.FactsWrite(connection, _facts_frame(*brought), window, snapshot)
        for connection, (_before, brought, window, snapshot, *_counts) in zip(
            together, cases, strict=True
        )
    ]
    with rt.db.session() as session:
        summaries = warehouse.upsert_facts_many(session, writes)
    with rt.db.session() as session:
        each = [
            warehouse.upsert_facts(
                session, connection, write.facts, window_start=write.window_start,
                snapshot_metrics=write.snapshot_metrics,
            )
            for connection, write in zip(alone, writes, strict=True)
        ]  # fmt: skip
    assert summaries == each
    assert [(s.written, s.removed) for s in summaries] == [case[-2:] for case in cases]
    with rt.db.session() as session:
        for batched, single in zip(together, alone, strict=True):
            rows = [
                warehouse.tenant_facts(session, c.tenant_id, d1, d4).sort(["day", "metric"]).rows()
                for c in (batched, single)
            ]
            assert rows[0] == rows[1]
    with rt.db.session() as session:
        first = warehouse.tenant_facts(session, together[0].tenant_id, d1, d4)
    assert sorted(first.select("metric", "dimension", "day", "value").rows()) == [
        ("m", "", d1, 1.0), ("m", "", d2, 2.5), ("m", "", d3, 3.0), ("m", "", d4, 4.0),
        ("s", "", d2, 7.0), ("s", "", d4, 8.0),
    ]  # fmt: skip


def test_an_sqlite_with_fewer_bound_parameters_takes_fewer_rows_a_statement(runtime, sandbox):
    """Facts go to SQLite in INSERTs of many rows; an SQLite that allows 999 bound
    parameters (the limit before 3.32) gets statements that fit it."""
    import sqlite3

    _tenant, connection_id = _connection(runtime, sandbox.url)
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=n) for n in range(400)]
    facts = pl.DataFrame(
        {
            "metric": ["m"] * 800,
            "dimension": ["a", "b"] * 400,
            "day": [day for day in days for _ in range(2)],
            "value": [float(n) for n in range(800)],
        }
    )
    with runtime.db.session() as session:
        raw = session.connection().connection.driver_connection
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        connection = registry.get_connection(session, connection_id)
        assert warehouse.upsert_facts(session, connection, facts, window_start=None).written == 800
        changed = facts.with_columns(pl.col("value") + 0.5)
        again = warehouse.upsert_facts(session, connection, changed, window_start=None)
        assert again.written == 800
    with runtime.db.session() as session:
        assert warehouse.connection_fact_count(session, connection_id) == 800
