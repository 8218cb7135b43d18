"""Retention: a daily job that sweeps staging leftovers and deletes old Dagster runs.

``retention`` (job, daily schedule) sweeps staging leftovers and deletes Dagster runs,
with their event logs, older than ``WRITEVUE_RUN_RETENTION_DAYS``.
"""

# Dagster reads the annotations of op functions at runtime, so no
# `from __future__ import annotations` here.
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import (
    Config,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    Definitions,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RunsFilter,
    ScheduleDefinition,
    job,
    op,
)
from pydantic import Field

from ...privacy import retention
from ..resources import WriteVueResource
from .constants import KIND_TAG

#: runs that are over: only these are ever deleted by retention
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
RETENTION_CRON = "15 3 * * *"


@dataclass(frozen=True)
class RunRetentionReport:
    cutoff: dt.datetime
    deleted: int
    #: runs older than the cutoff that are not over yet (queued, started, …): kept
    unfinished_kept: int


def delete_runs_before(
    instance: DagsterInstance,
    cutoff: dt.datetime,
    *,
    keep: frozenset[str] = frozenset(),
    page: int = 200,
) -> RunRetentionReport:
    """Delete every finished run created before ``cutoff`` and its event log, except ``keep``."""
    deleted = 0
    finished = RunsFilter(created_before=cutoff, statuses=FINISHED)
    while True:
        records = instance.get_run_records(finished, limit=page)
        doomed = [r.dagster_run.run_id for r in records if r.dagster_run.run_id not in keep]
        for run_id in doomed:
            instance.delete_run(run_id)
        deleted += len(doomed)
        if len(records) < page or not doomed:
            break
    unfinished = [
        r
        for r in instance.get_run_records(RunsFilter(created_before=cutoff))
        if r.dagster_run.status not in FINISHED and r.dagster_run.run_id not in keep
    ]
    return RunRetentionReport(cutoff, deleted, len(unfinished))


class RunRetentionConfig(Config):
    older_than_days: int | None = Field(
        default=None,
        ge=0,
        description="Delete finished runs created more than this many days ago "
        "(default: WRITEVUE_RUN_RETENTION_DAYS, 30).",
    )


@op(
    description=(
        "Deletes finished Dagster runs, with their event logs, created more than "
        "WRITEVUE_RUN_RETENTION_DAYS (30) days ago; never a run still going, never this one."
    ),
    out=Out(Nothing),
)
def delete_old_runs(
    context: OpExecutionContext, config: RunRetentionConfig, writevue: WriteVueResource
) -> Iterator[Output]:
    days = config.older_than_days
    if days is None:
        days = writevue.runtime.settings.run_retention_days
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    report = delete_runs_before(context.instance, cutoff, keep=frozenset({context.run.run_id}))
    context.log.info(
        f"deleted {report.deleted} runs created before {cutoff:%Y-%m-%d %H:%M} UTC "
        f"({days} days); kept {report.unfinished_kept} older runs that are not over"
    )
    yield Output(
        None,
        metadata={
            "runs_deleted": MetadataValue.int(report.deleted),
            "older_runs_not_over_kept": MetadataValue.int(report.unfinished_kept),
            "retention_days": MetadataValue.int(days),
            "cutoff": MetadataValue.text(cutoff.isoformat(timespec="seconds")),
        },
    )


@op(
    description=(
        "Removes staged raw records left behind by failed or killed refreshes once older than "
        "WRITEVUE_STAGING_MAX_AGE_HOURS (24), and at once those of erased connections."
    ),
    out=Out(Nothing),
)
def sweep_staging(context: OpExecutionContext, writevue: WriteVueResource) -> Iterator[Output]:
    report = retention.sweep_staging(writevue.runtime)
    context.log.info(
        f"staging sweep: removed {report.removed_entries} entries ({report.removed_files} "
        f"files, {report.removed_bytes} bytes); kept {report.kept_entries}"
    )
    yield Output(
        None,
        metadata={
            "entries_removed": MetadataValue.int(report.removed_entries),
            "files_removed": MetadataValue.int(report.removed_files),
            "bytes_removed": MetadataValue.int(report.removed_bytes),
            "entries_kept": MetadataValue.int(report.kept_entries),
        },
    )


@job(
    name="retention",
    description=(
        "Daily retention: sweeps leftover staged raw records and deletes Dagster runs "
        "(and their event logs) older than WRITEVUE_RUN_RETENTION_DAYS."
    ),
    tags={KIND_TAG: "privacy"},
)
def retention_job():
    sweep_staging()
    delete_old_runs()


retention_schedule = ScheduleDefinition(
    name="retention",
    cron_schedule=RETENTION_CRON,
    execution_timezone="UTC",
    job=retention_job,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Daily at 03:15 UTC: the staging sweep and Dagster run retention.",
)

defs = Definitions(jobs=[retention_job], schedules=[retention_schedule])
