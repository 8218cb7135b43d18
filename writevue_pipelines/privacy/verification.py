"""Proof that an erasure left nothing: every table, every file and log, the database's own
bytes, and the Dagster instance's storage. It fails closed: whatever it cannot check
(a file it cannot read, a database it cannot reach) fails the verification, by name.

Nothing here trusts the erasure's own bookkeeping. The tables are read from the live
database (not from the models), every column of every row is searched for every
identifier of the tenant (its id, its connection, link and invite ids, and the
plaintext of its encrypted contact fields), every file under ``WRITEVUE_HOME`` (and
the staging, log and Dagster folders wherever they are) is searched byte by byte and
by name, and on SQLite the database file and its WAL are searched raw after a
checkpoint, so deleted bytes that linger in free pages are found too.

Dagster's run history (its SQLite files, or its PostgreSQL storage) may keep the two
opaque identifiers WriteVue gives it, the tenant id (a run tag) and connection ids
(partition keys): they are reported as notes and go with run retention. Anything
else of the tenant found there fails the verification.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import LargeBinary, MetaData, String, Table, cast, func, literal, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..database import make_engine
from ..runtime import Runtime
from .scope import KEPT_TABLES

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: a tenant name shorter than this is not searched for: it would match unrelated text
MIN_NAME_LENGTH = 6
#: a stored secret shorter than this is not searched for (a short password would match
#: unrelated text)
MIN_SECRET_LENGTH = 12

TENANT_ID = "the tenant id"
CONNECTION_ID = "a connection id"
LINK_ID = "a dashboard link id"
INVITE_ID = "an invite id"
CONTACT = "the tenant's name or email"
CREDENTIAL = "a credential of the connection"
#: what Dagster's run history may keep (opaque ids that lead nowhere once erased)
OPAQUE = frozenset({TENANT_ID, CONNECTION_ID})


@dataclass(frozen=True)
class Identifiers:
    """Everything that would point to the tenant, to be searched for everywhere."""

    tenant_id: str
    connection_ids: tuple[str, ...] = ()
    link_ids: tuple[str, ...] = ()
    invite_ids: tuple[str, ...] = ()
    #: the plaintext of the tenant's encrypted contact fields; held in memory only and
    #: reported by kind, never by value
    contact: tuple[str, ...] = field(default=(), repr=False)
    #: a removed connection's stored secrets in clear (its tenant stays: ``tenant_id`` is
    #: then ""); held in memory only and reported by kind, never by value
    credentials: tuple[str, ...] = field(default=(), repr=False)

    def needles(self) -> dict[str, str]:
        """needle -> what it is (the kind, which is all a report may say)."""
        found = {self.tenant_id: TENANT_ID}
        found |= dict.fromkeys(
            (c for c in self.credentials if len(c) >= MIN_SECRET_LENGTH), CREDENTIAL
        )
        found |= dict.fromkeys(self.connection_ids, CONNECTION_ID)
        found |= dict.fromkeys(self.link_ids, LINK_ID)
        found |= dict.fromkeys(self.invite_ids, INVITE_ID)
        for value in self.contact:
            if value and ("@" in value or len(value) >= MIN_NAME_LENGTH):
                found[value] = CONTACT
        return {k: v for k, v in found.items() if k}


@dataclass(frozen=True)
class DagsterStorage:
    """Where the Dagster instance that ran the erasure keeps its run history: a folder
    (SQLite storage) and/or a database URL (PostgreSQL); ``unknown`` says why neither
    could be found, which fails the verification."""

    folder: Path | None = None
    url: str | None = None
    unknown: str = ""


@dataclass
class VerificationReport:
    """Where the tenant still shows up; empty everywhere means the erasure is proven."""

    #: table -> rows holding an identifier (outside the erasure record's tenant_id)
    rows: dict[str, int] = field(default_factory=dict)
    #: files holding an identifier in their content or their name (path, kinds found)
    files: list[str] = field(default_factory=list)
    #: SQLite only: occurrences in the database file and WAL beyond the erasure record
    database_bytes: dict[str, int] = field(default_factory=dict)
    #: what could not be checked, and why: any entry fails the verification
    unchecked: list[str] = field(default_factory=list)
    #: what was searched less thoroughly than the rest, and why (does not fail it)
    notes: list[str] = field(default_factory=list)
    #: Dagster's run history: where it holds something other than the opaque ids
    dagster_found: list[str] = field(default_factory=list)
    #: Dagster's run history: places holding only the opaque tenant and connection ids
    dagster_notes: list[str] = field(default_factory=list)
    tables_scanned: int = 0
    files_scanned: int = 0
    raw_bytes_scanned: int = 0
    dagster_tables_scanned: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.rows or self.files or self.database_bytes or self.unchecked or self.dagster_found
        )

    def lines(self, subject: str = "tenant") -> list[str]:
        """The report, about a ``subject``: the tenant, or a removed connection."""
        scanned = f"verified: {self.tables_scanned} tables, {self.files_scanned} files"
        if self.raw_bytes_scanned:
            scanned += f", {self.raw_bytes_scanned} raw database bytes"
        if self.dagster_tables_scanned:
            scanned += f", {self.dagster_tables_scanned} Dagster storage tables"
        lines = [
            scanned
            + (
                f" — nothing of the {subject} left"
                if self.ok
                else f" — {subject.upper()} DATA REMAINS"
            )
        ]
        lines += [f"  still in table {name}: {count} rows" for name, count in self.rows.items()]
        lines += [f"  still in file {name}" for name in self.files]
        lines += [
            f"  still in the database file: {what} ({count}x)"
            for what, count in self.database_bytes.items()
        ]
        lines += [f"  still in Dagster's storage: {where}" for where in self.dagster_found]
        lines += [f"  could not be checked: {what}" for what in self.unchecked]
        lines += [f"  note: {note}" for note in self.notes]
        if self.dagster_notes:
            lines.append(
                f"  note: {len(self.dagster_notes)} places in Dagster's run history hold the "
                "opaque tenant or connection ids (nothing else; removed by run retention)"
            )
        return lines


def _reflect(engine: Engine) -> list[Table]:
    live = MetaData()
    live.reflect(bind=engine)
    return list(live.sorted_tables)


def _column_matches(column, needles: Iterable[str]):
    if isinstance(column.type, LargeBinary):
        like = column.op("LIKE", is_comparison=True)  # bytea and BLOB both take LIKE
        return [like(literal(b"%" + n.encode() + b"%", LargeBinary)) for n in needles]
    text = cast(column, String)
    return [text.like(f"%{_escape_like(n)}%", escape="\\") for n in needles]


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _table_hits(
    engine: Engine, needles: dict[str, str], *, kept_tables: frozenset[str] = frozenset()
) -> tuple[dict[str, set[str]], dict[str, int], int]:
    """(table -> kinds found, table -> rows found, tables scanned) over the live schema.

    In ``kept_tables`` the tenant id may stand in the ``tenant_id`` column only.
    """
    kinds: dict[str, set[str]] = {}
    rows: dict[str, int] = {}
    tables = _reflect(engine)
    with engine.connect() as conn:
        for table in tables:
            matches = []
            row_kinds = []
            for column in table.columns:
                kept = table.name in kept_tables and column.name == "tenant_id"
                wanted = {n: k for n, k in needles.items() if not (kept and k == TENANT_ID)}
                matches += _column_matches(column, wanted)
                row_kinds += list(wanted.values())
            if not matches:
                continue
            count = conn.scalar(select(func.count()).select_from(table).where(or_(*matches)))
            if not count:
                continue
            rows[table.name] = count
            found = conn.execute(
                select(*(func.max(m.cast(String)) for m in matches)).select_from(table)
            ).one()
            kinds[table.name] = {
                kind for kind, hit in zip(row_kinds, found, strict=True) if hit in ("1", "true")
            } or {"an identifier"}
    return kinds, rows, len(tables)


_COUNTER = Path(__file__).with_name("rawcount.py")


def _count_in_files(paths: list[Path], needles: list[bytes]) -> list[dict[bytes, int] | str]:
    """Per path, how often each needle occurs in its raw bytes, or the name of the error
    that stopped the read (the caller counts that file as unchecked).

    Read by a child process (``rawcount``): closing a descriptor of a SQLite file in this
    process would drop this process's SQLite locks on it. A child that fails leaves every
    file unchecked (OSError)."""
    if not paths:
        return []
    request = {"paths": [str(p) for p in paths], "needles": [n.hex() for n in needles]}
    request["chunk"] = _CHUNK
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(_COUNTER)],
        input=json.dumps(request).encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(f"the raw-byte reader exited with {done.returncode}")
    answers = json.loads(done.stdout)
    if len(answers) != len(paths):
        raise OSError("the raw-byte reader answered for other files than asked")
    return [
        dict(zip(needles, answer, strict=True)) if isinstance(answer, list) else answer
        for answer in answers
    ]


def database_files(runtime: Runtime) -> list[Path]:
    """The SQLite database file and its companions; none for a database elsewhere."""
    if not runtime.db.is_sqlite:
        return []
    path = Path(runtime.db.engine.url.database or "")
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def searched_folders(runtime: Runtime) -> list[Path]:
    """The home and every folder WriteVue writes to, wherever it is configured."""
    s = runtime.settings
    folders: list[Path] = []
    for folder in (s.home, s.staging_dir, s.log_dir, s.dagster_home):
        folder = folder.resolve()
        if any(folder.is_relative_to(f) for f in folders):
            continue
        folders = [f for f in folders if not f.is_relative_to(folder)] + [folder]
    return folders


@dataclass
class FileScan:
    #: files outside Dagster's folder holding an identifier: "path (kinds)"
    hits: list[str] = field(default_factory=list)
    #: files in Dagster's folder holding more than the opaque ids
    dagster_found: list[str] = field(default_factory=list)
    #: files in Dagster's folder holding only the opaque ids
    dagster_notes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    scanned: int = 0


def _walk(runtime: Runtime, root: Path, unreadable: list[str]) -> list[Path]:
    """Every path below ``root``; a folder that cannot be listed is named in
    ``unreadable`` (``Path.rglob`` would skip it without a word)."""
    found: list[Path] = []

    def failed(error: OSError) -> None:
        where = _shown(runtime, Path(error.filename)) if error.filename else str(root)
        unreadable.append(f"folder {where} ({type(error).__name__})")

    for folder, dirs, files in os.walk(root, onerror=failed):
        base = Path(folder)
        found += [base / name for name in dirs + files]
    return sorted(found)


def scan_files(
    runtime: Runtime,
    ids: Identifiers,
    *,
    skip: Iterable[Path] = (),
    extra_folders: Iterable[Path] = (),
) -> FileScan:
    """Search every file's content and name for every identifier of the tenant."""
    needles = ids.needles()
    encoded = {n.encode(): kind for n, kind in needles.items()}
    skipped = {p.resolve() for p in skip}
    extra_folders = [Path(f).resolve() for f in extra_folders]
    dagster_homes = [runtime.settings.dagster_home.resolve(), *extra_folders]
    result = FileScan()
    candidates: list[tuple[Path, Path]] = []  # (root, path)
    for root in [*searched_folders(runtime), *extra_folders]:
        if not root.exists():
            continue
        for path in _walk(runtime, root, result.unreadable):
            if path.is_symlink() or not path.is_file() or path.resolve() in skipped:
                continue
            candidates.append((root, path))
    try:
        answers = _count_in_files([path for _, path in candidates], list(encoded))
    except OSError as exc:
        answers = [str(exc)] * len(candidates)
    for (root, path), counts in zip(candidates, answers, strict=True):
        result.scanned += 1
        name = _shown(runtime, path)
        relative = str(path.relative_to(root))
        kinds = {kind for needle, kind in needles.items() if needle in relative}
        if isinstance(counts, str):
            result.unreadable.append(f"file {name} ({counts})")
            continue
        kinds |= {encoded[n] for n, count in counts.items() if count}
        if not kinds:
            continue
        described = f"{name} ({', '.join(sorted(kinds))})"
        if any(path.resolve().is_relative_to(d) for d in dagster_homes):
            target = result.dagster_notes if kinds <= OPAQUE else result.dagster_found
            target.append(described)
        else:
            result.hits.append(described)
    return result


def _shown(runtime: Runtime, path: Path) -> str:
    home = runtime.settings.home.resolve()
    resolved = path.resolve()
    return str(resolved.relative_to(home)) if resolved.is_relative_to(home) else str(resolved)


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


def scan_database_bytes(runtime: Runtime, ids: Identifiers) -> tuple[dict[str, int], int, list]:
    """SQLite: (kind -> occurrences left in the raw database file and WAL after a
    checkpoint, bytes scanned, what could not be read)."""
    files = [p for p in database_files(runtime) if p.exists()]
    if not files:
        return {}, 0, []
    checkpoint(runtime)
    needles = {n.encode(): kind for n, kind in ids.needles().items()}
    totals = dict.fromkeys(needles, 0)
    scanned, unreadable = 0, []
    try:
        answers = _count_in_files(files, list(needles))
    except OSError as exc:
        answers = [str(exc)] * len(files)
    for path, counts in zip(files, answers, strict=True):
        if isinstance(counts, str):
            unreadable.append(f"database file {path.name} ({counts})")
            continue
        try:
            scanned += path.stat().st_size
        except OSError as exc:
            unreadable.append(f"database file {path.name} ({type(exc).__name__})")
            continue
        for needle, count in counts.items():
            totals[needle] += count
    if ids.tenant_id:  # a connection's removal searches no tenant id
        totals[ids.tenant_id.encode()] -= _kept_occurrences(runtime.db.engine, ids.tenant_id)
    found: dict[str, int] = {}
    for needle, count in totals.items():
        if count > 0:
            found[needles[needle]] = found.get(needles[needle], 0) + count
    return found, scanned, unreadable


def scan_dagster_storage(url: str, ids: Identifiers) -> tuple[list[str], list[str], int]:
    """Dagster's PostgreSQL storage: (places holding more than the opaque ids, places
    holding only them, tables scanned). Unreachable raises SQLAlchemyError."""
    engine = make_engine(url)
    try:
        kinds, rows, scanned = _table_hits(engine, ids.needles())
    finally:
        engine.dispose()
    found, notes = [], []
    for table, table_kinds in sorted(kinds.items()):
        described = f"table {table}: {rows[table]} rows ({', '.join(sorted(table_kinds))})"
        (notes if table_kinds <= OPAQUE else found).append(described)
    return found, notes, scanned


def verify_erasure(
    runtime: Runtime,
    tenant_id: str | Identifiers,
    connection_ids: Iterable[str] = (),
    *,
    secrets: Iterable[str] = (),
    dagster: DagsterStorage | None = None,
) -> VerificationReport:
    """Search every table, file and log, the raw database bytes (SQLite) and Dagster's
    storage for every identifier of the tenant; what cannot be searched fails it."""
    if isinstance(tenant_id, Identifiers):
        ids = tenant_id
    else:
        ids = Identifiers(
            tenant_id,
            tuple(sorted(set(connection_ids))),
            contact=tuple(s for s in secrets if s),
        )
    report = VerificationReport()
    needles = ids.needles()
    short = [v for v in ids.contact if v and "@" not in v and len(v) < MIN_NAME_LENGTH]
    if short:
        report.notes.append(
            f"the tenant's name is shorter than {MIN_NAME_LENGTH} characters: not searched "
            "for by itself (it would match unrelated text); its ids and email were"
        )
    try:
        _, report.rows, report.tables_scanned = _table_hits(
            runtime.db.engine, needles, kept_tables=KEPT_TABLES
        )
    except SQLAlchemyError as exc:
        report.unchecked.append(f"the warehouse's tables ({type(exc).__name__})")
    try:
        report.database_bytes, report.raw_bytes_scanned, unreadable = scan_database_bytes(
            runtime, ids
        )
        report.unchecked += unreadable
    except SQLAlchemyError as exc:
        report.unchecked.append(f"the database file's raw bytes ({type(exc).__name__})")
    folders = [dagster.folder] if dagster is not None and dagster.folder else []
    files = scan_files(runtime, ids, skip=database_files(runtime), extra_folders=folders)
    report.files, report.files_scanned = files.hits, files.scanned
    report.dagster_found, report.dagster_notes = files.dagster_found, files.dagster_notes
    report.unchecked += files.unreadable
    url = (dagster.url if dagster is not None else None) or runtime.settings.dagster_database_url
    if dagster is not None and dagster.unknown:
        report.unchecked.append(f"Dagster's storage ({dagster.unknown})")
    if url:
        try:
            found, notes, report.dagster_tables_scanned = scan_dagster_storage(url, ids)
            report.dagster_found += found
            report.dagster_notes += notes
        except SQLAlchemyError as exc:
            report.unchecked.append(f"Dagster's PostgreSQL storage ({type(exc).__name__})")
    return report
