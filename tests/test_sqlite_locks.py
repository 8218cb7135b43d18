"""Reading a SQLite database's raw bytes must not cost the process its SQLite locks.

POSIX advisory locks belong to a process and a file: closing *any* descriptor of the file
drops every lock the process holds on it, SQLite's included ("How To Corrupt An SQLite
Database File", 2.2). An erasure proves itself by reading the raw database file, its WAL
and shared-memory file, and every file under the home (Dagster's SQLite storage too); done
with plain ``open``/``close`` in the process that also holds SQLite connections, another
process then believes it is the last one connected, checkpoints and deletes the WAL, and
this process's next commit lands in a deleted file: the crash soak saw an erasure's own
record vanish and ``disk I/O error``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid

from writevue_pipelines.privacy import verification


def _other_process(path: str, code: str) -> str:
    script = f"import sqlite3, sys\ndb = sqlite3.connect({path!r}, timeout=5)\n{code}\ndb.close()\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def _write_and_count(runtime, path: str) -> None:
    """This process commits through its pooled connection; a new process must see it."""
    marker = str(uuid.uuid4())
    with runtime.db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS lock_probe (v TEXT)")
        conn.exec_driver_sql("INSERT INTO lock_probe VALUES (?)", (marker,))
    query = "SELECT count(*) FROM lock_probe WHERE v = ?"
    seen = _other_process(path, f"print(db.execute({query!r}, ({marker!r},)).fetchone()[0])")
    assert seen == "1", "a committed row is lost: this process's SQLite locks were dropped"


def test_scanning_the_raw_database_keeps_this_processs_sqlite_locks(runtime):
    path = runtime.db.engine.url.database
    held = runtime.db.engine.connect()  # a pooled connection kept open, as a server's is
    held.exec_driver_sql("SELECT count(*) FROM tenants").fetchall()
    try:
        _write_and_count(runtime, path)
        ids = verification.Identifiers(str(uuid.uuid4()))
        verification.scan_database_bytes(runtime, ids)
        verification.scan_files(runtime, ids)
        # Another process comes and goes: as the last connection it would checkpoint and
        # delete the WAL if it could not see this process's locks.
        _other_process(path, "db.execute('SELECT 1').fetchall()")
        for _ in range(3):
            _write_and_count(runtime, path)
    finally:
        held.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_raw_reader_counts_across_chunk_edges_and_names_what_it_cannot_read(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(verification, "_CHUNK", 7)  # needles straddle every chunk edge
    text = tmp_path / "a.bin"
    text.write_bytes(b"xxabcdefxxabcdefabcdef-ab" + bytes(range(256)))  # holds "abcdef" too
    missing = tmp_path / "gone.bin"
    answers = verification._count_in_files([text, missing], [b"abcdef", b"ab", b"\x00\x01"])
    assert answers == [{b"abcdef": 4, b"ab": 5, b"\x00\x01": 1}, "FileNotFoundError"]
