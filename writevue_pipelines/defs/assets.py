"""The asset pair every source gets: fetch connections into staging, then aggregate them.

Both assets are computed by one step, so a batch run costs one process: the step
fetches every connection of its run at once (async), aggregates each fetched one, and
records a materialisation per connection partition for each asset it completed. A
connection that fails is recorded as failing (registry and the ``refreshed`` check)
and never stops the others; only a run of that one connection fails.

Nothing passes through an IO manager: the step hands each connection's fetched records
to its load itself (in memory, or sealed staging files under ``WRITEVUE_HOME/staging``
once its loads fall behind; ``refresh``), and the assets report only counts, timings and
days as metadata — never names, emails, credentials or URLs.

Each source's pair is refreshed by the asset job ``refresh_{source}``, which the
schedule, the sensors and ``writevue refresh`` all launch, so the runs of a source are
found under one job name in the UI (a backfill launched from the asset graph runs as
Dagster's own asset job; launched from the job's page it runs as the job).
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import contextlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    Definitions,
    Failure,
    Jitter,
    MetadataValue,
    RetryPolicy,
    define_asset_job,
    multi_asset,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)
from dagster._core.errors import DagsterExecutionInterruptedError

from .. import refresh
from ..errors import CredentialRejected, SourceError, WriteVueError
from ..settings import get_settings
from ..sources import SOURCES, Source
from . import checks
from .partitions import CONNECTION_PARTITIONS
from .resources import WriteVueResource

#: Whole-step failures (the warehouse unreachable, the process killed) are retried;
#: a connection's own failure is not: the failing-connections sensor retries it alone.
FETCH_RETRY_POLICY = RetryPolicy(
    max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


@dataclass(frozen=True)
class SourceAssets:
    """One source's refresh: the fetch and daily-metrics assets, computed together."""

    source: str
    refresh: AssetsDefinition

    @property
    def job_name(self) -> str:
        return job_name(self.source)

    @property
    def fetch_key(self) -> AssetKey:
        return AssetKey(f"{self.source}_fetch")

    @property
    def daily_metrics_key(self) -> AssetKey:
        return AssetKey(f"{self.source}_daily_metrics")

    @property
    def keys(self) -> list[AssetKey]:
        return [self.fetch_key, self.daily_metrics_key]


def job_name(source: str) -> str:
    """The asset job that refreshes a source's connections: what to filter runs by. (Not
    ``{source}_refresh``: that is the step's name, and a job's graph may not share it.)"""
    return f"refresh_{source}"


#: Called in this process with each connection's outcome as soon as it is known, by the
#: runs this process executes (``writevue refresh`` shows them as progress).
_LISTENERS: list[Callable[[refresh.RefreshOutcome], None]] = []


@contextlib.contextmanager
def listening(callback: Callable[[refresh.RefreshOutcome], None]) -> Iterator[None]:
    """Hear each connection's outcome from the in-process runs started meanwhile."""
    _LISTENERS.append(callback)
    try:
        yield
    finally:
        _LISTENERS.remove(callback)


def _tell(outcome: refresh.RefreshOutcome) -> None:
    for callback in list(_LISTENERS):
        with contextlib.suppress(Exception):  # progress never fails a refresh
            callback(outcome)


def advice(exc: BaseException, connection_id: str, auth_kind: str | None = None) -> str:
    """What the operator can do about a connection's failure: one line, ids only."""
    if isinstance(exc, CredentialRejected):
        if auth_kind == "oauth2":
            return (
                "ask the client to reconnect (their dashboard shows how) or run `writevue "
                f"connection authorize TENANT SOURCE --reconnect {connection_id}`"
            )
        return f"re-enter the credential with `writevue connection rekey {connection_id}`"
    status = getattr(exc, "status", None)
    if status == 429:
        return "nothing: the provider's rate limit resets and the next refresh carries on"
    if status == 404:
        return f"check the connection's options; `writevue connection test {connection_id}`"
    if isinstance(exc, SourceError):
        return f"if it persists, `writevue connection test {connection_id}` shows the error"
    return "an unexpected error: the run's log shows where it broke"


def fetch_metadata(fetched: refresh.FetchSummary) -> dict[str, MetadataValue]:
    """A connection's fetch materialisation: counts and timings only."""
    return {
        "records": MetadataValue.int(fetched.records),
        "requests": MetadataValue.int(fetched.requests),
        "source_latency_s": MetadataValue.float(fetched.latency_s),
        "window_start": MetadataValue.text(fetched.window_start),
    }


def load_metadata(loaded: refresh.LoadSummary) -> dict[str, MetadataValue]:
    """A connection's daily-metrics materialisation: counts and days only."""
    return {
        "facts": MetadataValue.int(loaded.facts),
        "rows_written": MetadataValue.int(loaded.written),
        "rows_removed": MetadataValue.int(loaded.removed),
        "days_touched": MetadataValue.int(loaded.days),
        "first_day": MetadataValue.text(loaded.first_day or ""),
        "last_day": MetadataValue.text(loaded.last_day or ""),
    }


def pool_name(source: str) -> str:
    """The concurrency pool that keeps a provider's concurrent runs within its rate limit."""
    return f"{source}_api"


def build_source_assets(source: Source, *, batch: int | None = None) -> SourceAssets:
    partitions = CONNECTION_PARTITIONS[source.name]
    tags = {"source": source.name}
    fetch_key = AssetKey(f"{source.name}_fetch")
    metrics_key = AssetKey(f"{source.name}_daily_metrics")
    batch = batch or get_settings().refresh_batch

    @multi_asset(
        name=f"{source.name}_refresh",
        specs=[
            AssetSpec(
                fetch_key,
                group_name=source.name,
                description=(
                    f"{source.title}: read each connection incrementally from its cursor into "
                    "transient staging: the run's memory, or sealed files under "
                    "WRITEVUE_HOME/staging while its loads fall behind. Raw records go nowhere "
                    "else."
                ),
                kinds={source.name},
                tags=tags,
                skippable=True,
            ),
            AssetSpec(
                metrics_key,
                group_name=source.name,
                deps=[fetch_key],
                description=(
                    f"{source.title}: aggregate the staged records with polars into daily "
                    f"facts ({', '.join(source.metrics) or 'from the spec'}), upsert them into "
                    "the warehouse and advance the cursor in the same commit, then drop "
                    "the staged records."
                ),
                kinds={"polars"},
                tags=tags,
                skippable=True,
            ),
        ],
        check_specs=checks.check_specs(metrics_key, partitions),
        partitions_def=partitions,
        # Subsettable so that no output is required: a connection's outcome is reported by
        # the per-partition events below. A subset still refreshes the pair: one asset
        # of it alone (a fetch left unaggregated) would be a half-written refresh.
        can_subset=True,
        backfill_policy=BackfillPolicy.multi_run(batch),
        retry_policy=FETCH_RETRY_POLICY,
        pool=pool_name(source.name),
    )
    def refresh_connections(
        context: AssetExecutionContext, writevue: WriteVueResource
    ) -> Iterator[AssetMaterialization | AssetCheckEvaluation]:
        runtime = writevue.runtime
        connection_ids = list(context.partition_keys)
        before = checks.connection_states(runtime, connection_ids)
        existing = [cid for cid in connection_ids if cid in before]
        # One call for every connection in the run: the fetches are async-batched and
        # each connection is loaded as soon as its records are staged.
        try:
            outcomes = refresh.refresh_connections(runtime, existing, on_done=_tell)
        except DagsterExecutionInterruptedError:
            # Told to stop (the UI's "Terminate"). Dagster retries an interrupted step under
            # its retry policy, so the run would go on a minute later: stop it for good.
            raise Failure(
                description="stopped: the run was told to stop", allow_retries=False
            ) from None
        except Exception as exc:
            outcomes = {cid: refresh.RefreshOutcome(cid, error=exc) for cid in existing}
            for outcome in outcomes.values():
                _tell(outcome)
        failures: dict[str, BaseException] = {}
        for connection_id in connection_ids:
            if connection_id not in before:
                context.log.warning(f"connection {connection_id} no longer exists; skipped")
                _tell(
                    refresh.RefreshOutcome(
                        connection_id,
                        error=SourceError.of_connection(connection_id, "no longer exists; skipped"),
                    )
                )
                continue
            outcome = outcomes[connection_id]
            if isinstance(outcome.error, refresh.NotRefreshed):
                # requested before a pause or a removal: skipped, not a failed partition
                context.log.info(refresh.safe_error(outcome.error))
                continue
            fetched, loaded = outcome.fetched, outcome.loaded
            if fetched is not None:
                yield AssetMaterialization(
                    fetch_key,
                    partition=connection_id,
                    metadata=fetch_metadata(fetched),
                )
            if loaded is None:  # then outcome.error says why
                failures[connection_id] = outcome.error
                continue
            yield AssetMaterialization(
                metrics_key,
                partition=connection_id,
                metadata=load_metadata(loaded),
            )
        for connection_id, exc in failures.items():
            _record_failure(context, writevue, connection_id, exc)
        # After the materialisations above are stored: each result judges its latest one.
        targets = checks.latest_materializations(context.instance, metrics_key, list(before))
        yield from checks.evaluate(
            runtime,
            source,
            metrics_key,
            before,
            failures,
            report_passes=runtime.settings.check_passes,
            targets=targets,
        )
        if failures and len(connection_ids) > 1:
            context.log.warning(
                f"{len(failures)} of {len(connection_ids)} connections failed; "
                "the others were refreshed"
            )
        if len(connection_ids) == 1 and failures:
            # A run of one connection is that connection's refresh: it fails with it, so
            # its partition shows as failed. A batch run succeeds for the others' sake.
            # The description is the one line the UI shows; what to do is its metadata.
            (connection_id,) = connection_ids
            exc = failures[connection_id]
            raise Failure(
                description=refresh.safe_error(exc),
                metadata=_failure_metadata(runtime, connection_id, exc),
                allow_retries=False,
            )

    return SourceAssets(source=source.name, refresh=refresh_connections)


def _failure_metadata(runtime, connection_id: str, exc: BaseException) -> dict[str, MetadataValue]:
    """Ids, the provider's status and the advice: nothing a tenant could be known by."""
    from .. import registry

    with runtime.db.session() as session:
        try:
            connection = registry.get_connection(session, connection_id)
        except WriteVueError:
            connection = None
    metadata = {
        "connection": MetadataValue.text(connection_id),
        "what_to_do": MetadataValue.text(
            advice(exc, connection_id, connection.auth_kind if connection else None)
        ),
    }
    if connection is not None:
        metadata["tenant"] = MetadataValue.text(connection.tenant_id)
        metadata["status"] = MetadataValue.text(connection.status)
    status = getattr(exc, "status", None)
    if status is not None:
        metadata["http_status"] = MetadataValue.int(status)
    return metadata


def _record_failure(
    context: AssetExecutionContext,
    writevue: WriteVueResource,
    connection_id: str,
    exc: BaseException,
) -> None:
    """Record the failure on its connection and log a line that is safe to keep."""
    refresh.record_failure(writevue.runtime, connection_id, exc)
    context.log.error(refresh.safe_error(exc))
    if not isinstance(exc, WriteVueError):
        # Where it broke, without the exception's text (which could quote a response).
        context.log.error("".join(traceback.format_tb(exc.__traceback__)))


def build_refresh_job(assets: SourceAssets) -> UnresolvedAssetJobDefinition:
    return define_asset_job(
        assets.job_name,
        selection=AssetSelection.assets(*assets.keys),
        tags={"writevue/source": assets.source},
        description=(
            f"Refreshes {assets.source} connections (one partition, or a range of them per "
            "run). Launched by its schedule, its sensors and `writevue refresh`; runs are "
            "tagged writevue/trigger and writevue/tenant (one tenant) or writevue/tenants "
            "(how many)."
        ),
    )


#: source name -> its refresh (the fetch and daily-metrics assets)
SOURCE_ASSETS: dict[str, SourceAssets] = {
    name: build_source_assets(source) for name, source in SOURCES.items()
}
#: source name -> the asset job that refreshes it (named ``refresh_{source}``)
REFRESH_JOBS: dict[str, UnresolvedAssetJobDefinition] = {
    name: build_refresh_job(pair) for name, pair in SOURCE_ASSETS.items()
}

defs = Definitions(
    assets=[pair.refresh for pair in SOURCE_ASSETS.values()], jobs=list(REFRESH_JOBS.values())
)
