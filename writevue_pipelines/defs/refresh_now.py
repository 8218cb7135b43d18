"""Refresh connections now, through Dagster in this process, so the runs show in the UI.

Used by ``writevue refresh [--tenant ID]`` and ``writevue demo``. Connections are
refreshed as the schedule does it: one in-process run of the source's job
(``refresh_{source}``) per batch of WRITEVUE_REFRESH_BATCH connections, each batch a
range of consecutive partitions, so a failing connection fails only itself (and the
run, when it is the run's only connection). The report still has one outcome per
connection, and ``on_progress`` hears each as soon as it is known.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult, in_process_executor

from .. import registry
from ..errors import NotFound
from ..refresh import RefreshOutcome, safe_error
from ..registry import ConnectionInfo
from ..runtime import Runtime
from .assets import REFRESH_JOBS, SOURCE_ASSETS, advice, listening
from .batches import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE_TAG,
    TRIGGER_TAG,
    contiguous_batches,
    tenant_tags,
)
from .partitions import CONNECTION_PARTITIONS
from .resources import RESOURCE_KEY, WriteVueResource

#: ``on_progress(outcome, done, total)``: one connection's outcome, as soon as it is known
Progress = Callable[["ConnectionRefresh", int, int], None]

# The run's full event log goes to the instance (the Dagster UI shows it); the terminal
# gets the report instead of Dagster's per-event console lines and stack traces.
_QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class ConnectionRefresh:
    """How one connection's refresh went. Ids and counts only: safe to print and log."""

    connection_id: str
    tenant_id: str
    source: str
    ok: bool
    error: str | None = None
    run_id: str | None = None
    records: int = 0
    facts: int = 0
    rows_written: int = 0
    rows_removed: int = 0
    #: what the operator can do about a failure (the run's ``what_to_do``): one line, ids only
    advice: str | None = None

    def line(self) -> str:
        """One line for a terminal: ids, counts and the safe error only."""
        if self.ok:
            return (
                f"ok      {self.source:<8} {self.connection_id}  {self.records} records, "
                f"{self.facts} facts ({self.rows_written} changed, {self.rows_removed} removed)"
            )
        line = f"failed  {self.source:<8} {self.connection_id}  {self.error}"
        return f"{line}; what to do: {self.advice}" if self.advice else line


@dataclass(frozen=True)
class RefreshReport:
    connections: list[ConnectionRefresh] = field(default_factory=list)
    partitions_added: int = 0

    @property
    def total(self) -> int:
        return len(self.connections)

    @property
    def failures(self) -> list[ConnectionRefresh]:
        return [c for c in self.connections if not c.ok]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def succeeded(self) -> int:
        return self.total - self.failed

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def facts(self) -> int:
        return sum(c.facts for c in self.connections)

    @property
    def rows_written(self) -> int:
        return sum(c.rows_written for c in self.connections)

    def lines(self) -> list[str]:
        """One line per connection and a total, for a terminal."""
        if not self.connections:
            return ["no active connections to refresh"]
        lines = [c.line() for c in self.connections]
        runs = len({c.run_id for c in self.connections if c.run_id})
        lines.append(
            f"{self.succeeded} of {self.total} connection{'' if self.total == 1 else 's'} "
            f"refreshed in {runs} run{'' if runs == 1 else 's'}; the runs are in the "
            "Dagster UI (job refresh_<source>, tag writevue/tenant)"
        )
        return lines


def open_instance(runtime: Runtime) -> DagsterInstance:
    """The Dagster instance under ``WRITEVUE_HOME/dagster`` that `writevue init` laid out."""
    dagster_home = runtime.settings.dagster_home
    if not (dagster_home / "dagster.yaml").exists():
        raise NotFound(
            f"There is no Dagster instance at {dagster_home}; run `writevue init` first."
        )
    return DagsterInstance.from_config(str(dagster_home))


def refresh_now(
    runtime: Runtime | None = None,
    *,
    tenant_id: str | None = None,
    on_progress: Progress | None = None,
    batch: int | None = None,
) -> RefreshReport:
    """Refresh every active connection (or one tenant's) and report each one's outcome.

    A failing connection is reported, never raised; an unknown tenant or a missing
    instance raises a `WriteVueError` before anything runs. The runs use the Dagster
    instance and home of ``runtime``; like the code location, they take the database URL
    from ``WRITEVUE_DATABASE_URL``, never from resource config (it may hold a password).
    """
    owned = runtime is None
    runtime = runtime or Runtime.from_env()
    try:
        with runtime.db.session() as session:
            if tenant_id is not None:
                tenant_id = registry.require_tenant(session, tenant_id)
            connections = registry.list_connections(session, tenant_id=tenant_id, active_only=True)
        batch = batch or runtime.settings.refresh_batch
        with open_instance(runtime) as instance:
            added = _add_missing_partitions(instance, connections)
            resource = WriteVueResource(home=str(runtime.settings.home))
            progress = _Tally(connections, on_progress)
            for source in sorted({c.source for c in connections}):
                mine = [c for c in connections if c.source == source]
                if source not in SOURCE_ASSETS:
                    for c in mine:
                        progress.report(
                            _outcome(c, error=f"source {source!r} has no Dagster assets")
                        )
                    continue
                ordered = instance.get_dynamic_partitions(CONNECTION_PARTITIONS[source].name)
                for keys in contiguous_batches(ordered, [c.id for c in mine], batch):
                    _run_batch(instance, resource, source, keys, progress)
        # In the order the registry lists them, as before batching.
        return RefreshReport(
            connections=[progress.outcomes[c.id] for c in connections], partitions_added=added
        )
    finally:
        if owned:
            runtime.close()


class _Tally:
    """Each connection's outcome, told to ``on_progress`` once, as soon as it is known."""

    def __init__(self, connections: list[ConnectionInfo], on_progress: Progress | None):
        self.connections = {c.id: c for c in connections}
        self.outcomes: dict[str, ConnectionRefresh] = {}
        self.on_progress = on_progress

    def report(self, outcome: ConnectionRefresh) -> None:
        if outcome.connection_id in self.outcomes or outcome.connection_id not in self.connections:
            return  # told already (a retried step tells again), or another run's
        self.outcomes[outcome.connection_id] = outcome
        if self.on_progress is not None:
            self.on_progress(outcome, len(self.outcomes), len(self.connections))

    def heard(self, run_id: str) -> Callable[[RefreshOutcome], None]:
        def hear(result: RefreshOutcome) -> None:
            connection = self.connections.get(result.connection_id)
            if connection is not None:
                self.report(_from_refresh(connection, result, run_id))

        return hear


def _outcome(connection: ConnectionInfo, **kwargs) -> ConnectionRefresh:
    return ConnectionRefresh(
        connection_id=connection.id,
        tenant_id=connection.tenant_id,
        source=connection.source,
        ok=kwargs.pop("ok", False),
        **kwargs,
    )


def _from_refresh(connection: ConnectionInfo, result: RefreshOutcome, run_id: str):
    counts = {}
    if result.fetched is not None:
        counts["records"] = result.fetched.records
    if result.loaded is not None:
        counts |= {
            "facts": result.loaded.facts,
            "rows_written": result.loaded.written,
            "rows_removed": result.loaded.removed,
        }
    if result.error is not None or result.loaded is None:
        if result.error is None:
            return _outcome(connection, run_id=run_id, error="not refreshed", **counts)
        return _outcome(
            connection,
            run_id=run_id,
            error=safe_error(result.error),
            advice=advice(result.error, connection.id, connection.auth_kind),
            **counts,
        )
    return _outcome(connection, ok=True, run_id=run_id, **counts)


def _run_batch(
    instance: DagsterInstance,
    resource: WriteVueResource,
    source: str,
    keys: list[str],
    progress: _Tally,
) -> None:
    """One in-process run of the source's job over ``keys`` (consecutive partitions)."""
    run_id = str(uuid.uuid4())
    tags = {SOURCE_TAG: source, TRIGGER_TAG: "refresh_now"}
    tags |= tenant_tags(keys, {cid: c.tenant_id for cid, c in progress.connections.items()})
    partition_key = None
    if len(keys) == 1:
        partition_key = keys[0]
    else:
        tags |= {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
    try:
        with listening(progress.heard(run_id)):
            result = _job(source, resource).execute_in_process(
                instance=instance,
                partition_key=partition_key,
                run_config=_QUIET_RUN_CONFIG,
                raise_on_error=False,
                run_id=run_id,
                tags=tags,
            )
        failure = None if result.success else _failure_text(result)
    except Exception as exc:  # the run could not start: every connection of it failed
        result, failure = None, safe_error(exc)
    counts = _metadata_counts(result) if result is not None else {}
    for connection_id in keys:
        connection = progress.connections[connection_id]
        # Heard already, unless the run stopped before this connection's outcome was known.
        progress.report(
            _outcome(
                connection,
                run_id=run_id if result is not None else None,
                error=failure or "not refreshed; see the run in the Dagster UI",
                **counts.get(connection_id, {}),
            )
        )


def _job(source: str, resource: WriteVueResource):
    """The code location's ``refresh_{source}`` job, with this runtime's home."""
    return Definitions(
        assets=[SOURCE_ASSETS[source].refresh],
        jobs=[REFRESH_JOBS[source]],
        resources={RESOURCE_KEY: resource},
        executor=in_process_executor,
    ).resolve_job_def(SOURCE_ASSETS[source].job_name)


def _add_missing_partitions(instance: DagsterInstance, connections: list[ConnectionInfo]) -> int:
    added = 0
    for source, partitions in CONNECTION_PARTITIONS.items():
        wanted = [c.id for c in connections if c.source == source]
        present = set(instance.get_dynamic_partitions(partitions.name))
        # In the registry's order, so one tenant's new connections stay consecutive.
        missing = [cid for cid in wanted if cid not in present]
        if missing:
            instance.add_dynamic_partitions(partitions.name, missing)
            added += len(missing)
    return added


def _metadata_counts(result: ExecuteInProcessResult) -> dict[str, dict[str, int]]:
    """Connection id -> its counts, from the run's materialisations."""
    counts: dict[str, dict[str, int]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        mine = counts.setdefault(materialization.partition or "", {})
        for name in ("records", "facts", "rows_written", "rows_removed"):
            if name in materialization.metadata:
                mine[name] = mine.get(name, 0) + int(materialization.metadata[name].value)
    return counts


def _failure_text(result: ExecuteInProcessResult) -> str:
    # Our assets fail with a `Failure` whose description is already safe to show.
    for event in result.get_step_failure_events():
        failure = event.step_failure_data.user_failure_data
        if failure is not None and failure.description:
            return failure.description
    return f"the refresh run {result.run_id} failed; see it in the Dagster UI"
