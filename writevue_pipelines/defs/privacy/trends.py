"""Access-log trends: a daily asset that rolls the anonymised access logs up into trend tables.

``access_log_trends`` (asset, daily schedule) rolls the anonymised dashboard access logs
up into the trend tables, then deletes raw logs past their retention.
"""

# Dagster reads the annotations of asset functions at runtime, so no
# `from __future__ import annotations` here.
from dagster import (
    AssetExecutionContext,
    DefaultScheduleStatus,
    Definitions,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
)

from ...privacy import trends
from ..resources import WriteVueResource
from .constants import KIND_TAG

GROUP = "operations"
TRENDS_CRON = "30 0 * * *"


@asset(
    name="access_log_trends",
    group_name=GROUP,
    description=(
        "Daily trend tables (trend_views, trend_interactions) rolled up from the anonymised "
        "dashboard access logs: every day whose log is new or changed since its last roll-up "
        "(today's so far included). Then raw logs older than "
        "WRITEVUE_ACCESS_LOG_RETENTION_DAYS (30) are deleted. Counts over all clients; no "
        "IP, link, tenant or person."
    ),
    kinds={"sql"},
)
def access_log_trends(
    context: AssetExecutionContext, writevue: WriteVueResource
) -> MaterializeResult:
    runtime = writevue.runtime
    reports = [trends.roll_up(runtime, day) for day in trends.pending_days(runtime)]
    for report in reports:
        for line in report.lines():
            context.log.info(line)
    expired = trends.expire_access_logs(runtime)
    context.log.info(
        f"access-log retention: removed {expired.removed_files} files "
        f"({expired.removed_bytes} bytes), kept {expired.kept_files}"
    )
    views = sum(r.views for r in reports)
    table = "\n".join(
        ["| day | views | interactions | exports |", "| --- | --- | --- | --- |"]
        + [f"| {r.day} | {r.views} | {r.interactions} | {r.exports} |" for r in reports]
    )
    return MaterializeResult(
        metadata={
            "days_rolled_up": MetadataValue.int(len(reports)),
            "first_day": MetadataValue.text(str(reports[0].day) if reports else ""),
            "last_day": MetadataValue.text(str(reports[-1].day) if reports else ""),
            "views": MetadataValue.int(views),
            "interactions": MetadataValue.int(sum(r.interactions for r in reports)),
            "exports": MetadataValue.int(sum(r.exports for r in reports)),
            "per_day": MetadataValue.md(table),
            "log_files_expired": MetadataValue.int(expired.removed_files),
            "log_bytes_expired": MetadataValue.int(expired.removed_bytes),
            "log_files_kept": MetadataValue.int(expired.kept_files),
        }
    )


access_log_trends_job = define_asset_job(
    "access_log_trends_job",
    selection=[access_log_trends],
    description="Rolls up the dashboard access logs into the trend tables.",
    tags={KIND_TAG: "privacy"},
)

access_log_trends_schedule = ScheduleDefinition(
    name="access_log_trends",
    cron_schedule=TRENDS_CRON,
    execution_timezone="UTC",
    job=access_log_trends_job,
    default_status=DefaultScheduleStatus.RUNNING,
    description=(
        "Daily at 00:30 UTC, once the previous UTC day's log is complete: roll up the access "
        "logs, then expire old raw logs."
    ),
)

defs = Definitions(
    assets=[access_log_trends],
    jobs=[access_log_trends_job],
    schedules=[access_log_trends_schedule],
)
