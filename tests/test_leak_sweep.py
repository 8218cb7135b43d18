"""The suite's last check can fail: a secret stored in any table of any database the run
made, SQLite or PostgreSQL, is reported (``support.sweep_databases``, which conftest
runs over pytest's whole base temporary folder at the end of the session).

The secrets planted here are made up for each test and never registered with the suite
(``remember_secret``), so the session's own sweep is not tripped by them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from secrets import token_hex
from urllib.parse import quote

from support import dump_postgres, sweep_databases

REPO = Path(__file__).resolve().parents[1]


def _sqlite(path: Path, *statements: tuple[str, tuple]) -> None:
    con = sqlite3.connect(path)
    try:
        for sql, params in statements:
            con.execute(sql, params)
        con.commit()
    finally:
        con.close()


def _where(leaks: list[str], secret: str | bytes) -> list[str]:
    """The leak lines about one secret (they quote its first four characters)."""
    head = secret[:4] if isinstance(secret, str) else f"{len(secret)} bytes"
    return [line for line in leaks if line.startswith(head)]


def test_a_secret_in_a_text_or_blob_column_of_any_sqlite_file_is_found(tmp_path):
    text_secret = f"text-secret-{token_hex(12)}"
    blob_secret = f"blob-secret-{token_hex(12)}"
    short_secret = f"pw-{token_hex(3)}"  # 9 characters: the shortest the suite registers
    key = os.urandom(32)  # raw key material, searched as bytes
    create = ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, data BLOB)", ())
    # found by its header: no .db, no .sqlite
    _sqlite(
        tmp_path / "no-extension",
        create,
        ("INSERT INTO notes (body, data) VALUES (?, ?)", (f"see {text_secret} here", None)),
        ("INSERT INTO notes (body, data) VALUES (?, ?)", ("x", b"\xff\x00" + blob_secret.encode())),
        ("INSERT INTO notes (body, data) VALUES (?, ?)", (short_secret, b"\x80" + key + b"\x81")),
    )
    (tmp_path / "deeper").mkdir()
    _sqlite(
        tmp_path / "deeper" / "clean.db",
        create,
        ("INSERT INTO notes (body, data) VALUES (?, ?)", ("nothing to see", b"\x00\x01")),
    )

    sweep = sweep_databases(tmp_path, {text_secret, blob_secret, short_secret, key})

    assert sweep.sqlite_files == 2 and sweep.tables == 2 and sweep.rows == 4
    assert sweep.unreadable == []
    for secret, column in (
        (text_secret, "body"),
        (blob_secret, "data"),
        (short_secret, "body"),
        (key, "data"),
    ):
        where = _where(sweep.leaks, secret)
        assert any(f"table notes (column {column}) of SQLite" in w for w in where), sweep.leaks
        assert all("no-extension" in w for w in where), where
    assert not any("clean.db" in line for line in sweep.leaks)
    assert all(text_secret not in line for line in sweep.leaks)  # reported by its head only


def test_a_clean_database_reports_nothing(tmp_path):
    _sqlite(
        tmp_path / "warehouse.db",
        ("CREATE TABLE notes (body TEXT, data BLOB)", ()),
        ("INSERT INTO notes VALUES (?, ?)", ("an ordinary row", os.urandom(64))),
    )
    sweep = sweep_databases(tmp_path, {f"never-stored-{token_hex(12)}", os.urandom(32)})
    assert sweep.leaks == []
    assert sweep.sqlite_files == 1 and sweep.tables == 1 and sweep.rows == 1
    assert sweep.bytes_searched > 0


def test_a_secret_escaped_as_json_or_a_url_is_found(tmp_path):
    secret = f'p@ss/"{token_hex(10)}"'
    _sqlite(
        tmp_path / "escaped.db",
        ("CREATE TABLE events (body TEXT)", ()),
        ("INSERT INTO events VALUES (?)", (json.dumps({"password": secret}),)),
        ("INSERT INTO events VALUES (?)", (f"https://x.test/?p={quote(secret, safe='')}",)),
    )
    sweep = sweep_databases(tmp_path, {secret})
    assert secret.encode() not in (tmp_path / "escaped.db").read_bytes()  # only escaped
    tables = [w for w in _where(sweep.leaks, secret) if "table events (column body)" in w]
    assert len(tables) == 1, sweep.leaks  # one line per secret and place


def test_a_secret_left_only_in_a_wal_file_or_a_free_page_is_found(tmp_path):
    in_wal = f"wal-secret-{token_hex(12)}"
    deleted = f"deleted-secret-{token_hex(12)}"
    # A row deleted again: the table no longer holds it, the file's free page still does.
    _sqlite(
        tmp_path / "erased.db",
        ("PRAGMA secure_delete = OFF", ()),
        ("CREATE TABLE t (body TEXT)", ()),
        ("INSERT INTO t VALUES (?)", (deleted * 3,)),
        ("DELETE FROM t", ()),
    )
    # A write still in the WAL: a connection keeps it open and nothing is checkpointed.
    con = sqlite3.connect(tmp_path / "wal.db")
    try:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA wal_autocheckpoint = 0")
        con.execute("CREATE TABLE t (body TEXT)")
        con.execute("INSERT INTO t VALUES (?)", (in_wal,))
        con.commit()
        assert (tmp_path / "wal.db-wal").stat().st_size > 0
        assert in_wal.encode() not in (tmp_path / "wal.db").read_bytes()

        sweep = sweep_databases(tmp_path, {in_wal, deleted})
    finally:
        con.close()

    assert any("raw bytes of SQLite file erased.db" in w for w in _where(sweep.leaks, deleted))
    assert not any("table t" in w for w in _where(sweep.leaks, deleted))
    wal = _where(sweep.leaks, in_wal)
    assert any("raw bytes of SQLite file wal.db-wal" in w for w in wal), sweep.leaks
    assert any("table t (column body) of SQLite database wal.db" in w for w in wal), sweep.leaks


def test_a_secret_in_any_table_of_any_postgresql_schema_is_found(postgres_url, tmp_path):
    import psycopg

    text_secret = f"pg-text-{token_hex(12)}"
    bytea_secret = f"pg-bytea-{token_hex(12)}"
    json_secret = f"pg-json-{token_hex(12)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA elsewhere")
        conn.execute("CREATE TABLE elsewhere.notes (id serial, body text, data bytea, doc jsonb)")
        conn.execute(
            "INSERT INTO elsewhere.notes (body, data, doc) VALUES (%s, %s, %s)",
            (f"a {text_secret}", b"\x00\xff" + bytea_secret.encode(), json.dumps([json_secret])),
        )
        conn.execute("CREATE TABLE public.clean (body text)")
        conn.execute("INSERT INTO public.clean VALUES ('nothing to see'), ('nor here')")
        conn.execute("CREATE TABLE public.empty (body text)")

    dump_postgres(postgres_url, tmp_path / "dumps")
    sweep = sweep_databases(tmp_path / "dumps", {text_secret, bytea_secret, json_secret})

    database = postgres_url.rsplit("/", 1)[1]
    assert sweep.postgres_databases == 1 and sweep.tables == 3 and sweep.rows == 3
    for secret, column in ((text_secret, "body"), (bytea_secret, "data"), (json_secret, "doc")):
        (where,) = _where(sweep.leaks, secret)
        assert f"table elsewhere.notes (column {column}) of PostgreSQL database {database}" in where
    assert not any("public.clean" in line for line in sweep.leaks)

    clean = sweep_databases(tmp_path / "dumps", {f"never-stored-{token_hex(12)}"})
    assert clean.leaks == [] and clean.rows == 3


def test_a_run_that_stored_a_secret_in_a_database_fails(tmp_path, postgres_server):
    """The whole path: a test registers a secret, writes it to a SQLite file under its
    tmp_path and to its PostgreSQL database; the session fails and names both tables."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_planted.py").write_text(
        textwrap.dedent(
            """
            import sqlite3
            from secrets import token_hex

            import psycopg
            from support import remember_secret


            def test_sqlite(tmp_path):
                secret = remember_secret(f"planted-sqlite-{token_hex(12)}")
                con = sqlite3.connect(tmp_path / "planted")
                con.execute("CREATE TABLE planted_here (body TEXT)")
                con.execute("INSERT INTO planted_here VALUES (?)", (secret,))
                con.commit()
                con.close()


            def test_postgres(postgres_url):
                secret = remember_secret(f"planted-pg-{token_hex(12)}")
                with psycopg.connect(postgres_url, autocommit=True) as conn:
                    conn.execute("CREATE TABLE planted_there (body text)")
                    conn.execute("INSERT INTO planted_there VALUES (%s)", (secret,))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "conftest",
            "-W",
            "ignore::pytest.PytestUnknownMarkWarning",
            f"--rootdir={inner}",
            f"--basetemp={tmp_path / 'basetemp'}",
            str(inner / "test_planted.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=inner,
        timeout=240,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "2 passed" in out, out
    assert "LEAKED" in out and "none found" not in out, out
    assert "table planted_here (column body) of SQLite database" in out, out
    assert "table public.planted_there (column body) of PostgreSQL database" in out, out
