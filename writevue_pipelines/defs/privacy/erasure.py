"""Erasure on request: a sensor that launches one ``erasure`` run per recorded deletion request.

- ``erasure_requests`` (sensor, every 30 s, on by default) launches one ``erasure`` run per
  deletion request that ``writevue tenant request-erasure`` recorded; the run key is the
  request id, so a request never gets a second run by itself (a failed one is re-executed
  from the UI, and the erasure resumes where it stopped).
- ``erasure`` (job) carries one request out with ``privacy.run_erasure``, deletes the
  erased connections' dynamic partitions from the instance, logs the report (ids and
  counts only) and fails when verification finds anything of the tenant left (or could
  not check something); its second step retries grant revocations that failed, and fails
  while any still does. The run's ``writevue/erasure_outcome`` tag gives the outcome.
"""

# Dagster reads the annotations of op and sensor functions at runtime, so no
# `from __future__ import annotations` here.
from collections.abc import Iterator
from pathlib import Path

from dagster import (
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    sensor,
)
from pydantic import Field

from ...errors import WriteVueError
from ...models import DeletionRequest
from ...privacy import erasure
from ...privacy.verification import DagsterStorage
from ..batches import TRIGGER_TAG
from ..partitions import partitions_name
from ..resources import WriteVueResource, tick_runtime
from .constants import KIND_TAG

REQUEST_TAG = "writevue/erasure_request"
TENANT_TAG = "writevue/tenant"
#: erased_and_verified, needs_operator_action or not_verified: the run list shows it
OUTCOME_TAG = "writevue/erasure_outcome"
#: who the erasure record names when the job is given a tenant id rather than a request
ERASURE_ACTOR = "dagster"


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
    """Ids, counts and sources only: what an operator needs to see that the erasure
    happened, and what is left for them to do."""
    side = ("staging_files", "access_log_lines")
    rows = {table: n for table, n in sorted(report.removed.items()) if table not in side}
    revocations = report.revocations
    metadata = {
        "request_id": MetadataValue.text(report.request_id),
        "tenant_id": MetadataValue.text(report.tenant_id),
        "outcome": MetadataValue.text(report.outcome),
        "rows_removed": MetadataValue.int(sum(rows.values())),
        "rows_removed_per_table": MetadataValue.json(rows),
        "staging_files_removed": MetadataValue.int(report.removed.get("staging_files", 0)),
        "access_log_lines_removed": MetadataValue.int(report.removed.get("access_log_lines", 0)),
        "grants_revoked": MetadataValue.int(revocations.get("revoked", 0)),
        "grants_failed": MetadataValue.int(revocations.get("failed", 0)),
        "grants_without_revocation_endpoint": MetadataValue.int(revocations.get("unsupported", 0)),
        "needs_operator_action": MetadataValue.md(
            "\n".join(f"- {erasure.action_line(a)}" for a in report.actions) or "nothing"
        ),
        "partitions_deleted": MetadataValue.int(partitions_deleted),
        "verified": MetadataValue.bool(report.ok),
    }
    check = report.verification
    if check is not None:
        metadata |= {
            "tables_scanned": MetadataValue.int(check.tables_scanned),
            "files_scanned": MetadataValue.int(check.files_scanned),
            "raw_database_bytes_scanned": MetadataValue.int(check.raw_bytes_scanned),
            "dagster_storage_tables_scanned": MetadataValue.int(check.dagster_tables_scanned),
            "not_checked": MetadataValue.json(list(check.unchecked)),
        }
    return metadata


def instance_storage(instance) -> DagsterStorage:
    """Where this Dagster instance keeps its run history, for the erasure's proof: its
    PostgreSQL database if it has one, and its root folder (SQLite files, run logs)."""
    url = getattr(instance.run_storage, "postgres_url", None) or getattr(
        instance.event_log_storage, "postgres_url", None
    )
    folder = Path(instance.root_directory) if instance.root_directory else None
    if url is None and folder is None:
        return DagsterStorage(unknown=f"a {type(instance.run_storage).__name__} it cannot read")
    return DagsterStorage(folder=folder, url=url)


def _tag_outcome(context: OpExecutionContext, outcome: str) -> None:
    context.instance.add_run_tags(context.run_id, {OUTCOME_TAG: outcome})


@op(
    description=(
        "Erases one client: revokes its OAuth grants, deletes every row, staging file, "
        "credential and link, deletes its connections' Dagster partitions, and verifies "
        "that nothing of it is left (a failed verification fails the run; re-executing it "
        "finishes the erasure)."
    ),
    out=Out(str, description="the erasure request id"),
)
def erase_tenant(
    context: OpExecutionContext, config: ErasureConfig, writevue: WriteVueResource
) -> Iterator[Output]:
    done = _request_done(writevue, config.request_id)
    if done is not None:
        # A rerun of a finished request (or the CLI got there first): nothing left to do.
        context.log.info(
            f"request {done.id} for tenant {done.tenant_id} was already carried out "
            f"on {done.completed_at:%Y-%m-%d %H:%M} UTC and verified"
        )
        yield Output(
            done.id,
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
        known = set(instance.get_dynamic_partitions(name))
        for key in keys:
            if key in known:
                instance.delete_dynamic_partition(name, key)
                deleted[name] = deleted.get(name, 0) + 1

    try:
        report = erasure.run_erasure(
            writevue.runtime,
            config.request_id,
            actor=ERASURE_ACTOR,
            delete_partitions=delete_partitions,
            dagster=instance_storage(instance),
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
        _tag_outcome(context, "not_verified")
        raise Failure(
            description=(
                f"Erasure of tenant {report.tenant_id} (request {report.request_id}) ran, but "
                "verification found its data left or could not check everything; see the "
                "log for where. Fix the cause, then re-execute this run: it finishes the "
                "erasure and verifies again."
            ),
            metadata=metadata,
            allow_retries=False,
        )
    _tag_outcome(context, "needs_operator_action" if report.needs_action else "erased_and_verified")
    for action in report.actions:
        context.log.warning(f"needs operator action: {erasure.action_line(action)}")
    yield Output(report.request_id, metadata=metadata)


@op(
    description=(
        "Retries the grant revocations the erasure could not make (from tokens kept, "
        "encrypted, for that alone). Fails while any still fails: re-execute from failure "
        "to retry, or run `writevue tenant revoke-grants REQUEST --confirm-revoked` once the "
        "client has revoked the access at the provider."
    ),
    out=Out(Nothing),
)
def revoke_remaining_grants(
    context: OpExecutionContext, request_id: str, writevue: WriteVueResource
) -> Iterator[Output]:
    result = erasure.retry_revocations(writevue.runtime, request_id)
    for line in result.lines():
        context.log.info(line)
    metadata = {
        "request_id": MetadataValue.text(request_id),
        "grants_revoked_now": MetadataValue.int(len(result.revoked)),
        "grants_still_failing": MetadataValue.int(len(result.failed)),
    }
    if result.failed:
        _tag_outcome(context, "needs_operator_action")
        sources = ", ".join(f"{source} ({reason})" for source, reason in result.failed)
        raise Failure(
            description=(
                f"The tenant is erased and verified, but revoking {len(result.failed)} "
                f"grant(s) failed: {sources}. Re-execute this run from failure to retry, or "
                f"run `writevue tenant revoke-grants {request_id}`; if the client revoked "
                "the access at the provider, add `--confirm-revoked`."
            ),
            metadata=metadata,
            allow_retries=False,
        )
    yield Output(None, metadata=metadata)


@job(
    name="erasure",
    description=(
        "Carries out one client's erasure request (launched by the `erasure_requests` sensor, "
        "or from the launchpad with a request or tenant id), proves nothing is left, then "
        "retries any grant revocation that failed. The run's `writevue/erasure_outcome` tag "
        "says erased_and_verified, needs_operator_action or not_verified."
    ),
    tags={KIND_TAG: "privacy"},
)
def erasure_job():
    revoke_remaining_grants(erase_tenant())


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
def erasure_requests(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    with tick_runtime() as runtime:  # no resource: see resources.tick_runtime
        pending = erasure.pending_requests(runtime)
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


defs = Definitions(jobs=[erasure_job], sensors=[erasure_requests])
