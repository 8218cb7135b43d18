"""Keys are handled like passwords: the ring rotates, resumably, and old keys retire."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from sqlalchemy import LargeBinary, func, insert, select

from writevue_pipelines import cli, registry
from writevue_pipelines.cli import keys as cli_keys
from writevue_pipelines.errors import InvalidInput
from writevue_pipelines.models import Connection, Credential, OAuthState, Tenant, metadata
from writevue_pipelines.privacy.keys import (
    BINDINGS,
    count_by_version,
    retire_key,
    rotate_keys,
)
from writevue_pipelines.vault import Binding, load_key_ring

CREDENTIALS = 10_000
FIELDS = ("api_key", "username", "password", "extra")
CONNECTIONS = CREDENTIALS // len(FIELDS)


def _value(i: int) -> str:
    # Seven characters: the suite's leak check (conftest) tracks secrets of eight and more,
    # and 10,000 tracked secrets would slow every test run's final check for nothing.
    return f"s{i:06d}"


def _populate(runtime) -> tuple[str, dict[tuple[str, str], str]]:
    """One tenant with 2,500 connections of 4 secrets each, and a pending OAuth state."""
    ring = runtime.keys
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, ring, "Rotating Co", "keys@rotating.test")
    now = dt.datetime.now(dt.UTC)
    connections, credentials, expected = [], [], {}
    for c in range(CONNECTIONS):
        connection_id = f"00000000-0000-4000-8000-{c:012d}"
        connections.append(
            {
                "id": connection_id,
                "tenant_id": tenant_id,
                "source": "stripe",
                "auth_kind": "api_key",
                "options": {},
                "status": "active",
                "created_at": now,
            }
        )
        for f, field in enumerate(FIELDS):
            value = _value(c * len(FIELDS) + f)
            blob = ring.encrypt(value, Binding(tenant_id, connection_id, field))
            credentials.append(
                {
                    "connection_id": connection_id,
                    "field": field,
                    "tenant_id": tenant_id,
                    "ciphertext": blob,
                    "key_version": ring.primary,
                    "updated_at": now,
                }
            )
            expected[(connection_id, field)] = value
    state = "a" * 64
    with runtime.db.engine.begin() as conn:
        conn.execute(insert(Connection), connections)
        conn.execute(insert(Credential), credentials)
        conn.execute(
            insert(OAuthState),
            [
                {
                    "state_sha256": state,
                    "tenant_id": tenant_id,
                    "source": "ga4",
                    "connection_id": None,
                    "options": {},
                    "redirect_uri": "https://connect.writevue.test/cb",
                    "code_verifier_ct": ring.encrypt(
                        "verifier-" + "v" * 40,
                        Binding(tenant_id, None, f"oauth.verifier.{state[:16]}"),
                    ),
                    "created_at": now,
                    "expires_at": now + dt.timedelta(minutes=10),
                }
            ],
        )
    return tenant_id, expected


class Interrupt(KeyboardInterrupt):
    pass


def test_rotation_of_10000_credentials_survives_an_interruption(any_runtime):
    runtime = any_runtime
    tenant_id, expected = _populate(runtime)
    key_file = runtime.settings.key_file
    assert count_by_version(runtime) == {1: CREDENTIALS + 3}

    seen = []

    def interrupt_mid_credentials(label: str, done: int, total: int) -> None:
        seen.append((label, done, total))
        if label == "credentials.ciphertext" and done == 3000:
            raise Interrupt  # what Ctrl-C does between two batches

    with pytest.raises(Interrupt):
        rotate_keys(runtime, batch_size=1000, progress=interrupt_mid_credentials)
    # The new key is in the ring already; finished batches are saved, the rest is not.
    assert load_key_ring(key_file).versions == [2, 1]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    split = count_by_version(runtime)
    assert split == {2: 3 + 3000, 1: CREDENTIALS - 3000}
    assert seen[-1] == ("credentials.ciphertext", 3000, CREDENTIALS)
    with pytest.raises(InvalidInput, match="still sealed with key version 1"):
        retire_key(runtime, 1)

    # Rerunning continues the same rotation: no third key, finished rows skipped.
    resumed = rotate_keys(runtime, batch_size=1000)
    assert not resumed.new_key and resumed.primary == 2
    assert resumed.total_rotated == split[1]
    assert sum(resumed.skipped.values()) == split[2]
    assert count_by_version(runtime) == {2: CREDENTIALS + 3}
    assert any("re-encrypted" in line for line in resumed.lines())

    retired = retire_key(runtime, 1)
    assert retired.remaining == [2]
    ring = load_key_ring(key_file)
    assert ring.versions == [2]
    # Everything still decrypts, with the old key gone.
    with runtime.db.session() as session:
        rows = session.execute(
            select(
                Credential.tenant_id,
                Credential.connection_id,
                Credential.field,
                Credential.ciphertext,
                Credential.key_version,
            )
        ).all()
        assert len(rows) == CREDENTIALS
        for tenant, connection_id, field, blob, version in rows:
            plain = ring.decrypt_text(blob, Binding(tenant, connection_id, field))
            assert plain == expected[(connection_id, field)] and version == 2
        tenant = registry.get_tenant(session, runtime.keys, tenant_id)
        assert (tenant.name, tenant.email) == ("Rotating Co", "keys@rotating.test")
        state = session.scalars(select(OAuthState)).one()
        verifier = ring.decrypt_text(
            state.code_verifier_ct,
            Binding(tenant_id, None, f"oauth.verifier.{state.state_sha256[:16]}"),
        )
        assert verifier.startswith("verifier-")


def test_a_rotation_then_a_new_one_adds_a_key_each_time(runtime):
    with runtime.db.session() as session:
        registry.add_tenant(session, runtime.keys, "Small Co", "small@co.test")
    first = rotate_keys(runtime)
    second = rotate_keys(runtime)
    assert (first.new_key, first.primary, second.new_key, second.primary) == (True, 2, True, 3)
    assert count_by_version(runtime) == {3: 2}
    with pytest.raises(InvalidInput, match="newest key"):
        retire_key(runtime, 3)
    with pytest.raises(InvalidInput, match="not in the ring"):
        retire_key(runtime, 9)
    assert retire_key(runtime, 1).remaining == [3, 2]


def test_every_binary_column_is_known_to_rotation():
    binary = {
        (table.name, column.name)
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, LargeBinary)
    }
    assert binary == set(BINDINGS)


def test_cli_rotates_reports_and_resumes_after_ctrl_c(runtime, capsys, monkeypatch):
    with runtime.db.session() as session:
        for i in range(30):
            registry.add_tenant(session, runtime.keys, f"Client {i}", f"c{i}@client.test")

    def ctrl_c_on_second_batch():
        calls = []

        def progress(label, done, total):
            calls.append(done)
            if len(calls) == 2:
                raise KeyboardInterrupt

        return progress

    with monkeypatch.context() as patched:
        patched.setattr(cli_keys, "progress_bar", ctrl_c_on_second_batch)
        assert cli.main(["keys", "rotate", "--batch", "10"]) == 130
    assert "Rerun `writevue keys rotate` to continue" in capsys.readouterr().err
    assert cli.main(["keys", "rotate", "--batch", "10"]) == 0
    out, err = capsys.readouterr()
    assert "continued the rotation to key version 2" in out
    assert "tenants.name_ct" in err  # the progress went to stderr
    assert cli.main(["keys", "retire", "1"]) == 0
    assert "retired key version 1" in capsys.readouterr().out
    assert cli.main(["keys", "retire", "2"]) == 2
    assert "newest key" in capsys.readouterr().err
    assert cli.main(["keys", "rotate", "--batch", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 30
        names = {t.name for t in registry.list_tenants(session, runtime.keys)}
    assert names == {f"Client {i}" for i in range(30)}
