"""Helpers the tests share: the secrets the suite's leak check watches, tenants with
connections on the sandbox, `writevue` run as a command, a dashboard server, and a test
OAuth2 source served by the sandbox's authorisation server. Fixtures live in conftest."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex

import httpx
import polars as pl

from writevue_pipelines import registry
from writevue_pipelines.oauth.endpoints import client_variables
from writevue_pipelines.processes import Child, free_port, spawn_and_wait
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources.auth import OAuthSpec
from writevue_pipelines.sources.base import FetchRequest, FetchResult, Source
from writevue_sandbox.oauth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

# Every secret the suite has seen; conftest fails the run if one reaches a log, an error,
# a child's output or a database table.
SECRETS: set[str] = set()
#: secrets that are bytes, not text (the key ring's raw keys): searched in databases only
SECRET_BYTES: set[bytes] = set()
#: the shortest value worth searching for: anything shorter would match by chance
MIN_SECRET_CHARS = 8


#: values a test stores in plaintext on purpose, to prove that a check of the product
#: finds them (``planted``): the database sweep leaves these out
PLANTED: set[str] = set()


def remember_secret(value: str) -> str:
    """Add a secret a test made up itself; the session fails if it is ever logged.

    A value of fewer than 4 distinct characters (a test's throwaway ``"x" * 9``) is not
    worth searching for: it is found in any long run of the same character."""
    if value and len(value) >= MIN_SECRET_CHARS and len(set(value)) >= 4:
        SECRETS.add(value)
    return value


def planted(value: str) -> str:
    """A value (a tenant's email, say) a test writes in plaintext where the product must
    find it (Dagster's run history, for erasure's verification); the database sweep does
    not report it."""
    PLANTED.add(value)
    return value


def remember_secret_bytes(value: bytes) -> bytes:
    """Add raw secret bytes (a key); the session fails if a database holds them."""
    if value and len(value) >= MIN_SECRET_CHARS:
        SECRET_BYTES.add(value)
    return value


# -- what the suite's child processes print -----------------------------------------------------

#: (where, text, the secrets allowed in that one text): every child's stdout and stderr that
#: the suite read (conftest records every ``Popen.communicate``, so ``subprocess.run`` too)
OUTPUTS: list[tuple[str, str, frozenset[str]]] = []
#: the files children write their output to (conftest gives every ``spawn`` one)
CHILD_LOGS: list[tuple[str, Path]] = []
#: a dashboard link's or a connect invite's token, in the URL a command prints
PRINTED_TOKEN = re.compile(r"/(?:d|connect)/([A-Za-z0-9_-]{16,})")


def watch_output(
    where: str,
    stdout: str | bytes | None,
    stderr: str | bytes | None,
    *,
    secrets: set[str] = SECRETS,
    outputs: list = OUTPUTS,
) -> None:
    """Record a child's output for the leak check and register every token it prints.

    The one place a token may appear is the stdout of the command that made it, on its
    last line (``link create``, ``link rotate``, ``connection invite``): a token new to the
    suite there is allowed in that stdout, and nowhere else. A token printed anywhere else,
    or one the suite knew before (an earlier command's link printed again), is a leak.
    """
    out, err = (
        (text.decode(errors="replace") if isinstance(text, bytes) else text or "")
        for text in (stdout, stderr)
    )
    lines = out.strip().splitlines()
    made = set(PRINTED_TOKEN.findall(lines[-1])) - secrets if lines else set()
    for token in PRINTED_TOKEN.findall(out) + PRINTED_TOKEN.findall(err):
        secrets.add(token)
    # `writevue sandbox` prints the sandbox's own client secret, public by design (it
    # stands in for an operator's real one, which must appear nowhere): allowed there only.
    if re.search(r"\bcli sandbox\b", where):
        made.add(SANDBOX_CLIENT_SECRET)
    outputs.append((f"stdout of {where}", out, frozenset(made)))
    outputs.append((f"stderr of {where}", err, frozenset()))


def find_leaks(texts, secrets) -> list[str]:
    """One line per secret found in a text where it is not allowed: ``texts`` holds
    (where, text) or (where, text, allowed secrets)."""
    found = []
    for secret in secrets:
        for where, text, *allowed in texts:
            if secret in text and not (allowed and secret in allowed[0]):
                for other in secrets:  # a command line may hold one
                    where = where.replace(other, "<secret>")
                found.append(f"{secret[:4]}… ({len(secret)} chars) appeared in {where}")
                break
    return found


def describe_argv(argv) -> str:
    """A child's command line, short enough for a message (its arguments may be secrets,
    which ``find_leaks`` reports only by their first characters)."""
    words = [argv] if isinstance(argv, str | bytes | os.PathLike) else list(argv)
    words = [os.fsdecode(word) for word in words]
    if words and words[0] == sys.executable:
        words[0] = "python"
    return " ".join(words)[:120]


# -- every database the run made, searched for every secret ---------------------------------------

#: the first bytes of every SQLite database file, whatever it is called
SQLITE_HEADER = b"SQLite format 3\x00"
#: the files beside a SQLite database that hold pages of it too
SQLITE_SIDE_FILES = ("-wal", "-journal")
#: a PostgreSQL database's tables, as ``dump_postgres`` writes them before it is dropped
POSTGRES_DUMP_SUFFIX = ".pgdump"
#: anchors checked per numpy pass (bounds the memory one pass takes)
_CHUNK = 1 << 22


def _patterns(secret: str | bytes) -> set[bytes]:
    """The bytes a secret is searched as: itself (UTF-8), and as it is written escaped in
    JSON (Dagster's event log, a JSON column) and in a URL's path or query."""
    if isinstance(secret, bytes):
        return {secret}
    from urllib.parse import quote, quote_plus

    texts = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
    }
    return {text.encode("utf-8", "surrogatepass") for text in texts}


def _anchor_start(pattern: bytes, width: int) -> int:
    """Where a pattern's ``width`` anchors start: the stretch of ``2 * width - 1`` bytes
    with the most distinct bytes (the random part of a token, not its ``http://127.0.0.``),
    so that ordinary data rarely matches an anchor and needs checking."""
    span = 2 * width - 1
    last = len(pattern) - span
    starts = {*range(0, last, max(3, last // 16)), last}  # a few, for a long message
    return max(starts, key=lambda start: (len(set(pattern[start : start + span])), start))


class SecretMatcher:
    """Which of any number of secrets occur in some bytes, in one numpy pass over them.

    A pattern of ``n >= 2w - 1`` bytes that occurs at offset ``q`` covers exactly one
    offset ``p`` that is a multiple of ``w`` within ``q + s .. q + s + w - 1`` (``s`` its
    anchors' start), and the ``w`` bytes at ``p`` are one of its ``w`` anchors. So the
    data is read as an array of ``w``-byte words (no copy); a hash of each word indexes a
    table of bits set for the anchors, and only the few words whose bit is set (the
    anchors, and one word in several hundred by chance) are checked in Python. Patterns
    of 15 bytes or more use 8-byte words; shorter ones (8 to 14) 4-byte words.
    """

    _HASH_BITS = 22  # a 4 MB table: ~0.7 % of words pass by chance with 30,000 anchors
    _MULTIPLIER = 0x9E3779B97F4A7C15  # Fibonacci hashing

    def __init__(self, secrets: Iterable[str | bytes]):
        import numpy as np

        self._owner: dict[bytes, str | bytes] = {}
        for secret in secrets:
            for pattern in _patterns(secret):
                if len(pattern) >= MIN_SECRET_CHARS:
                    self._owner.setdefault(pattern, secret)
        self._tables = []
        for width, fits in ((8, lambda n: n >= 15), (4, lambda n: n < 15)):
            anchors: dict[int, list[tuple[bytes, int]]] = {}
            for pattern in self._owner:
                if not fits(len(pattern)):
                    continue
                start = _anchor_start(pattern, width)
                for offset in range(start, start + width):
                    word = int.from_bytes(pattern[offset : offset + width], "little")
                    anchors.setdefault(word, []).append((pattern, offset))
            if anchors:
                dtype = np.dtype(f"<u{width}")
                bits = np.zeros(1 << self._HASH_BITS, dtype=bool)
                bits[self._hash(np.array(list(anchors), dtype=dtype))] = True
                self._tables.append((width, dtype, bits, anchors))

    @classmethod
    def _hash(cls, words):
        import numpy as np

        with np.errstate(over="ignore"):
            mixed = np.multiply(words, np.uint64(cls._MULTIPLIER), dtype=np.uint64)
        np.right_shift(mixed, np.uint64(64 - cls._HASH_BITS), out=mixed)
        return mixed.view(np.int64)  # below 2**22: the same numbers, usable as indices

    def __len__(self) -> int:
        return len(self._owner)

    def search(self, data: bytes, *, places: int = 1) -> dict[str | bytes, list[int]]:
        """Every secret found in ``data``, with up to ``places`` offsets where it is."""
        import numpy as np

        found: dict[str | bytes, list[int]] = {}
        for width, dtype, bits, anchors in self._tables:
            count = len(data) // width
            view = np.frombuffer(data, dtype=dtype, count=count)
            for first in range(0, count, _CHUNK):
                chunk = view[first : first + _CHUNK]
                for hit in np.flatnonzero(bits[self._hash(chunk)]).tolist():
                    for pattern, offset in anchors.get(int(chunk[hit]), ()):
                        start = (first + hit) * width - offset
                        if start >= 0 and data.startswith(pattern, start):
                            where = found.setdefault(self._owner[pattern], [])
                            if len(where) < places:
                                where.append(start)
        return found


@dataclass
class DatabaseSweep:
    """What ``sweep_databases`` searched and found."""

    sqlite_files: int = 0
    postgres_databases: int = 0
    tables: int = 0
    rows: int = 0
    bytes_searched: int = 0
    secrets: int = 0
    seconds: float = 0.0
    #: databases or tables that could not be read as tables (their raw bytes still were)
    unreadable: list[str] = field(default_factory=list)
    #: one line per secret and place, as ``find_leaks`` writes them
    leaks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.sqlite_files} SQLite files and {self.postgres_databases} PostgreSQL "
            f"databases ({self.tables} tables, {self.rows} rows, "
            f"{self.bytes_searched / 1e6:.1f} MB searched in {self.seconds:.1f} s)"
        )


def _leak_line(secret: str | bytes, where: str) -> str:
    if isinstance(secret, bytes):
        return f"{len(secret)} bytes of key material appeared in {where}"
    return f"{secret[:4]}… ({len(secret)} chars) appeared in {where}"


def _search_segments(
    matcher: SecretMatcher, sweep: DatabaseSweep, segments: list[tuple[str, bytes]]
) -> None:
    """Search a database's columns (each its values joined by NUL) in one pass: one line
    per secret and column it is in (up to 20 places per secret)."""
    import bisect

    data = b"\0".join(values for _, values in segments)
    sweep.bytes_searched += len(data)
    if not data:
        return
    starts, at = [], 0
    for _, values in segments:
        starts.append(at)
        at += len(values) + 1
    for secret, positions in matcher.search(data, places=20).items():
        wheres = dict.fromkeys(segments[bisect.bisect_right(starts, p) - 1][0] for p in positions)
        sweep.leaks += [_leak_line(secret, where) for where in wheres]


def _search_raw(matcher: SecretMatcher, sweep: DatabaseSweep, where: str, data: bytes) -> None:
    sweep.bytes_searched += len(data)
    for secret in matcher.search(data):
        sweep.leaks.append(_leak_line(secret, where))


def _sqlite_tables(path: Path) -> tuple[sqlite3.Connection | None, str | None]:
    """A read-only connection to a SQLite file (it sees what its WAL holds), or why not."""
    for options in ("mode=ro", "immutable=1"):  # immutable: no -shm could be made
        try:
            con = sqlite3.connect(f"{path.as_uri()}?{options}", uri=True)
            con.text_factory = bytes  # text as stored, even when it is not UTF-8
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            return con, None
        except sqlite3.Error as exc:
            error = f"{type(exc).__name__}: {exc}"
    return None, error


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_columns(con: sqlite3.Connection, name: str, sweep: DatabaseSweep):
    """(table, row count, [(column, its values joined by NUL)]) for every table: SQLite
    joins each column's values (text as its UTF-8 bytes, blobs as they are), all tables
    in one query, or one query per table if that fails (naming the unreadable one)."""
    tables: dict[str, list[str]] = {}
    listing = """SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                  WHERE m.type = 'table' ORDER BY m.name, p.cid"""
    for table, column in con.execute(listing):
        tables.setdefault(table.decode(), []).append(column.decode())

    def query(table: str, columns: list[str], width: int = 0) -> str:
        literal = "'" + table.replace("'", "''") + "'"
        joined = "".join(f", group_concat(CAST({_quoted(c)} AS BLOB), x'00')" for c in columns)
        padding = ", NULL" * (width - len(columns))
        return f"SELECT {literal}, count(*){joined}{padding} FROM {_quoted(table)}"  # noqa: S608

    def result(row) -> tuple:
        table, rows, *values = row
        table = table.decode()
        columns = tables[table]
        return table, rows, [(c, bytes(v)) for c, v in zip(columns, values, strict=False) if v]

    try:  # one statement: as many columns as the widest table, NULL-padded
        width = max((len(c) for c in tables.values()), default=0)
        union = " UNION ALL ".join(query(t, c, width) for t, c in tables.items())
        return [result(row) for row in con.execute(union).fetchall()] if union else []
    except sqlite3.Error:
        found = []
        for table, columns in tables.items():
            try:
                found.append(result(con.execute(query(table, columns)).fetchone()))
            except sqlite3.Error as exc:
                sweep.unreadable.append(f"table {table} of SQLite database {name} ({exc})")
        return found


def _sweep_sqlite(matcher: SecretMatcher, sweep: DatabaseSweep, path: Path, name: str) -> None:
    """One SQLite database: every table's every value, then its file's and its WAL's or
    journal's raw bytes (a free page or an old WAL frame may still hold a deleted row)."""
    sweep.sqlite_files += 1
    segments: list[tuple[str, bytes]] = []
    con, error = _sqlite_tables(path)
    if con is None:
        sweep.unreadable.append(f"SQLite database {name} ({error})")
    else:
        try:
            for table, rows, columns in _sqlite_columns(con, name, sweep):
                sweep.tables += 1
                sweep.rows += rows
                segments += [
                    (f"table {table} (column {column}) of SQLite database {name}", values)
                    for column, values in columns
                ]
        except sqlite3.Error as exc:
            sweep.unreadable.append(f"SQLite database {name} ({exc})")
        finally:
            con.close()
    _search_segments(matcher, sweep, segments)
    for side in ("", *SQLITE_SIDE_FILES):
        raw = path.with_name(path.name + side)
        try:
            data = raw.read_bytes()
        except OSError:
            continue
        _search_raw(matcher, sweep, f"raw bytes of SQLite file {name}{side}", data)


_CATALOG = """SELECT n.nspname, c.relname,
       array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0),
       array_agg(a.atttypid = 'bytea'::regtype ORDER BY a.attnum) FILTER (WHERE a.attnum > 0)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.relkind IN ('r', 'm')
   AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
 GROUP BY n.nspname, c.relname
 ORDER BY n.nspname, c.relname"""


def _table_query(schema: str, table: str, columns: list[tuple[str, bool]]):
    """One row for one table: its name, its row count and each column's values joined by
    NUL (text as the server writes it, in UTF-8; ``bytea`` as its bytes)."""
    from psycopg import sql

    separator = sql.SQL("'\\x00'::bytea")
    values = [
        sql.SQL("string_agg({}, {})").format(
            sql.Identifier(name)
            if raw
            else sql.SQL("convert_to({}::text, 'UTF8')").format(sql.Identifier(name)),
            separator,
        )
        for name, raw in columns
    ]
    return sql.SQL("SELECT {}::text, count(*), ARRAY[{}]::bytea[] FROM {}.{}").format(
        sql.Literal(f"{schema}.{table}"),
        sql.SQL(", ").join(values),
        sql.Identifier(schema),
        sql.Identifier(table),
    )


def dump_postgres(url: str, folder: Path) -> Path:
    """Every table of every schema of one PostgreSQL database (Dagster's too, when its
    storage is there), written to ``folder/<database>.pgdump`` for ``sweep_databases``.
    The server joins each column's values; every table in one query (one per table if
    that fails, so one unreadable table is named and the rest still dumped)."""
    import psycopg
    from psycopg import sql

    database = url.rsplit("/", 1)[1].split("?", 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{database}{POSTGRES_DUMP_SUFFIX}"
    with psycopg.connect(url, autocommit=True) as conn, path.open("wb") as out:
        tables = [
            (schema, table, list(zip(names or [], raws or [], strict=True)))
            for schema, table, names, raws in conn.execute(_CATALOG).fetchall()
        ]
        queries = [_table_query(*table) for table in tables]
        results: list[tuple[dict, list[bytes]]] = []
        try:
            rows = conn.execute(sql.SQL(" UNION ALL ").join(queries)).fetchall() if queries else []
            results = [
                ({"table": name, "rows": count}, [bytes(v or b"") for v in values])
                for name, count, values in rows
            ]
        except psycopg.Error:
            for (schema, table, _), query in zip(tables, queries, strict=True):
                try:
                    name, count, values = conn.execute(query).fetchone()
                    results.append(
                        ({"table": name, "rows": count}, [bytes(v or b"") for v in values])
                    )
                except psycopg.Error as exc:
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    results.append(({"table": f"{schema}.{table}", "error": error}, []))
        names = {f"{schema}.{table}": columns for schema, table, columns in tables}
        for header, blobs in results:
            header["columns"] = [name for name, _ in names[header["table"]]] if blobs else []
            header["sizes"] = [len(blob) for blob in blobs]
            encoded = json.dumps(header).encode()
            out.write(len(encoded).to_bytes(4, "big") + encoded)
            for blob in blobs:
                out.write(blob)
    return path


def _sweep_postgres_dump(matcher: SecretMatcher, sweep: DatabaseSweep, path: Path) -> None:
    database = path.name.removesuffix(POSTGRES_DUMP_SUFFIX)
    sweep.postgres_databases += 1
    data = path.read_bytes()
    segments: list[tuple[str, bytes]] = []
    at = 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        header = json.loads(data[at + 4 : at + 4 + size])
        at += 4 + size
        table = header["table"]
        for name, length in zip(header.get("columns", []), header["sizes"], strict=True):
            where = f"table {table} (column {name}) of PostgreSQL database {database}"
            segments.append((where, data[at : at + length]))
            at += length
        if "error" in header:
            sweep.unreadable.append(
                f"table {table} of PostgreSQL database {database} ({header['error']})"
            )
            continue
        sweep.tables += 1
        sweep.rows += header.get("rows", 0)
    _search_segments(matcher, sweep, segments)


def _database_files(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(SQLite databases found by their header, PostgreSQL dumps, WAL or journal files
    whose database is gone) under ``root``. Only a file whose size is a whole number of
    pages (512 bytes or a multiple) can be a database; only those are opened."""
    sqlite, dumps, orphans = [], [], []
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                path, name = Path(entry.path), entry.name
                if name.endswith(POSTGRES_DUMP_SUFFIX):
                    dumps.append(path)
                    continue
                side = next((s for s in SQLITE_SIDE_FILES if name.endswith(s)), None)
                if side is not None:
                    if not path.with_name(name.removesuffix(side)).exists():
                        orphans.append(path)
                    continue
                size = entry.stat(follow_symlinks=False).st_size
                if size < 512 or size % 512:
                    continue
                try:
                    with path.open("rb") as handle:
                        if handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
                            sqlite.append(path)
                except OSError:
                    continue
    return sorted(sqlite), sorted(dumps), sorted(orphans)


def sweep_databases(root: Path, secrets: Iterable[str | bytes]) -> DatabaseSweep:
    """Search every database under ``root`` for every secret: each SQLite file (found by
    its header, whatever its name) table by table and as raw bytes with its WAL or
    journal, and each PostgreSQL database ``dump_postgres`` wrote there.

    A value is searched as stored: text as UTF-8, a blob as its bytes (a text secret is
    looked for as UTF-8 bytes, so a blob holding it is found however the rest of the blob
    decodes), each secret also as JSON and URL escapes write it."""
    import time

    started = time.monotonic()
    matcher = SecretMatcher(secrets)
    sweep = DatabaseSweep(secrets=len(matcher))
    if root.exists():
        sqlite, dumps, orphans = _database_files(root)
        for path in sqlite:
            _sweep_sqlite(matcher, sweep, path, str(path.relative_to(root)))
        for path in dumps:
            _sweep_postgres_dump(matcher, sweep, path)
        for path in orphans:
            name = str(path.relative_to(root))
            _search_raw(matcher, sweep, f"raw bytes of SQLite file {name}", path.read_bytes())
    sweep.seconds = time.monotonic() - started
    return sweep


def add_tenant(runtime: Runtime, name: str = "Acme Ltd", email: str = "ops@acme.test") -> str:
    """A new tenant's id."""
    with runtime.db.session() as session:
        return registry.add_tenant(session, runtime.keys, name, email)


def add_connection(
    runtime: Runtime,
    source: str,
    auth_kind: str,
    options: dict,
    secrets: dict[str, str],
    *,
    tenant_id: str | None = None,
    name: str = "Acme Ltd",
    email: str = "ops@acme.test",
) -> tuple[str, str]:
    """(tenant id, connection id) of a ``source`` connection; a new tenant unless one is given."""
    with runtime.db.session() as session:
        if tenant_id is None:
            tenant_id = registry.add_tenant(session, runtime.keys, name, email)
        connection_id = registry.add_connection(
            session, runtime.keys, tenant_id, source, auth_kind, options, secrets
        )
    return tenant_id, connection_id


def add_stripe_connection(
    runtime: Runtime,
    sandbox_url: str,
    api_key: str,
    *,
    tenant_id: str | None = None,
    name: str = "Acme Ltd",
    email: str = "ops@acme.test",
) -> tuple[str, str]:
    """(tenant id, connection id) of a Stripe API-key connection; a new tenant unless given one."""
    options, secrets = {"base_url": sandbox_url}, {"api_key": api_key}
    return add_connection(
        runtime, "stripe", "api_key", options, secrets, tenant_id=tenant_id, name=name, email=email
    )


def new_stripe_key() -> str:
    """A Stripe test key no other test uses."""
    return f"sk_test_{token_hex(12)}"


def connection_info(runtime: Runtime, connection_id: str) -> registry.ConnectionInfo:
    """The connection as it is stored now."""
    with runtime.db.session() as session:
        return registry.get_connection(session, connection_id)


def expire_access_token(runtime: Runtime, connection_id: str) -> None:
    """Make the stored OAuth access token look expired, as it will be an hour later."""
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        registry.put_secret(
            session, runtime.keys, connection.tenant_id, connection_id, "expires_at", past
        )


def fetch_to_staging(runtime: Runtime, connection_id: str):
    """The first half of one connection's refresh as production runs it
    (``refresh.fetch_connections``): its records staged, its ``FetchSummary``, or its error
    raised. ``refresh.load_connection`` is the second half."""
    import asyncio

    from writevue_pipelines import refresh

    result = asyncio.run(refresh.fetch_connections(runtime, [connection_id]))[connection_id]
    if isinstance(result, BaseException):
        raise result
    return result


def stripe_connection(session, runtime: Runtime, tenant_id: str, base_url: str, key: str) -> str:
    """A Stripe API-key connection of the tenant, in the caller's transaction; its id."""
    options, secrets = {"base_url": base_url}, {"api_key": key}
    return registry.add_connection(
        session, runtime.keys, tenant_id, "stripe", "api_key", options, secrets
    )


def stripe_connections(
    runtime: Runtime, sandbox_url: str, keys: list[str], name: str, email: str
) -> list[str]:
    """One tenant (``name``, ``email``) with a Stripe connection per key, in one
    transaction; the connections' ids."""
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, name, email)
        return [stripe_connection(session, runtime, tenant_id, sandbox_url, key) for key in keys]


def add_tenant_with_facts(
    runtime: Runtime, name: str, facts, *, refreshed_at=None
) -> tuple[str, str]:
    """(tenant id, connection id): a tenant whose Stripe connection already holds ``facts``.

    ``facts`` is a polars frame in the warehouse's long format; no source is called.
    """
    from writevue_pipelines import warehouse

    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, name, "ops@client.test")
        connection_id = stripe_connection(
            session,
            runtime,
            tenant_id,
            "http://127.0.0.1:9",
            f"sk_test_{tenant_id.replace('-', '')}",
        )
        connection = registry.get_connection(session, connection_id)
        warehouse.upsert_facts(session, connection, facts, window_start=None)
        registry.record_refresh_result(
            session, connection_id, error=None, at=refreshed_at or dt.datetime.now(dt.UTC)
        )
    return tenant_id, connection_id


def run_writevue(
    home, *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout=120, cwd=None
) -> subprocess.CompletedProcess:
    """`writevue ARGS` in its own process on ``home``, never the suite's PostgreSQL."""
    environ = {**os.environ, "WRITEVUE_HOME": str(home), **(env or {})}
    environ.pop("WRITEVUE_DATABASE_URL", None)
    environ.pop("DAGSTER_HOME", None)  # the home's own, as `writevue` derives it
    return subprocess.run(
        [sys.executable, "-m", "writevue_pipelines.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        cwd=cwd,
    )


def run_cli(
    monkeypatch, capsys, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`writevue ARGS` in this process: (exit code, stdout, stderr)."""
    from writevue_pipelines import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def apply_partition_requests(instance, result) -> None:
    """What the sensor daemon does with a tick's dynamic partition requests."""
    from dagster import AddDynamicPartitionsRequest, DeleteDynamicPartitionsRequest

    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        elif isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def start_dashboard_server(
    home, log_path, *, database_url: str | None = None, port: int | None = None, **env: str
) -> tuple[Child, str]:
    """`writevue serve` in its own process on a free port (or ``port``, to start it again
    where it was), once it answers: (child, base URL).
    Its warehouse is the home's, or ``database_url`` (never the suite's by accident)."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    environ = {
        **os.environ,
        "WRITEVUE_HOME": str(home),
        "WRITEVUE_DASHBOARD_URL": base,
        **env,
    }
    environ.pop("WRITEVUE_DATABASE_URL", None)
    if database_url is not None:
        environ["WRITEVUE_DATABASE_URL"] = database_url
    server = spawn_and_wait(
        "writevue serve",
        [sys.executable, "-m", "writevue_pipelines.cli", "serve", "--port", str(port)],
        f"{base}/robots.txt",
        log_path=log_path,
        env=environ,
    )
    return server, base


class SandboxOAuthSource(Source):
    """A test connector whose OAuth2 endpoints (with RFC 7009 revocation) are the sandbox's.

    Its fetch reads nothing; subclasses name themselves and read what their test needs.
    """

    name = "sandbox_oauth_probe"
    title = "OAuth probe"
    description = "Test connector for the OAuth2 flow against the sandbox."
    auth_kinds = ("oauth2",)
    default_base_url = "https://probe.example.invalid"
    oauth = OAuthSpec(
        base_url="https://auth.example.invalid",
        authorize_path="/oauth/authorize",
        token_path="/oauth/token",
        revoke_path="/oauth/revoke",
        scopes=("read:probe",),
    )
    metrics = {"seen": "Seen"}

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        return FetchResult(pl.DataFrame({"n": [1]}), None, 0, 0.0)

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame(
            {"metric": ["seen"], "dimension": [""], "day": [dt.date.today()], "value": [1.0]}
        )


def sandbox_oauth_client(*sources: str) -> dict[str, str]:
    """The environment that makes the sandbox's client WriteVue's OAuth client at these
    sources, as an operator sets the app registered with a real provider."""
    env = {}
    for source in sources:
        id_variable, secret_variable = client_variables(source)
        env[id_variable], env[secret_variable] = SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
    return env


def use_sandbox_oauth_client(monkeypatch, *sources: str) -> None:
    """``sandbox_oauth_client`` for the rest of one test."""
    for name, value in sandbox_oauth_client(*sources).items():
        monkeypatch.setenv(name, value)


def register_oauth_source(monkeypatch, source) -> None:
    """A test OAuth2 source among the built-in ones, with the sandbox's client configured
    for it, for the rest of one test."""
    from writevue_pipelines.sources import SOURCES

    monkeypatch.setitem(SOURCES, source.name, source)
    use_sandbox_oauth_client(monkeypatch, source.name)


#: Python source for a probe process: from here on, ``reads`` lists each time alembic reads
#: a folder of migration scripts (Dagster's among them)
COUNT_MIGRATION_READS = """
from alembic.script import base

reads = []
read = base.ScriptDirectory._load_revisions


def counted(self):
    reads.append(str(self.dir))
    yield from read(self)


base.ScriptDirectory._load_revisions = counted
"""


def deploy_dagster_home(monkeypatch, postgres_url: str, folder: Path) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml (every store in PostgreSQL), its
    DAGSTER_PG_* variables pointing at ``postgres_url``, for the rest of one test."""
    import shutil

    from writevue_devtools.dagster_pg import dagster_pg_env

    for name, value in dagster_pg_env(postgres_url).items():
        monkeypatch.setenv(name, value)
    folder.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "deploy" / "dagster.yaml", folder / "dagster.yaml")
    return folder


def add_facts(
    runtime: Runtime,
    tenant_id: str,
    source: str,
    facts,
    *,
    options: dict | None = None,
    auth_kind: str = "api_key",
    refreshed_at=None,
) -> str:
    """A ``source`` connection of the tenant already holding ``facts`` (the warehouse's long
    format: metric, dimension, day, value); no source is called. Its id."""
    from writevue_pipelines import warehouse

    with runtime.db.session() as session:
        connection_id = registry.add_connection(
            session,
            runtime.keys,
            tenant_id,
            source,
            auth_kind,
            options or {},
            {"api_key": f"test-key-{token_hex(8)}"},
        )
        connection = registry.get_connection(session, connection_id)
        warehouse.upsert_facts(session, connection, facts, window_start=None)
        registry.record_refresh_result(
            session, connection_id, error=None, at=refreshed_at or dt.datetime.now(dt.UTC)
        )
    return connection_id


def home_runtime(root: Path) -> Runtime:
    """A ready ``root/home`` (SQLite) and its runtime, for a module's served world; the
    caller closes it."""
    from writevue_pipelines.home import init_home
    from writevue_pipelines.settings import Settings

    settings = Settings.from_env({"WRITEVUE_HOME": str(root / "home")})
    init_home(settings)
    return Runtime(settings)


#: playwright's device descriptors (iPhone 13, Pixel 7, ...), filled by the ``browser`` fixture
DEVICES: dict = {}


def device(name: str) -> dict:
    """A device's emulation settings for ``browser.new_context``: a real phone, not a
    narrow window."""
    return {k: v for k, v in DEVICES[name].items() if k != "default_browser_type"}


# -- mail and webhook peers on loopback -----------------------------------------------------------

#: the SMTP server the suite talks to: aiosmtpd in a child process, each message written
#: to ``folder/messages`` as ``<n>.eml`` with ``<n>.json`` (its envelope); what it answers
#: is read from ``folder/mode.json`` at every command (``SmtpPeer.fail``)
_SMTP_CHILD = r"""
import asyncio, json, os, signal, ssl, sys
from pathlib import Path
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

config = json.loads(os.environ["WV_SMTP_PEER"])
folder = Path(config["folder"])
inbox = folder / "messages"
inbox.mkdir(parents=True, exist_ok=True)
count = len(list(inbox.glob("*.json")))


def mode():
    try:
        return json.loads((folder / "mode.json").read_text())
    except (OSError, ValueError):
        return {}


def verdict(address):
    m = mode()
    only = m.get("only")
    if only is not None and address.lower() not in [a.lower() for a in only]:
        return None
    return m.get("mode")


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, options):
        what = verdict(address)
        if what == "hang":
            await asyncio.sleep(3600)
        if what == "4xx":
            return "451 4.3.0 Try again later"
        if what == "5xx":
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        global count
        what = [verdict(a) for a in envelope.rcpt_tos]
        if "data4xx" in what:
            return "452 4.3.1 Insufficient storage"
        if "data5xx" in what:
            return "554 5.6.0 Message refused"
        count += 1
        name = f"{count:06d}"
        (inbox / f"{name}.eml.part").write_bytes(envelope.original_content or envelope.content)
        os.replace(inbox / f"{name}.eml.part", inbox / f"{name}.eml")
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None or bool(config.get("smtps")),
            "authenticated": bool(session.authenticated),
        }
        (inbox / f"{name}.json.part").write_text(json.dumps(meta))
        os.replace(inbox / f"{name}.json.part", inbox / f"{name}.json")
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == config["user"]
        and auth_data.password.decode() == os.environ.get("WV_SMTP_PEER_PASSWORD", "")
    )
    return AuthResult(success=ok, handled=False)


def context():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config["cert"], config["key"])
    return ctx


async def main():
    loop = asyncio.get_running_loop()
    kwargs = {"hostname": "mail.test", "timeout": 60}
    if config.get("starttls"):
        kwargs["tls_context"] = context()
        kwargs["require_starttls"] = True
    if config.get("user"):
        kwargs.update(authenticator=authenticator, auth_required=True)
        kwargs["auth_require_tls"] = bool(config.get("starttls") or config.get("smtps"))
    server = await loop.create_server(
        lambda: SMTP(Handler(), **kwargs),
        "127.0.0.1",
        config["port"],
        ssl=context() if config.get("smtps") else None,
        reuse_address=True,
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    (folder / "ready").write_text(str(os.getpid()))
    await stop.wait()
    server.close()


asyncio.run(main())
"""


class ReceivedMail:
    """One message the SMTP peer accepted: its envelope and the parsed message."""

    def __init__(self, raw: bytes, meta: dict):
        from email import policy
        from email.parser import BytesParser

        self.raw = raw
        self.mail_from: str = meta["mail_from"]
        self.rcpt_tos: list[str] = meta["rcpt_tos"]
        self.tls: bool = meta["tls"]
        self.authenticated: bool = meta["authenticated"]
        self.message = BytesParser(policy=policy.default).parsebytes(raw)

    def part(self, content_type: str) -> str:
        """The decoded text of the message's first part of this type ("text/html")."""
        for part in self.message.walk():
            if part.get_content_type() == content_type:
                return part.get_content()
        raise KeyError(content_type)


class SmtpPeer:
    """aiosmtpd in a child process on loopback (see ``start_smtp_server``)."""

    def __init__(self, folder: Path, config: dict, password: str | None):
        self.folder, self.config, self._password = folder, config, password
        self.host, self.port = "127.0.0.1", config["port"]
        self.child: Child | None = None
        self.ca_file: Path | None = Path(config["cert"]) if config.get("cert") else None

    def _start(self) -> None:
        from writevue_pipelines.processes import spawn, wait_until

        ready = self.folder / "ready"
        ready.unlink(missing_ok=True)
        env = {**os.environ, "WV_SMTP_PEER": __import__("json").dumps(self.config)}
        if self._password:
            env["WV_SMTP_PEER_PASSWORD"] = self._password
        self.child = spawn(
            "smtp peer",
            [sys.executable, "-c", _SMTP_CHILD],
            log_path=self.folder / "smtp-peer.log",
            env=env,
        )
        try:
            wait_until(ready.exists, timeout=30, what="smtp peer", child=self.child, interval=0.05)
        except BaseException:
            self.child.stop()
            raise

    @property
    def url(self) -> str:
        """The ``WRITEVUE_SMTP_URL`` that reaches this server."""
        scheme = (
            "smtps"
            if self.config.get("smtps")
            else "smtp+starttls"
            if self.config.get("starttls")
            else "smtp"
        )
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def messages(self) -> list[ReceivedMail]:
        """Every message accepted so far, oldest first."""
        import json

        inbox = self.folder / "messages"
        return [
            ReceivedMail(meta.with_suffix(".eml").read_bytes(), json.loads(meta.read_text()))
            for meta in sorted(inbox.glob("*.json"))
        ]

    def fail(self, mode: str | None, *, only: list[str] | None = None) -> None:
        """From now on: ``None`` accept; ``"4xx"`` / ``"5xx"`` refuse recipients (451 / 550);
        ``"data4xx"`` / ``"data5xx"`` refuse the message after DATA; ``"hang"`` never answer
        RCPT; ``"refuse"`` stop listening (connections refused until ``fail(None)``).
        ``only``: these recipients only."""
        import json

        if mode == "refuse":
            if self.child is not None:
                self.child.stop()
            return
        (self.folder / "mode.json").write_text(json.dumps({"mode": mode, "only": only}))
        if self.child is None or not self.child.alive():
            self._start()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def __enter__(self) -> SmtpPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# the one home of the self-signed certificate helper (the production check uses it too)
from writevue_devtools.tls import make_tls_cert  # noqa: E402


def start_smtp_server(
    folder: Path,
    *,
    tls: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> SmtpPeer:
    """A real SMTP server (aiosmtpd, its own process) on a free loopback port, once it
    listens. ``tls``: None (plain), ``"starttls"`` (required before MAIL) or ``"smtps"``
    (TLS from the first byte), with a self-signed certificate whose file is ``.ca_file``;
    ``user``/``password``: AUTH required. ``.messages`` is what it accepted, ``.fail``
    makes it refuse, fail or hang, ``.stop()`` ends it."""
    from writevue_pipelines.processes import free_port

    folder.mkdir(parents=True, exist_ok=True)
    config: dict = {"folder": str(folder), "port": free_port()}
    if tls is not None:
        if tls not in ("starttls", "smtps"):
            raise ValueError(f"unknown tls {tls!r}")
        cert, key = make_tls_cert(folder / "tls")
        config.update({tls: True, "cert": str(cert), "key": str(key)})
    if user is not None:
        config["user"] = user
    peer = SmtpPeer(folder, config, password)
    peer._start()
    return peer


class ReceivedRequest:
    """One request the webhook receiver answered."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def json(self):
        import json

        return json.loads(self.body)


class WebhookReceiver:
    """An HTTP server on loopback, in a thread of this process (``start_webhook_receiver``)."""

    def __init__(self):
        import threading

        self.requests: list[ReceivedRequest] = []
        self.mode: str | int | None = None
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.server = None
        self.port = 0

    def _start(self, port: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                mode = receiver.mode
                if mode == "hang":
                    receiver._release.wait(120)
                    return
                with receiver._lock:
                    receiver.requests.append(
                        ReceivedRequest("POST", self.path, dict(self.headers.items()), body)
                    )
                status = mode if isinstance(mode, int) else 200
                reply = b"ok" if status < 300 else b"no"
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "60")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:  # the path is a secret: write nothing
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str | None = None) -> str:
        """A webhook URL on this receiver; by default a fresh secret path (remembered)."""
        path = path or f"/hooks/{token_hex(12)}"
        return remember_secret(f"http://127.0.0.1:{self.port}{path}")

    def fail(self, mode: str | int | None) -> None:
        """From now on: ``None`` 200; an HTTP status (404, 410, 429, 503, …) answered to
        every request (recorded); ``"hang"`` never answer; ``"refuse"`` stop listening
        (connections refused until ``fail(None)``)."""
        if mode == "refuse":
            self._shutdown()
            return
        self._release.set() if mode != "hang" else self._release.clear()
        self.mode = mode
        if self.server is None:
            self._start(self.port)

    def _shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def stop(self) -> None:
        self._release.set()
        self._shutdown()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_webhook_receiver() -> WebhookReceiver:
    """A real HTTP receiver on a free loopback port: ``.requests`` it answered (method,
    path, headers, body, ``.json()``), ``.url()`` a secret webhook URL on it, ``.fail``
    to answer 4xx/5xx, hang or refuse, ``.stop()``."""
    receiver = WebhookReceiver()
    receiver._start()
    return receiver
