"""A schedule per source: refresh every connection on the source's cadence, in batches.

The cadence is ``WRITEVUE_REFRESH_CRON_<SOURCE>`` or ``WRITEVUE_REFRESH_CRON`` (default
``0 6 * * *``, UTC), read when the code location loads. A tick turns N connections into
ceil(N / WRITEVUE_REFRESH_BATCH) partition-range runs.
"""

# Dagster reads the annotations of asset and sensor functions at runtime, so no
# `from __future__ import annotations` here.
from dagster import (
    DefaultScheduleStatus,
    Definitions,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from .. import registry
from ..settings import get_settings
from .assets import REFRESH_JOBS, SOURCE_ASSETS, SourceAssets
from .batches import batch_run_requests
from .partitions import CONNECTION_PARTITIONS
from .resources import WriteVueResource


def build_refresh_schedule(source: str, assets: SourceAssets) -> ScheduleDefinition:
    settings = get_settings()
    partitions = CONNECTION_PARTITIONS[source]

    @schedule(
        name=f"{source}_refresh",
        cron_schedule=settings.cron_for(source),
        execution_timezone="UTC",
        job=REFRESH_JOBS[source],
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"Refreshes every {source} connection in batches of WRITEVUE_REFRESH_BATCH "
            f"(default 50) per run; cadence from WRITEVUE_REFRESH_CRON_{source.upper()} or "
            "WRITEVUE_REFRESH_CRON (default 06:00 UTC daily)."
        ),
    )
    def refresh_schedule(context: ScheduleEvaluationContext, writevue: WriteVueResource):
        connection_ids = context.instance.get_dynamic_partitions(partitions.name)
        if not connection_ids:
            return SkipReason(f"no {source} connections yet")
        tick = context.scheduled_execution_time
        # Tenant ids for the runs' tags: one query for the whole source.
        with writevue.runtime.db.session() as session:
            tenant_of = {
                c.id: c.tenant_id for c in registry.list_connections(session, source=source)
            }
        return batch_run_requests(
            assets,
            connection_ids,
            batch=get_settings().refresh_batch,
            trigger="schedule",
            run_key_prefix=tick.isoformat() if tick else None,
            tenant_of=tenant_of,
        )

    return refresh_schedule


REFRESH_SCHEDULES = {
    source: build_refresh_schedule(source, assets) for source, assets in SOURCE_ASSETS.items()
}

defs = Definitions(schedules=list(REFRESH_SCHEDULES.values()))
