"""Loads of connections staged together share one write transaction and one aggregation,
and a connection that fails among them fails alone.

A refresh run's loader takes every connection staged while its last load ran
(``refresh.load_connections``): their records are aggregated together, source by source,
and written in one transaction, their facts in one statement of each kind, so one write
lock and one commit serve them all. Whatever one connection's load refuses (an erased
connection, facts that are not aggregates, nothing staged, a write the database refuses)
is that connection's outcome alone: the others' facts and cursors are stored as if each
had been loaded by itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import polars as pl
from sqlalchemy import event, func, select
from support import add_connection, new_stripe_key, stripe_connections
from test_rest_source import KEY as REST_KEY
from test_rest_source import _spec, _write_spec

from writevue_pipelines import refresh, registry, warehouse
from writevue_pipelines.aggregates_only import AggregatesRefused
from writevue_pipelines.errors import SourceError
from writevue_pipelines.models import Fact
from writevue_pipelines.privacy.erasure import mark_erasing, request_erasure
from writevue_pipelines.sources import get_source


def _rest_connection(runtime, sandbox, tmp_path, name: str, **mapping) -> str:
    spec = _spec("page_number")
    spec["mapping"].update(mapping)
    path = _write_spec(tmp_path, spec, f"spec{len(list(tmp_path.iterdir()))}.toml")
    options = get_source("rest").validate_options({"spec": str(path), "base_url": sandbox.url})
    _tenant, connection = add_connection(
        runtime, "rest", "api_key", options, {"api_key": REST_KEY}, name=name, email="o@s.test"
    )
    return connection


def _stage(runtime, connection_ids: list[str]) -> None:
    """Fetch them as a run does, staged on disk (no handoff): each load reads its files."""
    fetched = asyncio.run(refresh.fetch_connections(runtime, connection_ids))
    failed = {k: v for k, v in fetched.items() if isinstance(v, BaseException)}
    assert not failed, failed


def _commits(runtime) -> list[int]:
    """A list that grows by one at each commit on the warehouse's engine."""
    commits: list[int] = []
    event.listen(runtime.db.engine, "commit", lambda _conn: commits.append(1))
    return commits


def _stored(runtime, connection_id: str, stream: str):
    with runtime.db.session() as session:
        return (
            warehouse.connection_fact_count(session, connection_id),
            registry.get_cursor(session, connection_id, stream),
        )


def test_connections_staged_together_are_loaded_in_one_transaction(any_runtime, sandbox, tmp_path):
    runtime = any_runtime
    keys = [new_stripe_key() for _ in range(4)]
    stripe = stripe_connections(runtime, sandbox.url, keys, "Batch", "b@batch.test")
    rest = [_rest_connection(runtime, sandbox, tmp_path, f"shop{i}") for i in range(2)]
    everyone = [stripe[0], rest[0], *stripe[1:], rest[1]]
    _stage(runtime, everyone)

    commits = _commits(runtime)
    loaded = refresh.load_connections(runtime, everyone)
    assert len(commits) == 1  # one write transaction (one write lock) for all six
    assert list(loaded) == everyone
    for connection_id, summary in loaded.items():
        assert isinstance(summary, refresh.LoadSummary), summary
        stream = "records" if connection_id in rest else "balance_transactions"
        facts, cursor = _stored(runtime, connection_id, stream)
        assert summary.facts == summary.written == facts > 0 and cursor is not None
        assert not (runtime.settings.staging_dir / connection_id).exists()

    # Twins reading the same accounts, loaded one at a time, store exactly the same facts.
    twins = stripe_connections(runtime, sandbox.url, keys, "Twin", "t@twin.test")
    twins += [_rest_connection(runtime, sandbox, tmp_path, f"twin{i}") for i in range(2)]
    _stage(runtime, twins)
    for twin in twins:
        refresh.load_connection(runtime, twin)
    for batched, alone in zip([*stripe, *rest], twins, strict=True):
        assert _facts(runtime, batched) == _facts(runtime, alone)


def _facts(runtime, connection_id: str) -> list[tuple]:
    with runtime.db.session() as session:
        return session.execute(
            select(Fact.day, Fact.metric, Fact.dimension, Fact.value)
            .where(Fact.connection_id == connection_id)
            .order_by(Fact.day, Fact.metric, Fact.dimension)
        ).all()


def test_a_connection_that_fails_in_a_batch_fails_alone(runtime, sandbox, tmp_path):
    good = stripe_connections(
        runtime, sandbox.url, [new_stripe_key() for _ in range(2)], "Good", "g@good.test"
    )
    refused = _rest_connection(
        runtime, sandbox, tmp_path, "Per order", dimension={"field": "id", "categorical": True}
    )
    erased_tenant, erased = add_connection(
        runtime,
        "stripe",
        "api_key",
        {"base_url": sandbox.url},
        {"api_key": new_stripe_key()},
        name="Leaving",
        email="l@leaving.test",
    )
    unstaged, garbled = stripe_connections(
        runtime, sandbox.url, [new_stripe_key(), new_stripe_key()], "Idle", "i@idle.test"
    )
    _stage(runtime, [good[0], refused, erased, good[1]])
    mark_erasing(runtime, request_erasure(runtime, erased_tenant, "alice"))
    # Records its source cannot aggregate, held in memory for the load as a run holds them.
    handoff = refresh.Handoff(10**8)
    manifest = {"window_start": dt.date.today().isoformat(), "source": "stripe"}
    assert handoff.keep(garbled, pl.DataFrame({"unexpected": [1.0]}), manifest)

    commits = _commits(runtime)
    batch = [good[0], refused, garbled, erased, unstaged, good[1]]
    loaded = refresh.load_connections(runtime, batch, handoff=handoff)
    assert len(commits) == 1
    assert isinstance(loaded[garbled], pl.exceptions.ColumnNotFoundError)

    assert isinstance(loaded[refused], AggregatesRefused)
    assert str(loaded[refused]).startswith(f"connection {refused}: dimension 'id'")
    assert isinstance(loaded[erased], registry.ConnectionErased)
    assert isinstance(loaded[unstaged], SourceError)
    assert "nothing staged" in str(loaded[unstaged])
    for connection_id in good:
        summary = loaded[connection_id]
        assert isinstance(summary, refresh.LoadSummary), summary
        facts, cursor = _stored(runtime, connection_id, "balance_transactions")
        assert summary.facts == facts > 0 and cursor is not None
    # The failed ones wrote nothing and moved no cursor; their raw records are gone.
    assert _stored(runtime, refused, "records") == (0, None)
    assert _stored(runtime, erased, "balance_transactions") == (0, None)
    assert _stored(runtime, garbled, "balance_transactions") == (0, None)
    for connection_id in (refused, erased):
        assert not (runtime.settings.staging_dir / connection_id).exists()
    with runtime.db.session() as session:
        stored = session.scalar(
            select(func.count()).select_from(Fact).where(Fact.connection_id.in_(batch))
        )
    assert stored == sum(loaded[c].facts for c in good)


def test_a_refresh_run_loads_what_was_staged_meanwhile_in_one_go(runtime, sandbox, monkeypatch):
    """The run's loader takes every connection staged while its previous load ran."""
    connections = stripe_connections(
        runtime, sandbox.url, [new_stripe_key() for _ in range(8)], "Run", "r@run.test"
    )
    batches: list[list[str]] = []
    real = refresh.load_connections

    def watched(runtime, connection_ids, **kwargs):
        batches.append(list(connection_ids))
        if len(batches) == 1:
            # The first load is slow (another run holds the write lock, say): every other
            # connection is staged before it ends.
            import time

            time.sleep(1.5)
        return real(runtime, connection_ids, **kwargs)

    monkeypatch.setattr(refresh, "load_connections", watched)
    outcomes = refresh.refresh_connections(runtime, connections)
    assert all(o.error is None and o.loaded.facts > 0 for o in outcomes.values())
    assert sorted(c for batch in batches for c in batch) == sorted(connections)
    assert len(batches) == 2, batches  # the first connection, then the seven staged meanwhile
    since = dt.date(2000, 1, 1)
    with runtime.db.session() as session:
        for connection_id in connections:
            assert warehouse.daily_totals(session, connection_id, since)


def test_an_erasure_waits_for_a_batch_writing_its_connections_then_deletes_their_rows(
    any_runtime, sandbox, monkeypatch
):
    """A batch holds every connection it writes from its start, locked in one order (the
    erasure's), so a tenant's erasure that starts mid-batch waits for its commit, then
    deletes what it wrote: neither waits for the other for ever, nothing is left."""
    import threading
    import time

    from writevue_pipelines.privacy import run_erasure, verify_erasure

    runtime = any_runtime
    other = stripe_connections(runtime, sandbox.url, [new_stripe_key()], "Stays", "s@stays.test")
    leaving = stripe_connections(
        runtime, sandbox.url, [new_stripe_key() for _ in range(3)], "Leaving", "l@leaving.test"
    )
    with runtime.db.session() as session:
        tenant = registry.get_connection(session, leaving[0]).tenant_id
    batch = [leaving[0], *other, *leaving[1:]]
    _stage(runtime, batch)

    writing, real = threading.Event(), warehouse.upsert_facts_many

    def slow_first(*args, **kwargs):
        if not writing.is_set():
            writing.set()
            time.sleep(1.0)  # the erasure starts while the batch writes its facts
        return real(*args, **kwargs)

    monkeypatch.setattr(warehouse, "upsert_facts_many", slow_first)
    loaded: dict = {}
    loader = threading.Thread(
        target=lambda: loaded.update(refresh.load_connections(runtime, batch))
    )
    loader.start()
    assert writing.wait(30)
    erased: dict = {}

    def erase() -> None:
        try:
            erased["report"] = run_erasure(runtime, tenant)
        except Exception as exc:  # a deadlock, say: reported by the assertion below
            erased["error"] = exc

    eraser = threading.Thread(target=erase)
    eraser.start()
    loader.join(60)
    eraser.join(60)
    assert not loader.is_alive() and not eraser.is_alive()
    assert all(isinstance(loaded[c], refresh.LoadSummary) for c in batch), loaded
    assert "error" not in erased, erased
    assert erased["report"].ok
    assert verify_erasure(runtime, tenant, leaving).ok
    assert _stored(runtime, other[0], "balance_transactions")[0] > 0
    with runtime.db.session() as session:
        left = session.scalar(
            select(func.count()).select_from(Fact).where(Fact.connection_id.in_(leaving))
        )
    assert left == 0


def _refuse_facts_of(runtime, connection_id: str) -> None:
    """Make the database itself refuse this connection's facts (a trigger), as a full
    disk or a broken constraint would refuse one connection's write."""
    with runtime.db.engine.begin() as connection:
        if runtime.db.engine.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_facts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'the test refuses these facts'; END $$"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_facts BEFORE INSERT ON facts FOR EACH ROW "
                f"WHEN (NEW.connection_id = '{connection_id}') EXECUTE FUNCTION refuse_facts()"
            )
        else:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_facts BEFORE INSERT ON facts "
                f"WHEN NEW.connection_id = '{connection_id}' "
                "BEGIN SELECT RAISE(ABORT, 'the test refuses these facts'); END"
            )


def test_a_connection_whose_write_fails_in_a_batch_fails_alone(any_runtime, sandbox):
    """The batch's facts go in one statement of each kind; when the database refuses one
    connection's, that write is undone and each connection is written alone: the refused
    one fails with the database's error, the others are stored, in the same commit."""
    runtime = any_runtime
    batch = stripe_connections(
        runtime, sandbox.url, [new_stripe_key() for _ in range(3)], "Some", "s@some.test"
    )
    _stage(runtime, batch)
    _refuse_facts_of(runtime, batch[1])

    commits = _commits(runtime)
    loaded = refresh.load_connections(runtime, batch)
    assert len(commits) == 1
    assert "the test refuses these facts" in str(loaded[batch[1]])
    assert _stored(runtime, batch[1], "balance_transactions") == (0, None)
    # Its staged records stay for the next try (the staging sweep drops them in time).
    assert (runtime.settings.staging_dir / batch[1]).exists()
    for connection_id in (batch[0], batch[2]):
        summary = loaded[connection_id]
        assert isinstance(summary, refresh.LoadSummary), summary
        facts, cursor = _stored(runtime, connection_id, "balance_transactions")
        assert summary.facts == summary.written == facts > 0 and cursor is not None
