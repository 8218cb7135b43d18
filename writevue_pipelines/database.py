"""Engines, sessions and schema migrations for the warehouse (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take control so that
        # BEGIN IMMEDIATE (used for cross-process locks) and savepoints behave.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # A database host that stops answering (rather than refusing) must not hold a
    # dashboard process or a run for TCP's own minutes: give up connecting after 10 s
    # unless the URL says otherwise.
    connect_args = {} if "connect_timeout=" in url else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL never corrupts; a power cut may undo the newest commits, which
    # a refresh redoes (its cursor moves in the same commit as its facts).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Deleted rows are overwritten with zeros, so erased data does not linger in the file.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _sqlite_begin(conn) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """One warehouse: an engine and a session factory."""

    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite's BEGIN IMMEDIATE, for ``locked_session`` (made once: a load takes one
        # per connection)
        self._locked_sessions = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        if not settings.database_url_override:
            settings.home.mkdir(parents=True, exist_ok=True)
        return cls(settings.database_url)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def locked_session(self) -> Iterator[Session]:
        """Like ``session`` but takes SQLite's write lock at BEGIN (BEGIN IMMEDIATE)."""
        if self.is_sqlite:
            with self._locked_sessions() as session, session.begin():
                yield session
        else:
            with self.session() as session:
                yield session

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = normalise_url(url)
    return config


def migrate(url: str) -> None:
    """Bring the schema to the newest migration; safe to run again."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
