"""The asset pair every source gets: fetch connections into staging, then aggregate them.

Both assets are computed by one step, so a batch run costs one process: the step
fetches every connection of its run at once (async), aggregates each fetched one, and
records a materialisation per connection partition for each asset it completed. A
connection that fails is recorded as failing (registry and the ``refreshed`` check)
and never stops the others; only a run of that one connection fails.

Nothing passes through an IO manager: staging files under ``WRITEVUE_HOME/staging``
are the handoff, and the assets report only counts, timings and days as metadata —
never names, emails, credentials or URLs.
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    Definitions,
    Failure,
    Jitter,
    MetadataValue,
    RetryPolicy,
    multi_asset,
)

from .. import refresh
from ..errors import WriteVueError
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
    def fetch_key(self) -> AssetKey:
        return AssetKey(f"{self.source}_fetch")

    @property
    def daily_metrics_key(self) -> AssetKey:
        return AssetKey(f"{self.source}_daily_metrics")

    @property
    def keys(self) -> list[AssetKey]:
        return [self.fetch_key, self.daily_metrics_key]


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
                    "transient staging. The records never leave WRITEVUE_HOME/staging."
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
                    "the warehouse and advance the cursor in the same commit, then delete "
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
            outcomes = refresh.refresh_connections(runtime, existing)
        except Exception as exc:
            outcomes = {cid: refresh.RefreshOutcome(cid, error=exc) for cid in existing}
        failures: dict[str, BaseException] = {}
        for connection_id in connection_ids:
            if connection_id not in before:
                context.log.warning(f"connection {connection_id} no longer exists; skipped")
                continue
            outcome = outcomes[connection_id]
            fetched, loaded = outcome.fetched, outcome.loaded
            if fetched is not None:
                yield AssetMaterialization(
                    fetch_key,
                    partition=connection_id,
                    metadata={
                        "records": MetadataValue.int(fetched.records),
                        "requests": MetadataValue.int(fetched.requests),
                        "source_latency_s": MetadataValue.float(fetched.latency_s),
                        "window_start": MetadataValue.text(fetched.window_start),
                    },
                )
            if loaded is None:  # then outcome.error says why
                failures[connection_id] = outcome.error
                continue
            yield AssetMaterialization(
                metrics_key,
                partition=connection_id,
                metadata={
                    "facts": MetadataValue.int(loaded.facts),
                    "rows_written": MetadataValue.int(loaded.written),
                    "rows_removed": MetadataValue.int(loaded.removed),
                    "days_touched": MetadataValue.int(loaded.days),
                    "first_day": MetadataValue.text(loaded.first_day or ""),
                    "last_day": MetadataValue.text(loaded.last_day or ""),
                },
            )
        for connection_id, exc in failures.items():
            _record_failure(context, writevue, connection_id, exc)
        yield from checks.evaluate(runtime, source, metrics_key, before, failures)
        if failures:
            context.log.warning(
                f"{len(failures)} of {len(connection_ids)} connections failed; "
                "the others were refreshed"
            )
        if len(connection_ids) == 1 and failures:
            # A run of one connection is that connection's refresh: it fails with it, so
            # its partition shows as failed. A batch run succeeds for the others' sake.
            raise Failure(
                description=refresh.safe_error(failures[connection_ids[0]]), allow_retries=False
            )

    return SourceAssets(source=source.name, refresh=refresh_connections)


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


#: source name -> its refresh (the fetch and daily-metrics assets)
SOURCE_ASSETS: dict[str, SourceAssets] = {
    name: build_source_assets(source) for name, source in SOURCES.items()
}

defs = Definitions(assets=[pair.refresh for pair in SOURCE_ASSETS.values()])
