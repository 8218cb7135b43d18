"""Dagster's storages, keeping a connection per process instead of one per statement.

dagster-postgres opens a new database connection for every event it stores (SQLAlchemy's
``NullPool``, so that an instance holds no idle connection), and every new connection is
a PostgreSQL backend forked and torn down again. A batch run stores some 520 events (a
materialisation, its planned event and six check results per connection); on the
benchmark's 1,000 connections those forks cost more server CPU than all the runs' own
work (docs/operations.md, "bench.orchestration"). Dagster's SQLite storages do the same
with files: an engine and a connection for every statement, two or three per event, each
commit waiting for the disk and each close checkpointing the file.

``PooledPostgresStorage`` is dagster-postgres' storage (the same tables, configuration
and migrations) whose three parts (the event log; the runs, which the daemon polls every
second; schedules and sensors) each keep one connection open in each process, checked
before each use (a connection the server ended, by a restart or an idle timeout, is
replaced rather than failing the event it was to store), with more, opened and closed as
before, while several threads of one process (the daemon's) use one part at once.
``deploy/dagster.yaml`` names it:

    storage:
      custom:
        module: writevue_pipelines.dagster_storage
        class: PooledPostgresStorage
        config:
          postgres_db: ...

``PooledSqliteStorage`` is the same for the embedded instance (``writevue init``'s
dagster.yaml names it): Dagster's SQLite files under ``base_dir``, each kept open (the
index and the last few runs' files for the event log), with ``synchronous=NORMAL``, and a
batch of events stored in one transaction per file; a run's materialisations and check
results, which a batch run reports in a row (100 and 300 for 50 connections), are kept
until its next other event and stored as such a batch.

Dagster's migration scripts are read once per process (``read_dagster_migrations``)
rather than at every check of a store's migration.

Every process that loads the instance (webserver, daemon, code server, run workers)
imports this module, so it imports nothing of WriteVue but the package itself.
"""

# Dagster reads annotations of configurable classes at runtime: no postponed annotations.
import inspect
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import yaml
from alembic.script import ScriptDirectory
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
    DagsterEventType,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log.base import EventLogStorage
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import ALEMBIC_SCRIPTS_LOCATION, create_engine, get_alembic_config
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy import event

#: Where Dagster hands the instance events as a batch (a run's planned materialisations,
#: which the daemon stores when it creates the run: two per connection), it stores up to
#: this many at once (``store_event_batch``, one transaction per file on SQLite) instead
#: of one by one. Dagster reads ``DAGSTER_EVENT_BATCH_SIZE`` at each event and batches
#: nothing without it; every process that loads these storages imports this module
#: first. An operator's own value wins.
EVENT_BATCH_SIZE = 500
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))

#: Dagster checks a store's migration against the newest of its migration scripts (about
#: 90 files, each executed by alembic to read it) every time it opens the store, and
#: stamps a new SQLite file of a run's the same way: three or four times for every run,
#: in the daemon that creates and launches it and in the run's own process, about 35 ms of
#: CPU each (bench.orchestration, py-spy). An installed Dagster's scripts do not change
#: while a process runs: alembic's ``ScriptDirectory.from_config`` gives Dagster's the
#: one folder object per process, which reads them once; every other folder (WriteVue's
#: own migrations among them) is alembic's own, read as before.
_dagster_scripts: ScriptDirectory | None = None
_dagster_scripts_lock = threading.Lock()
_scripts_from_config = ScriptDirectory.from_config.__func__


def _dagster_scripts_read_once(cls: type[ScriptDirectory], config: Any) -> ScriptDirectory:
    global _dagster_scripts
    location = config.get_alembic_option("script_location")
    if cls is not ScriptDirectory or location != ALEMBIC_SCRIPTS_LOCATION:
        return _scripts_from_config(cls, config)
    with _dagster_scripts_lock:
        if _dagster_scripts is None:
            _dagster_scripts = _scripts_from_config(cls, config)
        return _dagster_scripts


ScriptDirectory.from_config = classmethod(_dagster_scripts_read_once)


def read_dagster_migrations() -> None:
    """Read Dagster's migration scripts now (the code server's forkserver, so that every
    run forked from it starts with them read)."""
    import dagster._core.storage.runs.sqlite.sqlite_run_storage as runs

    ScriptDirectory.from_config(get_alembic_config(runs.__file__)).as_revision_number("head")


#: connections an event log keeps open per process (each process is one run, or the
#: daemon), and how many more it may open while its threads write at once
POOL_SIZE = 1
MAX_OVERFLOW = 10
#: a kept connection is replaced after this long (the server's or a proxy's idle limits)
POOL_RECYCLE_S = 3600


def _keep_connections(storage: Any) -> None:
    """Replace a dagster-postgres storage's engine (a connection per statement) with one
    that keeps ``POOL_SIZE`` connections, checked before each use."""
    options = storage._engine.url.query.get("options")
    storage._engine.dispose()
    storage._engine = create_pg_engine(
        storage.postgres_url,
        storage._token_provider,
        isolation_level="AUTOCOMMIT",
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        pool_recycle=POOL_RECYCLE_S,
        pool_pre_ping=True,
        **({"connect_args": {"options": options}} if options else {}),
    )


class _RemembersTables:
    """An event log (the class after this one in the bases) that remembers the tables it
    has found. Dagster asks whether a table exists before every check result and every
    materialisation's tags: on SQLite an engine and a schema query each time, a quarter
    of a stored check result's cost; on PostgreSQL a catalog query. A table, once there,
    stays (only a migration adds one, and it is then found by the next question)."""

    def has_table(self, table_name: str) -> bool:
        tables = self.__dict__.setdefault("_tables_found", set())
        if table_name in tables:
            return True
        found = super().has_table(table_name)  # type: ignore[misc]
        if found:
            tables.add(table_name)
        return found


#: a run's events kept at most before they are stored together (a batch run of 50
#: connections reports 100 materialisations, then 300 check results, in a row)
EVENTS_KEPT = 500
#: what a run reports in a row, one per connection and asset or check: kept to be stored
#: together (``_KeepsAssetEvents.KEPT``)
KEPT_EVENT_TYPES = frozenset(
    {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
)


class _KeepsAssetEvents:
    """An event log (the classes after this one in the bases) that keeps a run's
    materialisations and check results until the run's next other event, then stores them
    together (``_store_batch``, the storage's own: one transaction instead of two or three
    per event).

    A batch run reports a materialisation of each asset for each connection in a row (100
    for 50 connections), then their check results (300), right before its step's output or
    end; Dagster stores each event as it comes, and these events were the largest part of
    what Dagster added to a refresh's CPU. Events are kept at most ``EVENTS_KEPT`` at a
    time; every other use of this storage (any read, any other write, disposing of it)
    stores them first, so this process never reads without them and the order of a run's
    events is kept. Other processes (the UI, sensors) see them when they are stored, by the
    end of the step. A run killed in between loses the events not yet stored; it is then a
    failed run, whose retry refreshes its connections again and reports them."""

    #: the kinds of event kept (a subclass may keep fewer)
    KEPT: frozenset = KEPT_EVENT_TYPES

    def __init__(self, *args: Any, **kwargs: Any):
        self._pending: list[EventLogEntry] = []
        self._pending_lock = threading.Lock()
        #: set on a thread while it stores the kept events (what that calls stores nothing)
        self._storing = threading.local()
        super().__init__(*args, **kwargs)

    def _is_kept(self, event: EventLogEntry) -> bool:
        return bool(
            event.run_id and event.is_dagster_event and event.dagster_event_type in self.KEPT
        )

    def store_event(self, event: EventLogEntry) -> None:
        if self._is_kept(event):
            with self._pending_lock:
                self._pending.append(event)
                if len(self._pending) < EVENTS_KEPT:
                    return
            self._store_pending()
            return
        self._store_pending()
        super().store_event(event)  # type: ignore[misc]

    def _store_pending(self) -> None:
        if getattr(self._storing, "active", False):
            return  # called by _store_batch itself: its events are on their way
        with self._pending_lock:
            pending, self._pending = self._pending, []
        if pending:
            self._storing.active = True
            try:
                self._store_batch(pending)
            finally:
                self._storing.active = False

    def _discard_pending(self) -> None:
        with self._pending_lock:
            self._pending = []

    def _store_batch(self, events: Sequence[EventLogEntry]) -> None:
        raise NotImplementedError

    def delete_events(self, run_id: str) -> None:
        self._store_pending()
        super().delete_events(run_id)  # type: ignore[misc]


def _stores_kept_events_first(name: str) -> Any:
    def use(self: _KeepsAssetEvents, *args: Any, **kwargs: Any) -> Any:
        self._store_pending()
        return getattr(super(_KeepsAssetEvents, self), name)(*args, **kwargs)

    use.__name__ = name
    use.__doc__ = f"{name}, after storing the events kept."
    return use


#: every other public method of an event log (Dagster's ``EventLogStorage``), reads and
#: writes alike: each stores the kept events first (``store_event`` and
#: ``store_event_batch`` handle them; ``wipe`` drops them with everything else)
_USES = tuple(
    name
    for name, member in inspect.getmembers(EventLogStorage, inspect.isfunction)
    if not name.startswith("_")
    and name not in {"store_event", "store_event_batch", "delete_events", "dispose", "wipe"}
)
for _name in _USES:
    setattr(_KeepsAssetEvents, _name, _stores_kept_events_first(_name))


class _KeepsConnections:
    """A dagster-postgres storage (the class after this one in the bases) over a small pool
    instead of a connection per statement; configured as that storage is."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ):
        super().__init__(  # type: ignore[call-arg]
            postgres_url,
            should_autocreate_tables,
            inst_data=inst_data,
            token_provider=token_provider,
        )
        _keep_connections(self)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any):
        return _from_config(cls, inst_data, config_value)


def _from_config(cls: type, inst_data: ConfigurableClassData | None, config_value: Any) -> Any:
    """A storage of ``cls`` from dagster.yaml's ``postgres_db``/``postgres_url`` settings,
    as dagster-postgres' own ``from_config_value`` makes its classes."""
    return cls(
        inst_data=inst_data,
        postgres_url=pg_url_from_config(config_value),
        should_autocreate_tables=config_value.get("should_autocreate_tables", True),
        token_provider=get_token_provider_from_config(config_value),
    )


class PooledPostgresEventLogStorage(
    _KeepsAssetEvents, _RemembersTables, _KeepsConnections, PostgresEventLogStorage
):
    """dagster-postgres' event log, keeping its connections and the tables it found, and
    storing a run's check results together.

    Its materialisations are stored as they come: each updates its asset's row in
    ``asset_keys``, which every run of the source updates too, and a transaction holding
    that row for a run's hundred materialisations kept other runs waiting on it (in
    ``bench.orchestration --instance postgres`` one run took 50 s instead of 3, and three
    or four runs were under way at once where the pool allows two)."""

    KEPT = frozenset({DagsterEventType.ASSET_CHECK_EVALUATION})

    def __init__(self, *args: Any, **kwargs: Any):
        #: a thread's open transaction, which its nested statements join
        self._held = threading.local()
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        held = getattr(self._held, "conn", None)
        if held is not None:  # inside _store_batch's transaction: join it
            return nullcontext(held)
        return super()._connect()

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """dagster-postgres' own batch; one that it stores event by event (a run's planned
        checks, which the daemon stores as it creates the run) in one transaction instead
        of one per statement."""
        self._store_pending()
        kinds = {entry.dagster_event_type for entry in events}
        if kinds <= {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION}:
            super().store_event_batch(events)
            return
        with self._one_transaction():
            super().store_event_batch(events)

    def _store_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Kept events, each as dagster-postgres' ``store_event`` stores it, all in
        one transaction."""
        with self._one_transaction():
            for entry in events:
                PostgresEventLogStorage.store_event(self, entry)

    @contextmanager
    def _one_transaction(self) -> Iterator[Any]:
        """One transaction that every statement this thread sends meanwhile joins
        (``_connect``), dagster-postgres' own methods' included."""
        with super()._connect() as conn:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                self._held.conn = conn
                try:
                    yield conn
                finally:
                    del self._held.conn

    def dispose(self) -> None:
        self._store_pending()
        super().dispose()


class PooledPostgresRunStorage(_KeepsConnections, PostgresRunStorage):
    """dagster-postgres' run storage (runs, their status; the daemon polls it), keeping its
    connections."""


class PooledPostgresScheduleStorage(_KeepsConnections, PostgresScheduleStorage):
    """dagster-postgres' schedule and sensor storage (ticks, cursors), keeping its
    connections."""


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose three parts keep their connections."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ):
        # DagsterPostgresStorage.__init__ with the pooled parts in place of its own (calling
        # it would open each part twice).
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self._run_storage = PooledPostgresRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._event_log_storage = PooledPostgresEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._schedule_storage = PooledPostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> "PooledPostgresStorage":
        return _from_config(cls, inst_data, config_value)

    # An instance made from the parts (not from this class) gets the pooled ones too.
    def _part(self, storage: type) -> ConfigurableClassData | None:
        if self.inst_data is None:
            return None
        return ConfigurableClassData(__name__, storage.__name__, self.inst_data.config_yaml)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return self._part(PooledPostgresEventLogStorage)

    @property
    def run_storage_data(self) -> ConfigurableClassData | None:
        return self._part(PooledPostgresRunStorage)

    @property
    def schedule_storage_data(self) -> ConfigurableClassData | None:
        return self._part(PooledPostgresScheduleStorage)


# -- the embedded instance: SQLite files under DAGSTER_HOME ---------------------------------

#: run shards (one SQLite file per run) whose connection an event log keeps at once: a run
#: writes its own and the index; the daemon and the webserver move from run to run
SQLITE_SHARDS_KEPT = 4


def _sqlite_engine(conn_string: str, timeout: float | None = None) -> Any:
    """An engine over one SQLite file that keeps one connection (more while threads of one
    process use it at once), instead of opening, and on closing checkpointing, one per
    statement as Dagster's SQLite storages do."""
    from sqlalchemy.pool import QueuePool

    connect_args: dict[str, Any] = {"check_same_thread": False}
    if timeout is not None:
        connect_args["timeout"] = timeout
    engine = create_engine(
        conn_string,
        poolclass=QueuePool,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        connect_args=connect_args,
    )
    event.listen(engine, "connect", _synchronous_normal)
    return engine


def _synchronous_normal(dbapi_connection: Any, _record: Any) -> None:
    # Dagster's SQLite files are in WAL mode, where NORMAL never corrupts them: a commit is
    # not flushed to the disk until a checkpoint, so a power cut (not a crash) may undo the
    # newest events, as it may the newest commits of WriteVue's own SQLite warehouse
    # (writevue_pipelines.database). FULL waited for the disk on each of a run's events.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class PooledSqliteEventLogStorage(_KeepsAssetEvents, _RemembersTables, SqliteEventLogStorage):
    """Dagster's SQLite event log (an index file and one file per run), keeping a connection
    to the index and to the last ``SQLITE_SHARDS_KEPT`` run files it wrote or read."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Any] = OrderedDict()
        #: a thread's open transaction per shard, which its nested statements join
        self._held = threading.local()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> "PooledSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Any:
        # Called under self._db_lock, as SqliteEventLogStorage._connect holds it throughout.
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = _sqlite_engine(self.conn_string_for_shard(shard), SQLITE_BUSY_TIMEOUT_SECONDS)
        self._engines[shard] = engine
        runs = [name for name in self._engines if name != INDEX_SHARD_NAME]
        if len(runs) > SQLITE_SHARDS_KEPT:
            self._engines.pop(runs[0]).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        held = getattr(self._held, shard, None)
        if held is not None:  # inside _one_transaction: join it
            yield held
            return
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    @contextmanager
    def _one_transaction(self, shard: str) -> Iterator[Any]:
        """One transaction on ``shard`` that every statement this thread sends to it
        meanwhile joins, Dagster's own methods' included (each opens a connection)."""
        with self._connect(shard) as conn:
            setattr(self._held, shard, conn)
            try:
                yield conn
            finally:
                delattr(self._held, shard)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """``store_event`` for each event, in one transaction per file instead of two or
        three per event: a run's planned materialisations (two per connection), which the
        daemon stores as one batch when it creates the run (``EVENT_BATCH_SIZE``), and a
        batch run's materialisations and check results (``store_event``)."""
        self._store_pending()
        if len(events) < 2:
            for entry in events:
                self.store_event(entry)
            return
        self._store_batch(events)

    def _store_batch(self, events: Sequence[EventLogEntry]) -> None:
        statements = [self.prepare_insert_event(entry) for entry in events]
        by_run: dict[str, list[Any]] = {}
        for entry, statement in zip(events, statements, strict=True):
            by_run.setdefault(entry.run_id, []).append(statement)
        for run_id, inserts in by_run.items():
            with self.run_connection(run_id) as conn:
                for statement in inserts:
                    conn.execute(statement)
        assets = [
            (entry, statement)
            for entry, statement in zip(events, statements, strict=True)
            if entry.is_dagster_event and entry.dagster_event_type in ASSET_EVENTS
        ]
        mirrored = [
            (entry, statement)
            for entry, statement in zip(events, statements, strict=True)
            if entry.is_dagster_event
            and (
                entry.dagster_event_type in ASSET_CHECK_EVENTS
                or entry.dagster_event_type in EVENT_TYPE_TO_PIPELINE_RUN_STATUS
            )
        ]
        if not (assets or mirrored):
            return
        # Mirrored in the cross-run index, as store_event does, in one transaction (which
        # Dagster's store_asset_check_event joins).
        with self._one_transaction(INDEX_SHARD_NAME) as conn:
            if assets:
                ids = [conn.execute(statement).inserted_primary_key[0] for _, statement in assets]
                if any(event_id is None for event_id in ids):
                    raise DagsterInvariantViolationError(
                        "Cannot store asset event tags for null event id."
                    )
                self._store_asset_event_tags(conn, [entry for entry, _ in assets], ids)
                for (entry, _), event_id in zip(assets, ids, strict=True):
                    self._store_asset_event(conn, entry, event_id)
            for entry, statement in mirrored:
                if entry.dagster_event_type in ASSET_CHECK_EVENTS:
                    event_id = conn.execute(statement).inserted_primary_key[0]
                    self.store_asset_check_event(entry, event_id)
                else:
                    conn.execute(statement)

    def _forget_connections(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        # Its run files are deleted: a kept connection would go on writing the deleted file.
        self._discard_pending()
        self._forget_connections()
        super().wipe()

    def dispose(self) -> None:
        self._store_pending()
        self._forget_connections()
        super().dispose()


class _KeepsSqliteConnection:
    """A Dagster SQLite storage of one file (the class after this one in the bases) that
    keeps its connection; configured as that storage is."""

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(conn_string, inst_data=inst_data)  # type: ignore[call-arg]
        self._pooled = _sqlite_engine(conn_string)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any):
        return cls.from_local(inst_data=inst_data, **config_value)  # type: ignore[attr-defined]

    @contextmanager
    def connect(self) -> Iterator[Any]:
        with self._pooled.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self._pooled.dispose()
        super().dispose()  # type: ignore[misc]


class PooledSqliteRunStorage(_KeepsSqliteConnection, SqliteRunStorage):
    """Dagster's SQLite run storage (the daemon polls it every second), keeping its
    connection."""


class PooledSqliteScheduleStorage(_KeepsSqliteConnection, SqliteScheduleStorage):
    """Dagster's SQLite schedule and sensor storage (ticks, cursors), keeping its
    connection."""


class PooledSqliteStorage(DagsterSqliteStorage):
    """The embedded instance's storage (``writevue init``'s dagster.yaml names it): Dagster's
    SQLite storage under ``base_dir`` (the same files, schema and migrations) whose three
    parts keep their connections.

        storage:
          custom:
            module: writevue_pipelines.dagster_storage
            class: PooledSqliteStorage
            config:
              base_dir: /path/to/dagster_home/storage
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        # DagsterSqliteStorage.__init__ with the pooled parts in place of its own.
        self.base_dir = base_dir
        self._run_storage = PooledSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = PooledSqliteScheduleStorage.from_local(
            _schedule_directory(base_dir)
        )
        self._inst_data = inst_data
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> "PooledSqliteStorage":
        os.makedirs(config_value["base_dir"], exist_ok=True)
        return cls(inst_data=inst_data, **config_value)

    # An instance made from the parts (not from this class) gets the pooled ones too.
    def _part(self, storage: type, base_dir: str) -> ConfigurableClassData:
        config = yaml.dump({"base_dir": base_dir}, default_flow_style=False)
        return ConfigurableClassData(__name__, storage.__name__, config)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        return self._part(PooledSqliteEventLogStorage, _event_logs_directory(self.base_dir))

    @property
    def run_storage_data(self) -> ConfigurableClassData | None:
        return self._part(PooledSqliteRunStorage, _runs_directory(self.base_dir))

    @property
    def schedule_storage_data(self) -> ConfigurableClassData | None:
        return self._part(PooledSqliteScheduleStorage, _schedule_directory(self.base_dir))
