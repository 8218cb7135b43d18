"""Dagster's PostgreSQL storage, keeping a connection per process instead of one per statement.

dagster-postgres opens a new database connection for every event it stores (SQLAlchemy's
``NullPool``, so that an instance holds no idle connection), and every new connection is
a PostgreSQL backend forked and torn down again. A batch run stores some 520 events (a
materialisation, its planned event and six check results per connection); on the
benchmark's 1,000 connections those forks cost more server CPU than all the runs' own
work (docs/operations.md, "bench.orchestration").

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

Every process that loads the instance (webserver, daemon, code server, run workers)
imports this module, so it imports nothing of WriteVue but the package itself.
"""

# Dagster reads annotations of configurable classes at runtime: no postponed annotations.
from typing import Any

from dagster._core.storage.base_storage import DagsterStorage
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


class PooledPostgresEventLogStorage(_KeepsConnections, PostgresEventLogStorage):
    """dagster-postgres' event log, keeping its connections."""


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
