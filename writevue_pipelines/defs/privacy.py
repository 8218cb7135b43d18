"""Privacy operations in the Dagster UI: erasure on request, retention, access-log trends.

- ``erasure_requests`` (sensor, every 30 s, on by default) launches one ``erasure`` run per
  deletion request that ``writevue tenant request-erasure`` recorded; the run key is the
  request id, so a request never gets a second run by itself (a failed one is re-executed
  from the UI, and the erasure resumes where it stopped).
- ``erasure`` (job) carries one request out with ``privacy.run_erasure``, deletes the
  erased connections' dynamic partitions from the instance, logs the report (ids and
  counts only) and fails when verification finds anything of the tenant left.
- ``retention`` (job, daily schedule) sweeps staging leftovers and deletes Dagster runs,
  with their event logs, older than ``WRITEVUE_RUN_RETENTION_DAYS``.
- ``access_log_trends`` (asset, daily schedule) rolls the anonymised dashboard access
  logs up into the trend tables, then deletes raw logs past their retention.

Tags and config hold the request id and the tenant id (opaque UUIDs) only: never a
name, an email or data.
"""

# Dagster reads the annotations of asset, op and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import (
    AssetExecutionContext,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    job,
    op,
    sensor,
)
from pydantic import Field

from ..errors import WriteVueError
from ..models import DeletionRequest
from ..privacy import erasure, retention, trends
from .batches import TRIGGER_TAG
from .partitions import partitions_name
from .resources import WriteVueResource

GROUP = "operations"
REQUEST_TAG = "writevue/erasure_request"
TENANT_TAG = "writevue/tenant"
KIND_TAG = "writevue/kind"
#: who the erasure record names when the job is given a tenant id rather than a request
ERASURE_ACTOR = "dagster"
#: runs that are over: only these are ever deleted by retention
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
RETENTION_CRON = "15 3 * * *"
TRENDS_CRON = "30 0 * * *"


# -- erasure --------------------------------------------------------------------------------


class ErasureConfig(Config):
    request_id: str = Field(
        description=(
            "The deletion request to carry out (its id, as `writevue tenant request-erasure` "
            "printed it), or a tenant id to erase at once."
        )
    )


def _request_done(writevue: WriteVueResource, request_id: str) -> DeletionRequest | None:
    with writevue.runtime.db.session() as session:
        request = session.get(DeletionRequest, request_id)
        if request is not None and request.status == "done":
            session.expunge(request)
            return request
    return None


def erasure_metadata(report: erasure.ErasureReport, partitions_deleted: int) -> dict:
    """Ids and counts only: what an operator needs to see that the erasure happened."""
    side = ("staging_files", "access_log_lines")
    rows = {table: n for table, n in sorted(report.removed.items()) if table not in side}
    revocations = report.revocations
    metadata = {
        "request_id": MetadataValue.text(report.request_id),
        "tenant_id": MetadataValue.text(report.tenant_id),
        "rows_removed": MetadataValue.int(sum(rows.values())),
        "rows_removed_per_table": MetadataValue.json(rows),
        "staging_files_removed": MetadataValue.int(report.removed.get("staging_files", 0)),
        "access_log_lines_removed": MetadataValue.int(report.removed.get("access_log_lines", 0)),
        "grants_revoked": MetadataValue.int(revocations.get("revoked", 0)),
        "grants_failed": MetadataValue.int(revocations.get("failed", 0)),
        "grants_without_revocation_endpoint": MetadataValue.int(revocations.get("unsupported", 0)),
        "partitions_deleted": MetadataValue.int(partitions_deleted),
        "verified": MetadataValue.bool(report.ok),
    }
    check = report.verification
    if check is not None:
        metadata |= {
            "tables_scanned": MetadataValue.int(check.tables_scanned),
            "files_scanned": MetadataValue.int(check.files_scanned),
            "raw_database_bytes_scanned": MetadataValue.int(check.raw_bytes_scanned),
        }
    return metadata


@op(
    description=(
        "Erases one client: revokes its OAuth grants, deletes every row, staging file, "
        "credential and link, deletes its connections' Dagster partitions, and verifies "
        "that nothing of it is left (a failed verification fails the run)."
    ),
    out=Out(Nothing),
)
def erase_tenant(
    context: OpExecutionContext, config: ErasureConfig, writevue: WriteVueResource
) -> Iterator[Output]:
    done = _request_done(writevue, config.request_id)
    if done is not None:
        # A rerun of a finished request (or the CLI got there first): nothing left to do.
        context.log.info(
            f"request {done.id} for tenant {done.tenant_id} was already carried out "
            f"on {done.completed_at:%Y-%m-%d %H:%M} UTC; verified: {done.verified}"
        )
        yield Output(
            None,
            metadata={
                "request_id": MetadataValue.text(done.id),
                "tenant_id": MetadataValue.text(done.tenant_id),
                "already_done": MetadataValue.bool(True),
                "verified": MetadataValue.bool(bool(done.verified)),
            },
        )
        return

    instance = context.instance
    deleted: dict[str, int] = {}

    def delete_partitions(source: str, keys: list[str]) -> None:
        name = partitions_name(source)
        for key in keys:
            instance.delete_dynamic_partition(name, key)
        deleted[name] = deleted.get(name, 0) + len(keys)

    try:
        report = erasure.run_erasure(
            writevue.runtime,
            config.request_id,
            actor=ERASURE_ACTOR,
            delete_partitions=delete_partitions,
        )
    except WriteVueError as exc:
        # WriteVue's own sentences name ids only (not found, already erased, failed).
        raise Failure(description=str(exc), allow_retries=False) from None
    for line in report.lines():
        context.log.info(line)
    for name, count in sorted(deleted.items()):
        context.log.info(f"deleted {count} dynamic partitions of {name}")
    metadata = erasure_metadata(report, sum(deleted.values()))
    if not report.ok:
        raise Failure(
            description=(
                f"Erasure of tenant {report.tenant_id} (request {report.request_id}) ran, but "
                "verification found its data left; see the log for where. Investigate, then "
                "re-execute this run."
            ),
            metadata=metadata,
            allow_retries=False,
        )
    yield Output(None, metadata=metadata)


@job(
    name="erasure",
    description=(
        "Carries out one client's erasure request (launched by the `erasure_requests` sensor, "
        "or from the launchpad with a request or tenant id) and proves nothing is left."
    ),
    tags={KIND_TAG: "privacy"},
)
def erasure_job():
    erase_tenant()


def erasure_run_request(request: erasure.PendingRequest) -> RunRequest:
    return RunRequest(
        run_key=request.id,
        run_config={"ops": {"erase_tenant": {"config": {"request_id": request.id}}}},
        tags={REQUEST_TAG: request.id, TENANT_TAG: request.tenant_id, TRIGGER_TAG: "request"},
    )


@sensor(
    name="erasure_requests",
    description=(
        "Launches one `erasure` run per deletion request (`writevue tenant request-erasure`), "
        "oldest first; the run key is the request id. A request whose run failed is not "
        "launched again: re-execute that run once the cause is fixed."
    ),
    job=erasure_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
)
def erasure_requests(
    context: SensorEvaluationContext, writevue: WriteVueResource
) -> SensorResult | SkipReason:
    pending = erasure.pending_requests(writevue.runtime)
    if not pending:
        return SkipReason("no erasure requests")
    requests, waiting = [], 0
    for request in pending:
        runs = context.instance.get_run_records(RunsFilter(tags={REQUEST_TAG: request.id}), limit=1)
        if runs:
            waiting += 1
            status = runs[0].dagster_run.status
            if status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                context.log.warning(
                    f"erasure request {request.id} is still open and its run "
                    f"{runs[0].dagster_run.run_id} ended {status.value}: re-execute it"
                )
            continue
        requests.append(erasure_run_request(request))
    if not requests:
        return SkipReason(f"{waiting} open erasure requests, each already has a run")
    return SensorResult(run_requests=requests)


# -- retention ------------------------------------------------------------------------------


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


# -- access-log trends ----------------------------------------------------------------------


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

retention_schedule = ScheduleDefinition(
    name="retention",
    cron_schedule=RETENTION_CRON,
    execution_timezone="UTC",
    job=retention_job,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Daily at 03:15 UTC: the staging sweep and Dagster run retention.",
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
    jobs=[erasure_job, retention_job, access_log_trends_job],
    schedules=[retention_schedule, access_log_trends_schedule],
    sensors=[erasure_requests],
)
