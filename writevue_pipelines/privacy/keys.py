"""Key rotation: a new key for the ring, every ciphertext re-encrypted under it, old keys retired.

Every ``LargeBinary`` column of the schema holds vault ciphertexts; each is listed in
``BINDINGS`` with how its rows are bound (tenant, connection, field), and rotation
refuses to start if the schema has one that is not, so a secret added later cannot
be left under an old key unnoticed.

Rotation works in batches, each its own commit, so it can be interrupted (Ctrl-C, a
kill) at any point and rerun: rows already under the newest key are skipped, and a
rerun while any ciphertext is still under an older key continues that rotation
instead of adding yet another key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, LargeBinary, Table, and_, bindparam, func, or_, select

from ..errors import InvalidInput
from ..models import metadata
from ..runtime import Runtime
from ..vault import (
    KEYS_VARIABLE,
    MAGIC,
    Binding,
    KeyRing,
    VaultError,
    load_key_ring,
    save_key_ring,
)

Row = Mapping[str, Any]


@dataclass(frozen=True)
class CiphertextColumn:
    table: str
    column: str
    #: the row's binding, from its other columns
    binding: Callable[[Row], Binding]
    #: a column recording the key version beside the blob, kept in step
    version_column: str | None = None

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column}"


#: (table, column) -> how the column's ciphertexts are bound
BINDINGS: dict[tuple[str, str], CiphertextColumn] = {}


def _register(spec: CiphertextColumn) -> None:
    BINDINGS[(spec.table, spec.column)] = spec


_register(CiphertextColumn("tenants", "name_ct", lambda r: Binding(r["id"], None, "tenant.name")))
_register(CiphertextColumn("tenants", "email_ct", lambda r: Binding(r["id"], None, "tenant.email")))
_register(
    CiphertextColumn(
        "credentials",
        "ciphertext",
        lambda r: Binding(r["tenant_id"], r["connection_id"], r["field"]),
        version_column="key_version",
    )
)
# Bound to its own state row, as ``oauth.begin_authorization`` seals it.
_register(
    CiphertextColumn(
        "oauth_states",
        "code_verifier_ct",
        lambda r: Binding(r["tenant_id"], None, f"oauth.verifier.{r['state_sha256'][:16]}"),
    )
)

# An erasure in progress: what it must search for, and grants whose revocation failed
# (bound to the request's tenant id, as ``privacy.erasure`` seals them).
for _column, _what in (("scope_ct", "scope"), ("retry_ct", "retry")):
    _register(
        CiphertextColumn(
            "deletion_requests",
            _column,
            lambda r, what=_what: Binding(r["tenant_id"], None, f"erasure.{what}"),
        )
    )

# Notifications: recipients' addresses and webhook URLs, rendered messages waiting to be
# sent, and the token of the dashboard link a tenant's messages carry (as
# ``notifications.config``, ``notifications.delivery`` and ``tenant_settings`` seal them).
_register(
    CiphertextColumn(
        "notification_recipients",
        "address_ct",
        lambda r: Binding(r["tenant_id"], None, f"recipient.{r['id']}"),
    )
)
_register(
    CiphertextColumn(
        "notification_deliveries",
        "message_ct",
        lambda r: Binding(r["tenant_id"], None, f"delivery.{r['id']}"),
    )
)
_register(
    CiphertextColumn(
        "tenant_settings",
        "message_link_ct",
        lambda r: Binding(r["tenant_id"], None, "message_link"),
    )
)


class UnknownCiphertextColumn(InvalidInput):
    pass


def ciphertext_columns() -> list[tuple[Table, Column, CiphertextColumn]]:
    """Every binary column of the schema with its binding; refuses an unknown one."""
    found = []
    for table in metadata.sorted_tables:
        for column in table.columns:
            if not isinstance(column.type, LargeBinary):
                continue
            spec = BINDINGS.get((table.name, column.name))
            if spec is None:
                raise UnknownCiphertextColumn(
                    f"Column {table.name}.{column.name} holds binary data that key rotation "
                    "does not know how to re-encrypt; add it to privacy.keys.BINDINGS."
                )
            found.append((table, column, spec))
    return found


@dataclass
class RotationReport:
    primary: int
    new_key: bool
    #: "table.column" -> rows re-encrypted / already under the newest key
    rotated: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    @property
    def total_rotated(self) -> int:
        return sum(self.rotated.values())

    def lines(self) -> list[str]:
        head = (
            f"added key version {self.primary}"
            if self.new_key
            else f"continued the rotation to key version {self.primary}"
        )
        lines = [head]
        for label in sorted(set(self.rotated) | set(self.skipped)):
            lines.append(
                f"  {label}: {self.rotated.get(label, 0)} re-encrypted, "
                f"{self.skipped.get(label, 0)} already under the newest key"
            )
        lines.append(f"  {self.total_rotated} secrets re-encrypted in {self.batches} batches")
        return lines


@dataclass(frozen=True)
class RetireReport:
    version: int
    remaining: list[int]


Progress = Callable[[str, int, int], None]


class KeyRingReadOnly(InvalidInput):
    """The key ring comes from the environment, which no process can rewrite."""


def _writable_key_file(runtime: Runtime, done: str) -> Path:
    """The key file a rotation or retirement rewrites; refused for an environment ring,
    since a change that other processes cannot see would leave them unable to decrypt."""
    if runtime.settings.keys_from_env:
        raise KeyRingReadOnly(
            f"The key ring comes from {KEYS_VARIABLE}, which writevue cannot rewrite, so it "
            f"cannot be {done} here: put the ring in a private file, point WRITEVUE_KEY_FILE "
            f"at it instead of {KEYS_VARIABLE} for every process, then run this again "
            "(see docs/privacy.md)."
        )
    return runtime.settings.key_file


def _version_of(blob: bytes | None) -> int | None:
    if blob is None:
        return None
    return KeyRing.key_version(bytes(blob))


def _header_version(header: bytes | None) -> int | None:
    """The key version in a ciphertext's 7-byte header (magic "WV1", big-endian version)."""
    if header is None or len(header) < 7 or bytes(header[:3]) != MAGIC:
        return None
    return int.from_bytes(bytes(header[3:7]), "big")


def count_by_version(runtime: Runtime) -> dict[int, int]:
    """How many ciphertexts each key version seals, read from the blobs' headers."""
    counts: dict[int, int] = {}
    with runtime.db.engine.connect() as conn:
        for _table, column, _spec in ciphertext_columns():
            header = func.substr(column, 1, 7)  # only the header leaves the database
            for (value,) in conn.execute(select(header).where(column.is_not(None))):
                version = _header_version(value)
                if version is not None:
                    counts[version] = counts.get(version, 0) + 1
    return counts


def rotate_keys(
    runtime: Runtime,
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> RotationReport:
    """Re-encrypt every ciphertext under the newest key, adding one unless a rotation is
    unfinished. ``after_batch(n)`` runs after each committed batch (tests interrupt here).
    """
    if batch_size <= 0:
        raise InvalidInput("--batch must be a positive number of rows.")
    key_file = _writable_key_file(runtime, "rotated")
    columns = ciphertext_columns()
    ring = load_key_ring(key_file)
    stale = {v: n for v, n in count_by_version(runtime).items() if v != ring.primary}
    new_key = not stale
    if new_key:
        ring = ring.with_new_key()
        save_key_ring(ring, key_file)  # atomic, 0600; every key still decrypts
    report = RotationReport(primary=ring.primary, new_key=new_key)
    engine = runtime.db.engine
    # Each batch reads then writes: on SQLite take the write lock at BEGIN, so a batch
    # waits for other writers instead of failing to upgrade its read.
    writer = engine.execution_options(sqlite_begin="IMMEDIATE") if runtime.db.is_sqlite else engine
    with engine.connect() as conn:
        totals = {
            spec.label: conn.scalar(select(func.count()).select_from(table)) or 0
            for table, _column, spec in columns
        }
    done = dict.fromkeys(totals, 0)
    for table, column, spec in columns:
        report.rotated[spec.label] = report.skipped[spec.label] = 0
        pk = list(table.primary_key.columns)
        last: tuple | None = None
        while True:
            query = select(table).order_by(*pk).limit(batch_size)
            if last is not None:
                query = query.where(_after(pk, last))
            with writer.begin() as conn:
                rows = conn.execute(query).mappings().all()
                if not rows:
                    break
                changes = []
                for row in rows:
                    blob = row[column.name]
                    if blob is None or _version_of(blob) == ring.primary:
                        report.skipped[spec.label] += 1
                        continue
                    binding = spec.binding(row)
                    try:
                        plaintext = ring.decrypt(bytes(blob), binding)
                    except VaultError as exc:
                        raise VaultError(
                            f"a ciphertext in {spec.label} cannot be decrypted ({exc}); "
                            "nothing further was re-encrypted"
                        ) from None
                    change = {f"pk_{c.name}": row[c.name] for c in pk}
                    change["new_blob"] = ring.encrypt(plaintext, binding)
                    if spec.version_column:
                        change["new_version"] = ring.primary
                    changes.append(change)
                if changes:
                    values = {column.name: bindparam("new_blob")}
                    if spec.version_column:
                        values[spec.version_column] = bindparam("new_version")
                    stmt = (
                        table.update()
                        .where(and_(*(c == bindparam(f"pk_{c.name}") for c in pk)))
                        .values(values)
                    )
                    conn.execute(stmt, changes)
                    report.rotated[spec.label] += len(changes)
            last = tuple(rows[-1][c.name] for c in pk)
            done[spec.label] += len(rows)
            report.batches += 1
            if progress is not None:
                progress(spec.label, done[spec.label], totals[spec.label])
            if after_batch is not None:
                after_batch(report.batches)
    return report


def _after(pk: list[Column], last: tuple):
    """Keyset pagination over a (possibly composite) primary key: rows after ``last``."""
    clauses = []
    for i, column in enumerate(pk):
        equal = [pk[j] == last[j] for j in range(i)]
        clauses.append(and_(*equal, column > last[i]))
    return or_(*clauses)


def retire_key(runtime: Runtime, version: int) -> RetireReport:
    """Remove a key from the ring, only once no ciphertext uses it."""
    key_file = _writable_key_file(runtime, "changed")
    ring = load_key_ring(key_file)
    if version not in ring.versions:
        held = ", ".join(map(str, ring.versions))
        raise InvalidInput(f"Key version {version} is not in the ring (it holds {held}).")
    if version == ring.primary:
        raise InvalidInput(
            f"Key version {version} is the newest key; rotate to a new key before retiring it."
        )
    ciphertext_columns()  # refuse an unknown binary column before counting
    in_use = count_by_version(runtime).get(version, 0)
    if in_use:
        raise InvalidInput(
            f"{in_use} secrets are still sealed with key version {version}; "
            "run `writevue keys rotate` to finish re-encrypting them first."
        )
    ring = ring.without(version)
    save_key_ring(ring, key_file)
    return RetireReport(version=version, remaining=ring.versions)
