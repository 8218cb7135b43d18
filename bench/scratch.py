"""A throwaway PostgreSQL database for a benchmark: created on the local server, then dropped."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from writevue_devtools.peers import POSTGRES_ADMIN_URL


class PostgresUnavailable(Exception):
    """The server did not let us create a database; the text names the error's type."""


@contextlib.contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """A new, empty database on the server at POSTGRES_ADMIN_URL: its URL, dropped on exit.

    Raises ``PostgresUnavailable`` when the server does not answer (within 3 s) or refuses.
    """
    import psycopg

    name = f"writevue_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        raise PostgresUnavailable(type(exc).__name__) from exc
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
