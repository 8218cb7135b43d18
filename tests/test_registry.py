"""Tenants, connections, links and the schema on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import inspect

from writevue_pipelines import links, registry
from writevue_pipelines.database import current_revision, migrate
from writevue_pipelines.errors import InvalidInput, NotFound
from writevue_pipelines.models import metadata


def test_migration_reaches_head_and_matches_the_models(any_runtime):
    from alembic.script import ScriptDirectory

    from writevue_pipelines.database import alembic_config

    url = any_runtime.settings.database_url
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert current_revision(url) == head
    migrate(url)  # a second run is harmless
    tables = set(inspect(any_runtime.db.engine).get_table_names())
    assert set(metadata.tables) <= tables


def test_migration_history_is_in_step_with_the_models(any_runtime):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with any_runtime.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_tenant_round_trip_decrypts_name_and_email(any_runtime):
    rt = any_runtime
    with rt.db.session() as session:
        tenant_id = registry.add_tenant(session, rt.keys, "Acme Ltd", "ops@acme.test")
    with rt.db.session() as session:
        tenant = registry.get_tenant(session, rt.keys, tenant_id)
        assert (tenant.name, tenant.email) == ("Acme Ltd", "ops@acme.test")
        assert [t.id for t in registry.list_tenants(session, rt.keys)] == [tenant_id]


@pytest.mark.parametrize(
    ("name", "email"), [("", "a@b.test"), ("Acme", "not-an-email"), ("x" * 201, "a@b.test")]
)
def test_bad_tenant_input_is_refused(runtime, name, email):
    with pytest.raises(InvalidInput), runtime.db.session() as session:
        registry.add_tenant(session, runtime.keys, name, email)
    with runtime.db.session() as session:
        assert registry.list_tenants(session, runtime.keys) == []


def test_unknown_and_malformed_tenant_ids(runtime):
    with runtime.db.session() as session:
        with pytest.raises(NotFound):
            registry.require_tenant(session, "00000000-0000-0000-0000-000000000000")
        with pytest.raises(InvalidInput):
            registry.require_tenant(session, "'; drop table tenants; --")


def test_link_token_is_stored_only_as_its_hash(any_runtime):
    rt = any_runtime
    with rt.db.session() as session:
        tenant_id = registry.add_tenant(session, rt.keys, "Acme", "a@acme.test")
        link, token = links.create_link(session, tenant_id, label="board room")
    assert len(token) >= 43  # 32 bytes, URL-safe base64
    with rt.db.engine.connect() as conn:
        rows = [repr(tuple(r)) for r in conn.exec_driver_sql("SELECT * FROM dashboard_links")]
    assert token not in "".join(rows)
    assert links.hash_token(token) in "".join(rows)
    with rt.db.session() as session:
        assert links.resolve_token(session, token).id == link.id
        assert links.resolve_token(session, token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_revoked_and_expired_links_resolve_to_nothing(any_runtime):
    rt = any_runtime
    with rt.db.session() as session:
        tenant_id = registry.add_tenant(session, rt.keys, "Acme", "a@acme.test")
        revoked, revoked_token = links.create_link(session, tenant_id)
        _expiring, expiring_token = links.create_link(session, tenant_id, expires_in_days=1)
    with rt.db.session() as session:
        links.revoke_link(session, revoked.id)
    with rt.db.session() as session:
        assert links.resolve_token(session, revoked_token) is None
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
        assert links.resolve_token(session, expiring_token) is not None
        assert links.resolve_token(session, expiring_token, now=later) is None
        listed = {item.id: item for item in links.list_links(session, tenant_id)}
        assert listed[revoked.id].revoked_at is not None
        assert "token" not in str(listed[revoked.id].as_json()).lower()
