"""It's your data; deleted on request: erasure leaves nothing, revokes grants, spares others.

The checks here do not trust the erasure's own verification: they read every table
of the live database, every file under WRITEVUE_HOME and, on SQLite, the raw bytes
of the database file after a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import io
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import polars as pl
import pytest
from sqlalchemy import Column, ForeignKey, MetaData, String, Table, func, select, text, update
from support import (
    SandboxOAuthSource,
    add_connection,
    add_stripe_connection,
    add_tenant,
    fetch_to_staging,
    register_oauth_source,
    remember_secret,
)

from writevue_pipelines import cli, invites, links, refresh, registry, warehouse
from writevue_pipelines.models import Connection, DeletionRequest, Fact, metadata
from writevue_pipelines.oauth.flow import (
    begin_authorization,
    complete_authorization,
    parse_callback,
)
from writevue_pipelines.privacy import (
    list_events,
    pending_requests,
    record_access,
    request_erasure,
    run_erasure,
    verify_erasure,
)
from writevue_pipelines.privacy.erasure import mark_erasing
from writevue_pipelines.privacy.scope import tenant_clause

CALLBACK = "https://connect.writevue.test/oauth/callback"
NAME, EMAIL = "Erasable Widgets GmbH", "privacy-officer@erasable.test"


class GrantSource(SandboxOAuthSource):
    name = "grant_probe"


@pytest.fixture
def grants(sandbox, monkeypatch):
    register_oauth_source(monkeypatch, GrantSource())
    return sandbox


def _options(sandbox) -> dict[str, str]:
    return {"base_url": sandbox.url, "auth_base_url": sandbox.url}


def _connect_oauth(runtime, sandbox, tenant_id: str) -> str:
    url = begin_authorization(runtime, tenant_id, GrantSource.name, _options(sandbox), CALLBACK)
    location = httpx.get(url, follow_redirects=False).headers["location"]
    remember_secret(parse_qs(urlsplit(location).query)["code"][0])
    return complete_authorization(runtime, *parse_callback(location))


def _client(runtime, sandbox, name: str, email: str, key: str) -> tuple[str, str]:
    """A tenant with a refreshed Stripe connection, a link and an audit event."""
    tenant_id, stripe = add_stripe_connection(
        runtime, sandbox.url, remember_secret(key), name=name, email=email
    )
    fetch_to_staging(runtime, stripe)
    refresh.load_connection(runtime, stripe)
    with runtime.db.session() as session:
        links.create_link(session, tenant_id, label="board room")
    record_access(runtime, "alice", "tenant.show", tenant_id)
    return tenant_id, stripe


def _everything(runtime, sandbox) -> dict:
    """Tenant A with one of everything, and tenant B beside it."""
    a, stripe = _client(runtime, sandbox, NAME, EMAIL, "sk_test_erasure_a_0001")
    oauth = _connect_oauth(runtime, sandbox, a)
    # a pending OAuth2 authorisation, an invite, and raw records a killed run left behind
    begin_authorization(runtime, a, GrantSource.name, _options(sandbox), CALLBACK)
    with runtime.db.session() as session:
        invites.create_invite(session, a, sources=["stripe"], options={}, expires_in_days=7)
    fetch_to_staging(runtime, stripe)
    b, b_stripe = _client(runtime, sandbox, "Keeper Ltd", "ops@keeper.test", "sk_test_keep_b_002")
    return {"a": a, "a_connections": [stripe, oauth], "b": b, "b_connections": [b_stripe]}


def _tables(engine) -> list[Table]:
    live = MetaData()
    live.reflect(bind=engine)
    return list(live.sorted_tables)


def _rows_mentioning(engine, needles: list[str]) -> dict[str, list[str]]:
    """table -> columns of rows whose value, as text or bytes, holds a needle."""
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for table in _tables(engine):
            for row in conn.execute(select(table)).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    blob = bytes(value) if isinstance(value, bytes | memoryview) else None
                    text_value = str(value)
                    for needle in needles:
                        if needle in text_value or (blob and needle.encode() in blob):
                            found.setdefault(table.name, []).append(column)
    return found


def _counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.scalar(select(func.count()).select_from(t)) for t in _tables(engine)}


def _files_mentioning(home: Path, needles: list[str], skip: set[str]) -> list[str]:
    return [
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_file() and p.name not in skip and any(n.encode() in p.read_bytes() for n in needles)
    ]


def _raw_sqlite(runtime) -> bytes:
    path = Path(runtime.db.engine.url.database)
    with runtime.db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def test_erased_tenant_leaves_nothing_and_others_are_untouched(any_runtime, grants):
    runtime = any_runtime
    made = _everything(runtime, grants)
    a, a_ids = made["a"], made["a_connections"]
    engine = runtime.db.engine
    # Tenant A really had rows everywhere, and a staged leftover on disk.
    before = _rows_mentioning(engine, [a])
    assert {
        "tenants",
        "connections",
        "credentials",
        "facts",
        "sync_cursors",
        "dashboard_links",
        "oauth_states",
        "connect_invites",
        "audit_events",
    } <= set(before)
    assert (runtime.settings.staging_dir / a_ids[0] / "records.parquet").exists()
    totals_before = _counts(engine)
    b_before = {
        t.name: _count_where(engine, t, made["b"], made["b_connections"])
        for t in metadata.sorted_tables
    }

    deleted_partitions = {}
    report = run_erasure(
        runtime,
        a,
        actor="alice",
        delete_partitions=lambda source, keys: deleted_partitions.setdefault(source, keys),
    )

    assert report.ok, report.lines()
    assert grants.counters["oauth.revocations"] == 1
    assert report.revocations == {"attempted": 1, "revoked": 1, "failed": 0, "unsupported": 0}
    assert deleted_partitions == {"stripe": [a_ids[0]], GrantSource.name: [a_ids[1]]}
    assert report.removed["facts"] > 0 and report.removed["staging_files"] == 2

    # Nothing left in any row: the tenant id only in the one erasure record's tenant_id.
    left = _rows_mentioning(engine, [a, *a_ids])
    # ... and the staff audit's events of it, kept by its id alone (who looked, and when)
    assert {t: set(c) for t, c in left.items()} == {
        "deletion_requests": {"tenant_id"},
        "audit_events": {"tenant_id"},
    }
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT actor, action, reason, details FROM audit_events WHERE tenant_id = :t"),
            {"t": a},
        ).all()
    assert sorted((r.actor, r.action) for r in kept) == [
        ("alice", "tenant.show"),
        ("oauth", "connection.authorised"),
    ]
    assert {(r.reason, str(r.details)) for r in kept} == {("(removed at erasure)", "{}")}
    with runtime.db.session() as session:
        (record,) = session.scalars(select(DeletionRequest)).all()
        assert record.tenant_id == a and record.status == "done" and record.verified is True
        assert record.requested_at <= record.completed_at
        assert record.removed == report.removed
        assert record.revocations["revoked"] == 1
        assert record.requested_by == "alice"
    # ... nor in any file, nor in the raw bytes of the SQLite file and its WAL.
    skip = {"warehouse.db", "warehouse.db-wal", "warehouse.db-shm"}
    assert _files_mentioning(runtime.settings.home, [a, *a_ids, NAME, EMAIL], skip) == []
    if runtime.db.is_sqlite:
        raw = _raw_sqlite(runtime)
        # the erasure record's tenant_id, and the kept audit event's (its row and index)
        assert raw.count(a.encode()) == 1 + 2 * len(kept)
        for needle in (*a_ids, NAME, EMAIL):
            assert needle.encode() not in raw

    # Other tenants: every count equal; the removed rows are exactly the tenant's.
    b_after = {
        t.name: _count_where(engine, t, made["b"], made["b_connections"])
        for t in metadata.sorted_tables
    }
    assert b_after == b_before
    totals_after = _counts(engine)
    for table, count in totals_before.items():
        expected = count - report.removed.get(table, 0) + (table == "deletion_requests")
        assert totals_after[table] == expected, table
    with runtime.db.session() as session:
        assert registry.get_tenant(session, runtime.keys, made["b"]).name == "Keeper Ltd"


def _count_where(engine, table, tenant_id, connection_ids) -> int:
    clause = tenant_clause(table, tenant_id, connection_ids)
    if clause is None:
        return 0
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table).where(clause))


def test_a_refresh_racing_the_erasure_writes_nothing(any_runtime, sandbox):
    runtime = any_runtime
    tenant_id, connection_id = add_stripe_connection(
        runtime, sandbox.url, remember_secret("sk_test_race_00003"), name=NAME, email=EMAIL
    )
    # The sandbox holds its answers until released, so the fetch is in flight for the
    # whole erasure, however fast or slow the machine: an event, not a delay.
    release = sandbox.app.settings["hold"] = threading.Event()
    fetched = {}
    fetch = threading.Thread(
        target=lambda: fetched.update(done=fetch_to_staging(runtime, connection_id))
    )
    fetch.start()
    deadline = time.monotonic() + 30
    while not sandbox.counters.get("held") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sandbox.counters.get("held"), "the fetch never reached the sandbox"
    report = run_erasure(runtime, tenant_id)
    assert fetch.is_alive()
    release.set()
    fetch.join(30)
    # The fetch finished after the erasure and staged its records; the load refuses them.
    assert fetched["done"].records > 0
    assert (runtime.settings.staging_dir / connection_id / "records.parquet").exists()
    with pytest.raises(registry.ConnectionErased, match="wrote nothing"):
        refresh.load_connection(runtime, connection_id)
    refresh.record_failure(runtime, connection_id, RuntimeError("late"))
    assert not (runtime.settings.staging_dir / connection_id).exists()
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Fact)) == 0
        assert session.scalar(select(func.count()).select_from(Connection)) == 0
    assert report.ok and verify_erasure(runtime, tenant_id, [connection_id]).ok


def test_a_refresh_already_writing_is_waited_for_then_its_rows_are_erased(any_runtime):
    runtime = any_runtime
    tenant_id, connection_id = add_connection(
        runtime, "stripe", "api_key", {}, {"api_key": "sk_x"}, name=NAME, email=EMAIL
    )
    facts = pl.DataFrame(
        {"metric": ["revenue"], "dimension": [""], "day": [dt.date.today()], "value": [5.0]}
    )
    erased = {}
    with runtime.db.locked_session() as session:  # what load_connection holds while writing
        connection = registry.writable_connections(session, [connection_id])[connection_id]
        eraser = threading.Thread(target=lambda: erased.update(r=run_erasure(runtime, tenant_id)))
        eraser.start()
        time.sleep(0.5)
        assert eraser.is_alive(), "the erasure must wait for the refresh's transaction"
        warehouse.upsert_facts(session, connection, facts, window_start=None)
    eraser.join(30)
    assert erased["r"].ok and erased["r"].removed["facts"] == 1
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Fact)) == 0


def test_once_marked_erasing_a_refresh_writes_nothing(any_runtime, sandbox):
    runtime = any_runtime
    tenant_id, connection_id = add_stripe_connection(
        runtime, sandbox.url, remember_secret("sk_test_race_0004"), name=NAME, email=EMAIL
    )
    fetch_to_staging(runtime, connection_id)
    request_id = request_erasure(runtime, tenant_id, "alice")
    mark_erasing(runtime, request_id)  # step 1 committed; the delete has not run yet
    with pytest.raises(registry.ConnectionErased):
        refresh.load_connection(runtime, connection_id)
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Fact)) == 0
        assert session.get(Connection, connection_id).status == registry.ERASING
    # The interrupted request is still open, and finishing it proves the erasure.
    assert [r.status for r in pending_requests(runtime)] == ["running"]
    assert run_erasure(runtime, request_id).ok
    assert pending_requests(runtime) == []


def test_an_erasure_request_waits_for_the_sensor_then_is_the_only_record(runtime, sandbox):
    tenant_id, _ = add_stripe_connection(
        runtime, sandbox.url, remember_secret("sk_test_request_05"), name=NAME, email=EMAIL
    )
    record_access(runtime, "bob", "tenant.export", tenant_id)
    request_id = request_erasure(runtime, tenant_id, "bob")
    assert request_erasure(runtime, tenant_id, "carol") == request_id  # asked twice, one request
    (pending,) = pending_requests(runtime)
    assert (pending.id, pending.tenant_id, pending.status) == (request_id, tenant_id, "pending")

    report = run_erasure(runtime, pending.id)
    assert report.ok and report.request_id == request_id
    assert report.revocations["attempted"] == 0
    events = list_events(runtime, tenant_id)
    # The staff audit keeps who looked at the tenant and when (its reason and details
    # go with the tenant); the erasure record remains.
    assert [(e.action, e.actor) for e in events] == [
        ("tenant.export", "bob"),
        ("tenant.erasure.requested", "bob"),
        ("tenant.erased", "bob"),
    ]
    assert events[0].reason == "(removed at erasure)" and events[0].details == {}
    with pytest.raises(Exception, match="already erased on"):
        run_erasure(runtime, tenant_id)
    with pytest.raises(Exception, match="already erased on"):
        run_erasure(runtime, request_id)


def test_a_failed_revocation_is_counted_and_the_erasure_goes_on(runtime, grants):
    tenant_id = add_tenant(runtime, NAME, EMAIL)
    connection_id = _connect_oauth(runtime, grants, tenant_id)
    with runtime.db.session() as session:
        session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            # the provider's revocation endpoint now answers 404
            .values(options={"base_url": grants.url, "auth_base_url": f"{grants.url}/gone"})
        )
    report = run_erasure(runtime, tenant_id)
    assert report.ok
    assert report.revocations == {"attempted": 1, "revoked": 0, "failed": 1, "unsupported": 0}
    assert grants.counters["oauth.revocations"] == 0


def test_a_table_added_later_is_erased_and_verified_without_being_listed(runtime):
    tenant_id = add_tenant(runtime, NAME, EMAIL)
    extra = Table(
        "notes_added_later",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("tenant_id", ForeignKey("tenants.id")),
    )
    try:
        extra.create(runtime.db.engine)
        with runtime.db.engine.begin() as conn:
            conn.execute(extra.insert().values(id="n1", tenant_id=tenant_id))
        report = run_erasure(runtime, tenant_id)
        assert report.removed["notes_added_later"] == 1 and report.ok
    finally:
        metadata.remove(extra)
    # A table the models do not know still gets searched by the verification.
    other = add_tenant(runtime, NAME, EMAIL)
    with runtime.db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE stray_copy (note TEXT)"))
        conn.execute(text("INSERT INTO stray_copy VALUES (:v)"), {"v": f"copied {other}"})
    report = run_erasure(runtime, other)
    assert not report.ok and report.verification.rows == {"stray_copy": 1}
    # Not verified, so not done: running it again searches again, and fails again.
    assert [r.status for r in pending_requests(runtime)] == ["failed"]
    assert run_erasure(runtime, other).verification.rows == {"stray_copy": 1}
    with runtime.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM stray_copy"))
    assert run_erasure(runtime, other).ok
    with pytest.raises(Exception, match="already erased"):
        run_erasure(runtime, other)


def test_cli_erase_asks_first_and_reports(runtime, sandbox, capsys, monkeypatch):
    tenant_id, _ = add_stripe_connection(
        runtime, sandbox.url, remember_secret("sk_test_cli_erase_06"), name=NAME, email=EMAIL
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["tenant", "erase", tenant_id]) == 2
    assert "pass --yes" in capsys.readouterr().err
    with runtime.db.session() as session:
        assert registry.get_tenant(session, runtime.keys, tenant_id).name == NAME
    assert cli.main(["tenant", "erase", "not-a-uuid", "--yes"]) == 2
    assert "not a valid id" in capsys.readouterr().err
    assert cli.main(["tenant", "erase", tenant_id, "--yes", "--actor", "dpo"]) == 0
    out = capsys.readouterr().out
    assert f"erased tenant {tenant_id}" in out and "nothing of the tenant left" in out
    assert cli.main(["tenant", "erase", tenant_id, "--yes"]) == 2
    assert "already erased on" in capsys.readouterr().err
    other = add_tenant(runtime, NAME, EMAIL)
    assert cli.main(["tenant", "request-erasure", other, "--actor", "dpo"]) == 0
    assert capsys.readouterr().out.strip() == pending_requests(runtime)[0].id
