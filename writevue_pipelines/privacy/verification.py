"""Proof that an erasure left nothing: every table, every file, the database's own bytes.

Nothing here trusts the erasure's own bookkeeping. The tables are read from the live
database (not from the models), every column of every row is searched for the
tenant's id and its connection ids, every file under ``WRITEVUE_HOME`` is searched
byte by byte, and on SQLite the database file and its WAL are searched raw after a
checkpoint, so deleted bytes that linger in free pages are found too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import LargeBinary, MetaData, String, Table, cast, func, literal, or_, select
from sqlalchemy.engine import Engine

from ..runtime import Runtime
from .scope import KEPT_TABLES

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass
class VerificationReport:
    """Where the tenant still shows up; empty everywhere means the erasure is proven."""

    #: table -> rows holding the tenant id or a connection id (outside the erasure record)
    rows: dict[str, int] = field(default_factory=dict)
    #: files under WRITEVUE_HOME holding an identifier, relative to it
    files: list[str] = field(default_factory=list)
    #: SQLite only: occurrences in the database file and WAL beyond the erasure record
    database_bytes: dict[str, int] = field(default_factory=dict)
    #: files of the Dagster instance that mention a connection id (its run history: opaque
    #: keys that no longer lead anywhere; removed by run retention, see docs/privacy.md)
    dagster_files: list[str] = field(default_factory=list)
    tables_scanned: int = 0
    files_scanned: int = 0
    raw_bytes_scanned: int = 0

    @property
    def ok(self) -> bool:
        return not (self.rows or self.files or self.database_bytes)

    def lines(self) -> list[str]:
        lines = [
            f"verified: {self.tables_scanned} tables, {self.files_scanned} files"
            + (f", {self.raw_bytes_scanned} raw database bytes" if self.raw_bytes_scanned else "")
            + (" — nothing of the tenant left" if self.ok else " — TENANT DATA REMAINS")
        ]
        lines += [f"  still in table {name}: {count} rows" for name, count in self.rows.items()]
        lines += [f"  still in file {name}" for name in self.files]
        lines += [
            f"  still in the database file: {what} ({count}x)"
            for what, count in self.database_bytes.items()
        ]
        if self.dagster_files:
            lines.append(
                f"  note: {len(self.dagster_files)} Dagster run-history files mention a "
                "connection id (opaque; removed by run retention)"
            )
        return lines


def _reflect(engine: Engine) -> list[Table]:
    live = MetaData()
    live.reflect(bind=engine)
    return list(live.sorted_tables)


def _column_matches(column, needles: list[str]):
    if isinstance(column.type, LargeBinary):
        like = column.op("LIKE", is_comparison=True)  # bytea and BLOB both take LIKE
        return [like(literal(b"%" + n.encode() + b"%", LargeBinary)) for n in needles]
    text = cast(column, String)
    return [text.like(f"%{n}%") for n in needles]


def scan_tables(
    engine: Engine, tenant_id: str, connection_ids: Iterable[str]
) -> tuple[dict[str, int], int]:
    """(table -> rows mentioning the tenant, tables scanned), over the live schema.

    Only the erasure record may hold the tenant id, and only in its ``tenant_id``
    column; no row anywhere may hold one of its connection ids.
    """
    connection_ids = sorted(set(connection_ids))
    everything = [tenant_id, *connection_ids]
    found: dict[str, int] = {}
    tables = _reflect(engine)
    with engine.connect() as conn:
        for table in tables:
            matches = []
            for column in table.columns:
                kept_id_column = table.name in KEPT_TABLES and column.name == "tenant_id"
                matches += _column_matches(column, connection_ids if kept_id_column else everything)
            if not matches:
                continue
            count = conn.scalar(select(func.count()).select_from(table).where(or_(*matches)))
            if count:
                found[table.name] = count
    return found, len(tables)


def _occurrences(path: Path, needles: list[bytes]) -> dict[bytes, int]:
    """How often each needle occurs in a file, read in chunks that overlap."""
    counts = dict.fromkeys(needles, 0)
    overlap = max((len(n) for n in needles), default=1) - 1
    tail = b""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                window = tail + chunk
                for needle in needles:
                    # count occurrences that end inside the new chunk only
                    start = 0
                    while (at := window.find(needle, start)) != -1:
                        if at + len(needle) > len(tail):
                            counts[needle] += 1
                        start = at + 1
                tail = window[-overlap:] if overlap else b""
    except OSError:
        pass
    return counts


def database_files(runtime: Runtime) -> list[Path]:
    """The SQLite database file and its companions; none for a database elsewhere."""
    if not runtime.db.is_sqlite:
        return []
    path = Path(runtime.db.engine.url.database or "")
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def scan_files(
    runtime: Runtime, needles: Iterable[str], *, skip: Iterable[Path] = ()
) -> tuple[list[str], list[str], int]:
    """(files holding a needle, Dagster files holding one, files scanned) under the home."""
    settings = runtime.settings
    encoded = [n.encode() for n in needles if n]
    skipped = {p.resolve() for p in skip}
    hits, dagster_hits, scanned = [], [], 0
    if not settings.home.exists():
        return hits, dagster_hits, scanned
    dagster_home = settings.dagster_home.resolve()
    for path in sorted(settings.home.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.resolve() in skipped:
            continue
        scanned += 1
        if any(_occurrences(path, encoded).values()):
            name = str(path.relative_to(settings.home))
            if path.resolve().is_relative_to(dagster_home):
                dagster_hits.append(name)
            else:
                hits.append(name)
    return hits, dagster_hits, scanned


def checkpoint(runtime: Runtime) -> None:
    """Move the WAL into the database file and empty it (SQLite); a no-op elsewhere."""
    if runtime.db.is_sqlite:
        sqlite_outside_transaction(runtime, "PRAGMA wal_checkpoint(TRUNCATE)")


def sqlite_outside_transaction(runtime: Runtime, statement: str) -> None:
    """Run a statement on a pooled SQLite connection outside any transaction (the pool's
    connections run in autocommit mode; SQLAlchemy would otherwise open one)."""
    raw = runtime.db.engine.raw_connection()
    try:
        raw.driver_connection.execute(statement).fetchall()
    finally:
        raw.close()


def _kept_occurrences(engine: Engine, tenant_id: str) -> int:
    """How often the erasure record legitimately stores the tenant id: row plus indexes."""
    count = 0
    for table in _reflect(engine):
        if table.name not in KEPT_TABLES or "tenant_id" not in table.c:
            continue
        per_row = 1 + sum(1 for ix in table.indexes if "tenant_id" in ix.columns)
        with engine.connect() as conn:
            rows = conn.scalar(
                select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
            )
        count += per_row * (rows or 0)
    return count


def scan_database_bytes(
    runtime: Runtime, tenant_id: str, connection_ids: Iterable[str], secrets: Iterable[str] = ()
) -> tuple[dict[str, int], int]:
    """SQLite: occurrences left in the raw database file and WAL, after a checkpoint.

    ``secrets`` are further plaintexts to look for (the tenant's name and email, held
    in memory by the caller only); they are reported by kind, never by value.
    """
    files = [p for p in database_files(runtime) if p.exists()]
    if not files:
        return {}, 0
    checkpoint(runtime)
    needles = {tenant_id.encode(): "tenant id"}
    needles |= {c.encode(): "a connection id" for c in connection_ids}
    needles |= {s.encode(): "the tenant's name or email" for s in secrets if s}
    totals = dict.fromkeys(needles, 0)
    scanned = 0
    for path in files:
        scanned += path.stat().st_size
        for needle, count in _occurrences(path, list(needles)).items():
            totals[needle] += count
    totals[tenant_id.encode()] -= _kept_occurrences(runtime.db.engine, tenant_id)
    found: dict[str, int] = {}
    for needle, count in totals.items():
        if count > 0:
            found[needles[needle]] = found.get(needles[needle], 0) + count
    return found, scanned


def verify_erasure(
    runtime: Runtime,
    tenant_id: str,
    connection_ids: Iterable[str],
    *,
    secrets: Iterable[str] = (),
) -> VerificationReport:
    """Search every table, every file and (SQLite) the raw database bytes for the tenant."""
    connection_ids = sorted(set(connection_ids))
    secrets = [s for s in secrets if s]
    report = VerificationReport()
    report.rows, report.tables_scanned = scan_tables(runtime.db.engine, tenant_id, connection_ids)
    report.database_bytes, report.raw_bytes_scanned = scan_database_bytes(
        runtime, tenant_id, connection_ids, secrets
    )
    report.files, report.dagster_files, report.files_scanned = scan_files(
        runtime, [tenant_id, *connection_ids], skip=database_files(runtime)
    )
    return report
