"""Alerts and scorecards in Dagster: the ``notifications`` sensor and job.

The sensor looks every minute for work: tenants whose daily metrics were materialised
since its cursor (their alerts and anomalies are judged), scorecards whose send time
has come, and deliveries whose retry time has come. Refreshed tenants wait while any
refresh run is queued or running, so a tenant is judged on its finished refresh, not
half of it (at most ``MAX_WAIT_S``: a refresh that never ends does not silence every
alert); scorecards and retries do not wait (a run holds a scorecard until its period's
data is refreshed, ``runner.HOLD_MAX`` at most). Then it
requests one ``notifications`` run per ``WRITEVUE_NOTIFY_BATCH`` tenants: evaluation
and delivery for many tenants in one run, as refreshes are batched.

Run config and tags hold opaque ids only (tenant and scorecard UUIDs), never a
recipient, a figure or a name. Each delivery's outcome is recorded in the warehouse
(``writevue notifications list``) and summarised per tenant in the run's metadata.
"""

# Dagster reads the annotations of op and sensor functions at runtime, so no
# `from __future__ import annotations` here.
import datetime as dt
import hashlib
import json
import time

from dagster import (
    AssetRecordsFilter,
    Backoff,
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    sensor,
)

from .assets import SOURCE_ASSETS
from .batches import SOURCE_TAG, TRIGGER_TAG, chunks
from .resources import WriteVueResource

JOB_NAME = "notifications"
#: runs not over yet: while one of these refreshes, tenants are not judged
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
#: the longest the sensor waits for refreshes to finish before judging anyway
MAX_WAIT_S = 30 * 60
#: materialisation records read per source and tick
PAGE = 1000
#: how many tenants' figures one run's metadata lists
METADATA_TENANTS = 100


class NotifyConfig(Config):
    tenants: list[str] = []
    #: [scorecard id, the time it was due (ISO 8601, UTC)]
    scorecards: list[list[str]] = []


def _due(pairs: list[list[str]]) -> list[tuple[str, dt.datetime]]:
    return [(card, dt.datetime.fromisoformat(when)) for card, when in pairs]


@op(
    name="notify",
    description=(
        "Judges the tenants' alert rules and unusual days on their fresh aggregates, renders "
        "the due scorecards, queues one message per recipient (idempotently: a retried run "
        "sends nothing twice) and sends what is due by email and webhook."
    ),
    retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL),
)
def notify(context: OpExecutionContext, config: NotifyConfig, writevue: WriteVueResource):
    # Imported here, not when the code location loads: every run's process loads the code
    # location, and a refresh run never needs the notification modules. (A run forked from
    # ``writevue code-server``'s forkserver finds them imported: ``run_preload``.)
    from ..notifications import runner

    report = runner.run(
        writevue.runtime,
        tenant_ids=config.tenants,
        scorecards=_due(config.scorecards),
        run_id=context.run_id,
    )
    for line in report.lines():
        context.log.info(line)
    sent = report.delivery
    metadata = {
        "tenants_judged": MetadataValue.int(report.tenants),
        "unusual_days": MetadataValue.int(report.anomalies),
        "alerts_fired": MetadataValue.int(report.alerts_fired),
        "scorecards_rendered": MetadataValue.int(report.scorecards),
        "scorecards_held": MetadataValue.int(report.held),
        "messages_queued": MetadataValue.int(report.queued),
        "eval_s": MetadataValue.float(round(report.eval_s, 3)),
        "send_s": MetadataValue.float(round(report.send_s, 3)),
        "not_judged": MetadataValue.int(len(report.errors)),
    }
    if sent is not None:
        for status, count in sorted(sent.counts.items()):
            metadata[f"deliveries_{status}"] = MetadataValue.int(count)
        per_tenant = dict(sorted(sent.by_tenant.items())[:METADATA_TENANTS])
        metadata["deliveries_by_tenant"] = MetadataValue.json(per_tenant)
    context.add_output_metadata(metadata)
    if report.errors and not report.tenants and not report.scorecards:
        # nothing could be judged at all: fail the run so that it is retried and seen
        # (not retried at once: the sensor asks again for what is still due)
        raise Failure(
            description=f"{len(report.errors)} tenants or scorecards could not be judged",
            allow_retries=False,
        )


@job(
    name=JOB_NAME,
    description=(
        "Alerts and scorecards for a batch of tenants: judge, render, queue and send, each "
        "delivery's outcome recorded (see `writevue notifications list`)."
    ),
    tags={TRIGGER_TAG: "notifications"},
)
def notifications_job():
    notify()


def _refreshes_in_flight(context: SensorEvaluationContext) -> int:
    return sum(
        context.instance.get_runs_count(RunsFilter(statuses=IN_PROGRESS, tags={SOURCE_TAG: source}))
        for source in SOURCE_ASSETS
    )


def _refreshed_connections(
    context: SensorEvaluationContext, after: dict[str, int]
) -> tuple[set[str], dict[str, int]]:
    """Connections whose daily metrics were materialised since ``after`` (per source)."""
    connections: set[str] = set()
    latest = dict(after)
    for source, assets in SOURCE_ASSETS.items():
        since = after.get(source, 0)
        for _ in range(20):  # at most 20 pages a tick; the rest next tick
            result = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=assets.daily_metrics_key, after_storage_id=since),
                limit=PAGE,
                ascending=True,
            )
            for record in result.records:
                since = max(since, record.storage_id)
                if record.partition_key:
                    connections.add(record.partition_key)
            if not result.has_more:
                break
        latest[source] = since
    return connections, latest


def _request(
    tenants: list[str], scorecards: list[list[str]], trigger: str, basis: object
) -> RunRequest:
    """A run for these tenants and scorecards. Its key repeats while the same work is
    waiting (a tick before the last run has moved anything on asks for nothing new),
    and changes once anything has: the refreshes seen (``basis`` has the cursor),
    deliveries' attempts, scorecards' due times."""
    run_config = {"ops": {"notify": {"config": {"tenants": tenants, "scorecards": scorecards}}}}
    basis = json.dumps([run_config, basis], sort_keys=True, default=str)
    key = hashlib.sha256(basis.encode()).hexdigest()[:40]
    return RunRequest(run_key=key, run_config=run_config, tags={TRIGGER_TAG: trigger})


@sensor(
    name="notifications",
    job=notifications_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "After refreshes finish: judges the refreshed tenants' alerts and unusual days; sends "
        "scorecards when due (in each tenant's time zone) and retries failed deliveries. "
        "Batches of WRITEVUE_NOTIFY_BATCH tenants per run."
    ),
)
def notifications_sensor(
    context: SensorEvaluationContext, writevue: WriteVueResource
) -> SensorResult | SkipReason:
    from ..notifications import config, runner

    runtime = writevue.runtime
    state = json.loads(context.cursor) if context.cursor else {}
    after = state.get("after", {})
    now = dt.datetime.now(dt.UTC)
    connections, latest = _refreshed_connections(context, after)
    with runtime.db.session() as session:
        tenants = runner.tenants_of(session, sorted(connections))
        due = config.due_scorecards(session, now)
        retries = runner.due_deliveries(session, now)
    # Judge finished refreshes, not half of one: while refreshes run, the refreshed tenants
    # wait (the cursor stays where it was); due scorecards (held by the run until their
    # tenant's data is in) and retries do not.
    in_flight = _refreshes_in_flight(context) if tenants else 0
    waiting_since = state.get("waiting_since") or time.time()
    if in_flight and time.time() - waiting_since < MAX_WAIT_S:
        tenants = []
        cursor = {"after": after, "waiting_since": waiting_since}
        idle = f"waiting for {in_flight} refresh runs to finish"
    else:
        cursor = {"after": latest}
        idle = "nothing refreshed, no scorecard due, no delivery to retry"
    if not tenants and not due and not retries:
        return SensorResult(skip_reason=idle, cursor=json.dumps(cursor, sort_keys=True))
    batch = runtime.settings.notify_batch
    scorecards = [[card, when.isoformat()] for card, _tenant, when in due]
    requests = []
    tenant_chunks = chunks(sorted(tenants), batch) or [[]]
    card_chunks = chunks(scorecards, batch)
    for index in range(max(len(tenant_chunks), len(card_chunks))):
        part_tenants = list(tenant_chunks[index]) if index < len(tenant_chunks) else []
        part_cards = list(card_chunks[index]) if index < len(card_chunks) else []
        trigger = "after_refresh" if part_tenants else "scorecards_due" if part_cards else "retry"
        # a scorecard held for its data is asked for again, at most every 10 minutes
        bucket = int(time.time() // 600) if part_cards else None
        basis = [cursor, bucket, retries] if index == 0 else [cursor, bucket]
        requests.append(_request(part_tenants, part_cards, trigger, basis))
    return SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


defs = Definitions(jobs=[notifications_job], sensors=[notifications_sensor])
