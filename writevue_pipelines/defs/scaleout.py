"""Past one machine: a refresh whose connections are steps, so workers on many machines
share one run.

``{source}_refresh_steps`` is an op job per source. ``{source}_pick_connections`` picks
the run's connections (the ids in its config, or every active connection of the source)
and emits one dynamic output per connection; ``{source}_refresh_connection`` refreshes
one connection with the refresh core the asset uses (``refresh.refresh_connections``),
holding a slot of its provider's pool, and records what the asset would: the
connection's partition of ``{source}_fetch`` and ``{source}_daily_metrics``
materialised, its registry status, its check results. A failing connection fails its
own step; the others go on.

Its executor is chosen when the code location loads (``WRITEVUE_EXECUTOR``): in process
by default, or Dagster's Celery executor, whose workers (``celery -A
writevue_pipelines.defs.celery_app worker -Q $WRITEVUE_CELERY_QUEUE``, on any number of
machines) each execute steps. The executor is given the *name* of the variable holding
the broker URL, never its value: Dagster reads it where the run executes, so a password
in it reaches no run config, tag or event.

The connection ids travel in the step keys (the mapping key is the UUID with ``_`` for
``-``) and nothing passes through storage, so a worker on another machine needs the
database and the key ring, not a disk shared with the run. Fetch and load of a
connection stay in one step: its staged records are sealed under a key that lives only
in the process that staged them (see ``refresh``).

The batched asset runs stay the default: one process fetches its batch's connections
concurrently, which costs less CPU per connection than a step each (a step costs a
process's worth of Dagster bookkeeping). Steps are for when one machine's CPU is the
limit; docs/operations.md ("Past one machine") says when.
"""

# Dagster reads the annotations of op functions at runtime, so no
# `from __future__ import annotations` here.
import uuid
from collections.abc import Iterator

from dagster import (
    AssetCheckEvaluation,
    AssetMaterialization,
    Config,
    DefaultScheduleStatus,
    Definitions,
    DynamicOut,
    DynamicOutput,
    ExecutorDefinition,
    Failure,
    In,
    InputContext,
    IOManager,
    JobDefinition,
    OpExecutionContext,
    OutputContext,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    in_process_executor,
    io_manager,
    job,
    op,
    schedule,
)

from .. import refresh, registry
from ..settings import Settings, get_settings
from ..sources import SOURCES
from . import checks
from .assets import (
    FETCH_RETRY_POLICY,
    SOURCE_ASSETS,
    SourceAssets,
    _failure_metadata,
    _record_failure,
    fetch_metadata,
    load_metadata,
    pool_name,
)
from .batches import SOURCE_TAG, TRIGGER_TAG, chunks
from .resources import WriteVueResource

#: the variables the Celery executor reads where a run executes (never their values here)
BROKER_VARIABLE = "WRITEVUE_CELERY_BROKER"
BACKEND_VARIABLE = "WRITEVUE_CELERY_BACKEND"
IO_MANAGER_KEY = "connection_id_in_step_key"


def mapping_key(connection_id: str) -> str:
    """A connection's step-key suffix: its UUID, with ``_`` where Dagster allows no ``-``."""
    return str(uuid.UUID(connection_id)).replace("-", "_")


def connection_id_of(key: str) -> str:
    return str(uuid.UUID(key.replace("_", "-")))


class ConnectionIdInStepKey(IOManager):
    """Hands a connection id from the picking step to its refresh step through the step key.

    Nothing is written anywhere, so steps on other machines need no shared storage, and
    an id is all that ever passes between steps.
    """

    def handle_output(self, context: OutputContext, obj: str) -> None:
        if context.mapping_key is None or connection_id_of(context.mapping_key) != obj:
            raise ValueError("a connection id must be emitted under its own mapping key")

    def load_input(self, context: InputContext) -> str:
        upstream = context.upstream_output
        if upstream is None or upstream.mapping_key is None:
            raise ValueError("a refresh step takes its connection id from its mapping key")
        return connection_id_of(upstream.mapping_key)


@io_manager
def connection_id_in_step_key() -> ConnectionIdInStepKey:
    return ConnectionIdInStepKey()


class PickConnectionsConfig(Config):
    """Which connections the run refreshes: these ids, or (none given) every active one."""

    connection_ids: list[str] = []


def refresh_executor(settings: Settings) -> ExecutorDefinition:
    """In process, or Celery with the broker and backend read from the environment."""
    if settings.refresh_executor != "celery":
        return in_process_executor
    from dagster_celery import celery_executor  # the `production` extra

    config: dict = {
        "broker": {"env": BROKER_VARIABLE},
        "config_source": {"task_default_queue": settings.celery_queue},
    }
    if settings.celery_backend != "rpc://":
        config["backend"] = {"env": BACKEND_VARIABLE}
    return celery_executor.configured(config, name="writevue_celery")


def celery_app_args(settings: Settings) -> dict:
    """The Celery app a worker runs: the same broker, backend and queue as the runs' executor."""
    from dagster_celery.executor import CeleryExecutor

    if not settings.celery_broker:
        raise ValueError(f"a Celery worker needs {BROKER_VARIABLE} in its environment")
    return CeleryExecutor.for_cli(
        broker=settings.celery_broker,
        backend=settings.celery_backend,
        config_source={"task_default_queue": settings.celery_queue},
    ).app_args()


def _materializations(pair: SourceAssets, outcome: refresh.RefreshOutcome) -> Iterator:
    """The connection's partitions of the source's assets that this refresh completed."""
    fetched, loaded = outcome.fetched, outcome.loaded
    if fetched is not None:
        yield AssetMaterialization(
            pair.fetch_key,
            partition=outcome.connection_id,
            metadata=fetch_metadata(fetched),
        )
    if loaded is not None:
        yield AssetMaterialization(
            pair.daily_metrics_key,
            partition=outcome.connection_id,
            metadata=load_metadata(loaded),
        )


def build_refresh_steps_job(pair: SourceAssets, executor: ExecutorDefinition) -> JobDefinition:
    source = SOURCES[pair.source]

    @op(
        name=f"{source.name}_pick_connections",
        out=DynamicOut(str, io_manager_key=IO_MANAGER_KEY),
        description="One output per connection of the run: its id (the step key carries it).",
    )
    def pick_connections(
        context: OpExecutionContext, config: PickConnectionsConfig, writevue: WriteVueResource
    ) -> Iterator[DynamicOutput]:
        with writevue.runtime.db.session() as session:
            active = [
                c.id
                for c in registry.list_connections(session, source=source.name, active_only=True)
            ]
        if config.connection_ids:
            wanted = [registry.parse_uuid(cid, "connection") for cid in config.connection_ids]
            unknown = sorted(set(wanted) - set(active))
            if unknown:
                context.log.warning(
                    f"{len(unknown)} of the connections asked for are not active {source.name} "
                    f"connections; skipped: {', '.join(unknown)}"
                )
            picked = [cid for cid in dict.fromkeys(wanted) if cid in set(active)]
        else:
            picked = active
        context.log.info(f"{len(picked)} {source.name} connections, a step each")
        for connection_id in picked:
            yield DynamicOutput(connection_id, mapping_key=mapping_key(connection_id))

    @op(
        name=f"{source.name}_refresh_connection",
        ins={"connection_id": In(str)},
        out={},  # what it did is in its events; nothing passes on
        pool=pool_name(source.name),
        retry_policy=FETCH_RETRY_POLICY,
        description=(
            f"{source.title}: fetch and aggregate one connection, as {source.name}_refresh "
            "does for a batch, and record its partition of both assets and its checks."
        ),
    )
    def refresh_connection(
        context: OpExecutionContext, writevue: WriteVueResource, connection_id: str
    ) -> Iterator[AssetMaterialization | AssetCheckEvaluation]:
        runtime = writevue.runtime
        before = checks.connection_states(runtime, [connection_id])
        if connection_id not in before:
            context.log.warning(f"connection {connection_id} no longer exists; skipped")
            return
        try:
            outcome = refresh.refresh_connections(runtime, [connection_id])[connection_id]
        except Exception as exc:
            outcome = refresh.RefreshOutcome(connection_id, error=exc)
        yield from _materializations(pair, outcome)
        failures = {} if outcome.loaded is not None else {connection_id: outcome.error}
        if failures:
            _record_failure(context, writevue, connection_id, outcome.error)
        yield from checks.evaluate(
            runtime,
            source,
            pair.daily_metrics_key,
            before,
            failures,
            report_passes=runtime.settings.check_passes,
            targets=checks.latest_materializations(
                context.instance, pair.daily_metrics_key, [connection_id]
            ),
        )
        if failures:
            # The step is the connection's refresh: it fails with it, alone, as a run of
            # one connection of the asset does.
            raise Failure(
                description=refresh.safe_error(outcome.error),
                metadata=_failure_metadata(runtime, connection_id, outcome.error),
                allow_retries=False,
            )

    @job(
        name=f"{source.name}_refresh_steps",
        executor_def=executor,
        tags={SOURCE_TAG: source.name},
        description=(
            f"Refreshes {source.name} connections a step each, so Celery workers share the "
            "run (WRITEVUE_EXECUTOR=celery); in process otherwise. See docs/operations.md."
        ),
    )
    def refresh_steps():
        pick_connections().map(refresh_connection)

    return refresh_steps


def build_refresh_steps_schedule(job_def: JobDefinition, source: str) -> ScheduleDefinition:
    """The steps job on the source's cadence, in runs of WRITEVUE_REFRESH_BATCH connections.

    Stopped by default: start it instead of ``{source}_refresh`` once workers run.
    """
    settings = get_settings()

    @schedule(
        name=f"{source}_refresh_steps",
        cron_schedule=settings.cron_for(source),
        execution_timezone="UTC",
        job=job_def,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            f"Refreshes every {source} connection a step each, WRITEVUE_REFRESH_BATCH per run, "
            f"on the {source}_refresh schedule's cadence. Run this one or that one, not both."
        ),
    )
    def refresh_steps_schedule(context: ScheduleEvaluationContext, writevue: WriteVueResource):
        with writevue.runtime.db.session() as session:
            connection_ids = [
                c.id for c in registry.list_connections(session, source=source, active_only=True)
            ]
        if not connection_ids:
            return SkipReason(f"no {source} connections yet")
        tick = context.scheduled_execution_time
        prefix = tick.isoformat() if tick else None
        return [
            RunRequest(
                run_key=f"{prefix}:{chunk[0]}" if prefix else None,
                run_config=run_config(source, list(chunk)),
                tags={TRIGGER_TAG: "schedule"},
            )
            for chunk in chunks(connection_ids, get_settings().refresh_batch)
        ]

    return refresh_steps_schedule


def run_config(source: str, connection_ids: list[str]) -> dict:
    """The run config of a steps run of these connections (ids only)."""
    return {"ops": {f"{source}_pick_connections": {"config": {"connection_ids": connection_ids}}}}


_EXECUTOR = refresh_executor(get_settings())

#: source name -> its steps job
REFRESH_STEPS_JOBS: dict[str, JobDefinition] = {
    name: build_refresh_steps_job(pair, _EXECUTOR) for name, pair in SOURCE_ASSETS.items()
}
REFRESH_STEPS_SCHEDULES = {
    name: build_refresh_steps_schedule(job_def, name)
    for name, job_def in REFRESH_STEPS_JOBS.items()
}

defs = Definitions(
    jobs=list(REFRESH_STEPS_JOBS.values()),
    schedules=list(REFRESH_STEPS_SCHEDULES.values()),
    resources={IO_MANAGER_KEY: connection_id_in_step_key},
)
