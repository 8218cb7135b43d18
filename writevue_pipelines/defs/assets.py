"""The asset pair every source gets: fetch a connection into staging, then aggregate it.

Nothing passes through an IO manager: staging files under ``WRITEVUE_HOME/staging``
are the handoff, and the assets report only counts, timings and days as metadata —
never names, emails, credentials or URLs.
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import asyncio
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from .. import refresh
from ..errors import WriteVueError
from ..sources import SOURCES, Source
from .partitions import CONNECTION_PARTITIONS
from .resources import WriteVueResource


@dataclass(frozen=True)
class SourceAssets:
    fetch: AssetsDefinition
    daily_metrics: AssetsDefinition

    @property
    def both(self) -> list[AssetsDefinition]:
        return [self.fetch, self.daily_metrics]


def _fail_connections(
    context: AssetExecutionContext,
    writevue: WriteVueResource,
    errors: Mapping[str, BaseException],
) -> Failure:
    """Record each failure on its connection, log a safe line, and build the step failure."""
    for connection_id, exc in errors.items():
        refresh.record_failure(writevue.runtime, connection_id, exc)
        context.log.error(refresh.safe_error(exc))
        if not isinstance(exc, WriteVueError):
            # Where it broke, without the exception's text (which could quote a response).
            context.log.error("".join(traceback.format_tb(exc.__traceback__)))
    messages = [refresh.safe_error(exc) for exc in errors.values()]
    description = (
        messages[0]
        if len(messages) == 1
        else f"{len(messages)} connections failed: " + "; ".join(messages)
    )
    return Failure(description=description, allow_retries=False)


def build_source_assets(source: Source) -> SourceAssets:
    partitions = CONNECTION_PARTITIONS[source.name]
    tags = {"source": source.name}

    @asset(
        name=f"{source.name}_fetch",
        group_name=source.name,
        partitions_def=partitions,
        description=(
            f"{source.title}: read each connection incrementally from its cursor into "
            "transient staging. The records never leave WRITEVUE_HOME/staging."
        ),
        kinds={source.name},
        tags=tags,
        pool=f"{source.name}_api",
    )
    def fetch(context: AssetExecutionContext, writevue: WriteVueResource) -> MaterializeResult:
        connection_ids = list(context.partition_keys)
        # One call for every connection in the run: the fetch is async-batched.
        try:
            results = asyncio.run(refresh.fetch_connections(writevue.runtime, connection_ids))
        except Exception as exc:
            results = dict.fromkeys(connection_ids, exc)
        errors = {cid: r for cid, r in results.items() if isinstance(r, BaseException)}
        if errors:
            raise _fail_connections(context, writevue, errors)
        for connection_id in connection_ids:
            summary = results[connection_id]
            context.add_asset_metadata(
                {
                    "records": MetadataValue.int(summary.records),
                    "requests": MetadataValue.int(summary.requests),
                    "source_latency_s": MetadataValue.float(summary.latency_s),
                    "window_start": MetadataValue.text(summary.window_start),
                },
                partition_key=connection_id,
            )
        return MaterializeResult()

    @asset(
        name=f"{source.name}_daily_metrics",
        group_name=source.name,
        partitions_def=partitions,
        deps=[fetch],
        description=(
            f"{source.title}: aggregate the staged records with polars into daily facts "
            f"({', '.join(source.metrics)}), upsert them into the warehouse and advance "
            "the cursor in the same commit, then delete the staged records."
        ),
        kinds={"polars"},
        tags=tags,
    )
    def daily_metrics(
        context: AssetExecutionContext, writevue: WriteVueResource
    ) -> MaterializeResult:
        errors: dict[str, BaseException] = {}
        for connection_id in context.partition_keys:
            try:
                summary = refresh.load_connection(writevue.runtime, connection_id)
            except Exception as exc:
                errors[connection_id] = exc
                continue
            context.add_asset_metadata(
                {
                    "facts": MetadataValue.int(summary.facts),
                    "rows_written": MetadataValue.int(summary.written),
                    "rows_removed": MetadataValue.int(summary.removed),
                    "days_touched": MetadataValue.int(summary.days),
                    "first_day": MetadataValue.text(summary.first_day or ""),
                    "last_day": MetadataValue.text(summary.last_day or ""),
                },
                partition_key=connection_id,
            )
        if errors:
            raise _fail_connections(context, writevue, errors)
        return MaterializeResult()

    return SourceAssets(fetch=fetch, daily_metrics=daily_metrics)


#: source name -> its asset pair
SOURCE_ASSETS: dict[str, SourceAssets] = {
    name: build_source_assets(source) for name, source in SOURCES.items()
}

defs = Definitions(assets=[a for pair in SOURCE_ASSETS.values() for a in pair.both])
