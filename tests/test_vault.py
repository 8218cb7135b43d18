"""Credentials are handled like passwords: encrypted, bound to their row, never in plaintext."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from sqlalchemy import MetaData, delete, select, update

from writevue_pipelines import registry
from writevue_pipelines.models import Credential
from writevue_pipelines.privacy.keys import BINDINGS
from writevue_pipelines.vault import Binding, KeyRing, VaultError, load_key_ring, save_key_ring

SECRET = "sk_test_vault_secret_51HxY"


def test_round_trip_under_the_primary_key():
    ring = KeyRing.generate()
    binding = Binding("t1", "c1", "api_key")
    blob = ring.encrypt(SECRET, binding)
    assert SECRET.encode() not in blob
    assert ring.decrypt_text(blob, binding) == SECRET


def test_two_encryptions_of_one_secret_differ():
    ring = KeyRing.generate()
    binding = Binding("t1", "c1", "api_key")
    assert ring.encrypt(SECRET, binding) != ring.encrypt(SECRET, binding)


def test_ciphertext_copied_to_another_connection_does_not_decrypt():
    ring = KeyRing.generate()
    blob = ring.encrypt(SECRET, Binding("t1", "c1", "api_key"))
    for other in (
        Binding("t1", "c2", "api_key"),
        Binding("t2", "c1", "api_key"),
        Binding("t1", "c1", "password"),
    ):
        with pytest.raises(VaultError) as err:
            ring.decrypt(blob, other)
        assert SECRET not in str(err.value)


def test_tampered_ciphertext_is_refused():
    ring = KeyRing.generate()
    binding = Binding("t1", "c1", "api_key")
    blob = bytearray(ring.encrypt(SECRET, binding))
    blob[-1] ^= 1
    with pytest.raises(VaultError):
        ring.decrypt(bytes(blob), binding)


def test_newest_key_encrypts_and_every_key_decrypts():
    old = KeyRing.generate()
    binding = Binding("t1", "c1", "api_key")
    old_blob = old.encrypt(SECRET, binding)
    new = old.with_new_key()
    new_blob = new.encrypt(SECRET, binding)
    assert KeyRing.key_version(new_blob) == new.primary == 2
    assert new.decrypt_text(old_blob, binding) == SECRET
    with pytest.raises(VaultError):
        new.without(1).decrypt(old_blob, binding)
    assert new.without(1).decrypt_text(new_blob, binding) == SECRET


def test_key_file_is_private_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "keys.json"
    save_key_ring(KeyRing.generate(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_ring(path).primary == 1
    os.chmod(path, 0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        load_key_ring(path)


def test_init_creates_the_key_file_with_mode_0600(runtime):
    assert stat.S_IMODE(runtime.settings.key_file.stat().st_mode) == 0o600


def test_stored_credentials_decrypt_only_in_their_own_row(any_runtime):
    rt = any_runtime
    with rt.db.session() as session:
        tenant = registry.add_tenant(session, rt.keys, "Acme", "a@acme.test")
        first = registry.add_connection(
            session, rt.keys, tenant, "stripe", "api_key", {}, {"api_key": SECRET}
        )
        second = registry.add_connection(
            session, rt.keys, tenant, "stripe", "api_key", {}, {"api_key": "sk_test_other"}
        )
    with rt.db.session() as session:
        rows = {row.connection_id: row for row in session.scalars(select(Credential))}
        rows[second].ciphertext = rows[
            first
        ].ciphertext  # an attacker with write access swaps blobs
    with rt.db.session() as session:
        assert registry.get_secrets(session, rt.keys, registry.get_connection(session, first)) == {
            "api_key": SECRET
        }
        with pytest.raises(VaultError):
            registry.get_secrets(session, rt.keys, registry.get_connection(session, second))


def _credential_moved(rt, source: tuple[str, str], target: tuple[str, str]) -> None:
    """Copy the ciphertext of credential ``source`` (connection id, field) over ``target``."""
    with rt.db.session() as session:
        blob = session.get(Credential, source).ciphertext
        session.get(Credential, target).ciphertext = blob


def _credential_row_moved(rt, source: tuple[str, str], connection_id: str, tenant_id: str):
    """Point the whole credential row ``source`` at another connection of another tenant
    (its own there deleted first), as a hand-edited database would."""
    with rt.db.session() as session:
        session.execute(
            delete(Credential).where(
                Credential.connection_id == connection_id, Credential.field == source[1]
            )
        )
        session.execute(
            update(Credential)
            .where(Credential.connection_id == source[0], Credential.field == source[1])
            .values(connection_id=connection_id, tenant_id=tenant_id)
        )


@pytest.mark.parametrize(
    "move", ["another_tenants_connection", "another_field", "whole_row_to_another_tenant"]
)
def test_a_credential_moved_to_another_tenant_or_field_does_not_decrypt(any_runtime, move):
    rt = any_runtime
    mine, theirs = f"sk_test_mine_{os.urandom(6).hex()}", f"sk_test_theirs_{os.urandom(6).hex()}"
    with rt.db.session() as session:
        tenant = registry.add_tenant(session, rt.keys, "Acme", "a@acme.test")
        other_tenant = registry.add_tenant(session, rt.keys, "Globex", "g@globex.test")
        first = registry.add_connection(
            session,
            rt.keys,
            tenant,
            "stripe",
            "api_key",
            {},
            {"api_key": mine, "password": f"pw-{os.urandom(6).hex()}"},
        )
        other = registry.add_connection(
            session, rt.keys, other_tenant, "stripe", "api_key", {}, {"api_key": theirs}
        )
    if move == "another_tenants_connection":
        _credential_moved(rt, (first, "api_key"), (other, "api_key"))
        victim = other
    elif move == "another_field":
        _credential_moved(rt, (first, "api_key"), (first, "password"))
        victim = first
    else:
        _credential_row_moved(rt, (first, "api_key"), other, other_tenant)
        victim = other

    with rt.db.session() as session:
        with pytest.raises(VaultError) as err:
            registry.get_secrets(session, rt.keys, registry.get_connection(session, victim))
        assert mine not in str(err.value) and theirs not in str(err.value)
        if move == "another_tenants_connection":  # the blob's own row still opens
            assert (
                registry.get_secrets(session, rt.keys, registry.get_connection(session, first))[
                    "api_key"
                ]
                == mine
            )


#: tables with one row per tenant (its id is their key, or one open erasure request at a
#: time): no other row of the same tenant to move a blob to
ONE_ROW_PER_TENANT = {"tenants", "tenant_settings", "deletion_requests"}


def _row(tenant: str, n: int, field: str = "api_key") -> dict:
    """Row ``n`` of ``tenant`` in any table that holds ciphertexts, as its binding reads it."""
    return {
        "id": f"{tenant}-row-{n}",
        "tenant_id": tenant,
        "connection_id": f"{tenant}-connection-{n}",
        "field": field,
        "state_sha256": hashlib.sha256(f"{tenant}/{n}".encode()).hexdigest(),
    }


@pytest.mark.parametrize("spec", list(BINDINGS.values()), ids=lambda spec: spec.label)
def test_every_ciphertext_column_opens_only_in_its_own_row_tenant_and_column(spec):
    """Every encrypted column of the schema (``privacy.keys.BINDINGS``, which key rotation
    checks covers them all): a blob sealed for one row does not open for another row of
    the same tenant, for the same row under another tenant, or in another column; a
    credential not for another field of its connection."""
    ring = KeyRing.generate()
    home = _row("t1", 1)
    blob = ring.encrypt(SECRET, spec.binding(home))
    assert ring.decrypt_text(blob, spec.binding(home)) == SECRET
    # the same row's values under another tenant (whose id is the key of ``tenants``)
    moved = {**home, "tenant_id": "t2", **({"id": "t2"} if spec.table == "tenants" else {})}
    elsewhere = {"another tenant": spec.binding(moved)}
    if spec.table not in ONE_ROW_PER_TENANT:
        elsewhere["another row"] = spec.binding(_row("t1", 2))
    if spec.table == "credentials":
        elsewhere["another field"] = spec.binding(_row("t1", 1, field="refresh_token"))
    for other in BINDINGS.values():
        if other is not spec:
            elsewhere[f"column {other.label}"] = other.binding(home)
    for where, binding in elsewhere.items():
        with pytest.raises(VaultError):
            ring.decrypt(blob, binding)
            pytest.fail(f"a {spec.label} blob decrypted in {where}")


def test_a_dump_of_every_table_holds_no_plaintext_name_email_or_credential(any_runtime):
    rt = any_runtime
    name, email = "Zebulon Plaintext-Check", "zebulon.check@example.org"
    with rt.db.session() as session:
        tenant = registry.add_tenant(session, rt.keys, name, email)
        registry.add_connection(
            session, rt.keys, tenant, "stripe", "api_key", {}, {"api_key": SECRET}
        )
    dump = []
    reflected = MetaData()
    reflected.reflect(rt.db.engine)
    with rt.db.engine.connect() as conn:
        for table in reflected.sorted_tables:
            for row in conn.execute(table.select()):
                dump.append(repr(tuple(row)))
    text = "\n".join(dump)
    assert tenant in text  # the dump is real
    for plaintext in (name, email, SECRET, "Zebulon", "zebulon.check"):
        assert plaintext not in text
    if rt.db.is_sqlite:
        raw = rt.settings.home.joinpath("warehouse.db").read_bytes()
        wal = rt.settings.home.joinpath("warehouse.db-wal")
        raw += wal.read_bytes() if wal.exists() else b""
        for plaintext in (name, email, SECRET):
            assert plaintext.encode() not in raw
