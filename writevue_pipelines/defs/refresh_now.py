"""Refresh connections now, through Dagster in this process, so the runs show in the UI.

Used by ``writevue refresh [--tenant ID]`` and ``writevue demo``. Each connection gets
its own in-process run of its source's refresh, so a failure fails that connection's
run only. Refreshing many connections in few runs is the schedules' job (batched
partition-range runs), not this operator shortcut's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from .. import registry
from ..errors import NotFound
from ..refresh import safe_error
from ..registry import ConnectionInfo
from ..runtime import Runtime
from .assets import SOURCE_ASSETS
from .partitions import CONNECTION_PARTITIONS
from .resources import RESOURCE_KEY, WriteVueResource

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
        lines = []
        for c in self.connections:
            if c.ok:
                lines.append(
                    f"ok      {c.source:<8} {c.connection_id}  {c.records} records, "
                    f"{c.facts} facts ({c.rows_written} changed, {c.rows_removed} removed)"
                )
            else:
                lines.append(f"failed  {c.source:<8} {c.connection_id}  {c.error}")
        lines.append(
            f"{self.succeeded} of {self.total} connections refreshed; "
            "the runs are in the Dagster UI"
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


def refresh_now(runtime: Runtime | None = None, *, tenant_id: str | None = None) -> RefreshReport:
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
        with open_instance(runtime) as instance:
            added = _add_missing_partitions(instance, connections)
            resource = WriteVueResource(home=str(runtime.settings.home))
            outcomes = [_refresh_one(instance, resource, c) for c in connections]
        return RefreshReport(connections=outcomes, partitions_added=added)
    finally:
        if owned:
            runtime.close()


def _add_missing_partitions(instance: DagsterInstance, connections: list[ConnectionInfo]) -> int:
    added = 0
    for source, partitions in CONNECTION_PARTITIONS.items():
        wanted = {c.id for c in connections if c.source == source}
        missing = sorted(wanted - set(instance.get_dynamic_partitions(partitions.name)))
        if missing:
            instance.add_dynamic_partitions(partitions.name, missing)
            added += len(missing)
    return added


def _refresh_one(
    instance: DagsterInstance, resource: WriteVueResource, connection: ConnectionInfo
) -> ConnectionRefresh:
    outcome = ConnectionRefresh(
        connection_id=connection.id,
        tenant_id=connection.tenant_id,
        source=connection.source,
        ok=False,
    )
    pair = SOURCE_ASSETS.get(connection.source)
    if pair is None:
        return replace(outcome, error=f"source {connection.source!r} has no Dagster assets")
    try:
        result = materialize(
            [pair.refresh],
            instance=instance,
            resources={RESOURCE_KEY: resource},
            partition_key=connection.id,
            run_config=_QUIET_RUN_CONFIG,
            raise_on_error=False,
            tags={"writevue/trigger": "refresh_now"},
        )
    except Exception as exc:
        return replace(outcome, error=safe_error(exc))
    counts = _metadata_counts(result)
    if not result.success:
        return replace(outcome, run_id=result.run_id, error=_failure_text(result), **counts)
    return replace(outcome, ok=True, run_id=result.run_id, **counts)


def _metadata_counts(result: ExecuteInProcessResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        for name in ("records", "facts", "rows_written", "rows_removed"):
            if name in metadata:
                counts[name] = counts.get(name, 0) + int(metadata[name].value)
    return counts


def _failure_text(result: ExecuteInProcessResult) -> str:
    # Our assets fail with a `Failure` whose description is already safe to show.
    for event in result.get_step_failure_events():
        failure = event.step_failure_data.user_failure_data
        if failure is not None and failure.description:
            return failure.description
    return f"the refresh run {result.run_id} failed; see it in the Dagster UI"
