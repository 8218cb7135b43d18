"""The privacy operations in Dagster: erasure on request, run retention, access-log trends."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)
from sqlalchemy import select, text
from support import (
    SandboxOAuthSource,
    add_stripe_connection,
    add_tenant,
    deploy_dagster_home,
    new_stripe_key,
    planted,
    register_oauth_source,
    remember_secret,
)

from writevue_pipelines import registry
from writevue_pipelines.defs import defs
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.defs.privacy.erasure import (
    OUTCOME_TAG,
    REQUEST_TAG,
    TENANT_TAG,
    erasure_requests,
)
from writevue_pipelines.defs.privacy.retention import delete_runs_before
from writevue_pipelines.defs.privacy.trends import access_log_trends
from writevue_pipelines.defs.resources import WriteVueResource
from writevue_pipelines.errors import NotFound
from writevue_pipelines.models import TrendInteraction
from writevue_pipelines.oauth.endpoints import client_variables
from writevue_pipelines.oauth.flow import (
    begin_authorization,
    complete_authorization,
    parse_callback,
)
from writevue_pipelines.privacy import pending_requests, request_erasure
from writevue_pipelines.privacy.trends import access_log_file, pending_days

RESOURCES = {"writevue": WriteVueResource()}
REPO = Path(__file__).resolve().parent.parent
CALLBACK = "https://connect.writevue.test/oauth/callback"


class RevocationProbe(SandboxOAuthSource):
    name = "revocation_probe"


STRIPE = CONNECTION_PARTITIONS["stripe"].name
TENANT_NAME = "Pemberton Quillsmith Cartography"
TENANT_EMAIL = "ledger@pemberton-quillsmith.example"


def tick(instance: DagsterInstance):
    with build_sensor_context(instance=instance, resources=RESOURCES) as context:
        return erasure_requests(context)


def step_output_metadata(result, step: str = "erase_tenant") -> dict:
    (event,) = [
        e
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_OUTPUT and e.step_key == step
    ]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def run_log_text(instance: DagsterInstance, run_id: str) -> str:
    return "\n".join(
        entry.user_message or "" for entry in instance.all_logs(run_id) if entry.user_message
    )


def test_the_operations_are_defined_and_on_by_default():
    assert erasure_requests.default_status == DefaultSensorStatus.RUNNING
    assert erasure_requests.minimum_interval_seconds == 30
    assert erasure_requests.job_name == "erasure"
    for name in ("retention", "access_log_trends"):
        schedule = defs.resolve_schedule_def(name)
        assert schedule.default_status == DefaultScheduleStatus.RUNNING
        assert schedule.execution_timezone == "UTC"
    spec = defs.resolve_asset_graph().get(access_log_trends.key)
    assert spec.group_name == "operations" and spec.description


def test_the_sensor_erases_a_requested_tenant_and_its_partitions(runtime, sandbox, instance):
    tenant, first = add_stripe_connection(
        runtime,
        sandbox.url,
        new_stripe_key(),
        name=TENANT_NAME,
        email=TENANT_EMAIL,
    )
    _, second = add_stripe_connection(runtime, sandbox.url, new_stripe_key(), tenant_id=tenant)
    other_tenant, other = add_stripe_connection(
        runtime, sandbox.url, new_stripe_key(), name="Other Co"
    )
    instance.add_dynamic_partitions(STRIPE, [first, second, other])
    request_id = request_erasure(runtime, tenant, "ops")

    result = tick(instance)
    assert isinstance(result, SensorResult)
    (request,) = result.run_requests
    assert request.run_key == request_id
    assert request.tags[REQUEST_TAG] == request_id and request.tags[TENANT_TAG] == tenant
    assert TENANT_NAME not in json.dumps([request.tags, request.run_config])

    run = defs.resolve_job_def("erasure").execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance
    )
    assert run.success
    assert instance.get_dynamic_partitions(STRIPE) == [other]
    with runtime.db.session() as session:
        with pytest.raises(NotFound):
            registry.require_tenant(session, tenant)
        assert registry.require_tenant(session, other_tenant) == other_tenant
    metadata = step_output_metadata(run)
    assert metadata["verified"] is True
    assert metadata["partitions_deleted"] == 2
    assert metadata["rows_removed_per_table"]["connections"] == 2
    assert metadata["tenant_id"] == tenant and metadata["request_id"] == request_id
    logs = run_log_text(instance, run.run_id)
    assert "nothing of the tenant left" in logs
    assert TENANT_NAME not in logs and TENANT_EMAIL not in logs
    assert pending_requests(runtime) == []
    assert isinstance(tick(instance), SkipReason)

    # Re-executing the finished run does nothing and succeeds.
    again = defs.resolve_job_def("erasure").execute_in_process(
        run_config=request.run_config, instance=instance
    )
    assert again.success and step_output_metadata(again)["already_done"] is True


def test_a_request_gets_one_run(runtime, sandbox, instance):
    first_tenant, _ = add_stripe_connection(runtime, sandbox.url, "sk_test_aaaaaaaaaaaa")
    second_tenant, _ = add_stripe_connection(runtime, sandbox.url, "sk_test_bbbbbbbbbbbb")
    first = request_erasure(runtime, first_tenant, "ops")
    second = request_erasure(runtime, second_tenant, "ops")
    assert request_erasure(runtime, first_tenant, "ops") == first  # asking again: same request

    requests = tick(instance).run_requests
    assert [r.run_key for r in requests] == [first, second]
    # The daemon submits the first; the next tick launches nothing more for it.
    job = defs.resolve_job_def("erasure")
    instance.create_run_for_job(job, run_config=requests[0].run_config, tags=requests[0].tags)
    (only,) = tick(instance).run_requests
    assert only.run_key == second
    instance.create_run_for_job(job, run_config=only.run_config, tags=only.tags)
    skipped = tick(instance)
    assert isinstance(skipped, SkipReason) and "2 open erasure requests" in skipped.skip_message


def test_run_retention_deletes_finished_runs_older_than_the_cutoff_only(runtime, instance):
    trends = defs.resolve_job_def("access_log_trends_job")
    old = trends.execute_in_process(instance=instance).run_id
    job = defs.resolve_job_def("erasure")
    config = {"ops": {"erase_tenant": {"config": {"request_id": str(uuid.uuid4())}}}}
    stuck = instance.create_run_for_job(job, run_config=config, status=DagsterRunStatus.STARTED)
    time.sleep(1.1)  # SQLite run storage stamps runs to the second
    cutoff = dt.datetime.now(dt.UTC)
    time.sleep(1.1)
    recent = trends.execute_in_process(instance=instance).run_id

    report = delete_runs_before(instance, cutoff)
    assert (report.deleted, report.unfinished_kept) == (1, 1)
    assert instance.get_run_by_id(old) is None and list(instance.all_logs(old)) == []
    assert instance.get_run_by_id(recent) is not None

    # The job with a zero-day limit: every finished run goes, the running ones stay.
    result = defs.resolve_job_def("retention").execute_in_process(
        instance=instance,
        run_config={"ops": {"delete_old_runs": {"config": {"older_than_days": 0}}}},
    )
    assert result.success
    left = {r.dagster_run.run_id for r in instance.get_run_records()}
    assert left == {result.run_id, stuck.run_id}
    metadata = {
        e.step_key: e.step_output_data.metadata
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_OUTPUT
    }
    assert metadata["delete_old_runs"]["runs_deleted"].value == 1
    assert metadata["delete_old_runs"]["older_runs_not_over_kept"].value == 1
    assert metadata["sweep_staging"]["entries_removed"].value == 0


def access_line(day: dt.date, event: str, browser: str, second: int) -> str:
    return json.dumps(
        {
            "time": f"{day.isoformat()}T09:00:{second:02d}Z",
            "link": "link-1",
            "ip": "198.51.100.0",
            "browser": browser,
            "platform": "Linux",
            "referrer": None,
            "event": event,
        }
    )


def test_the_trends_asset_rolls_up_pending_days_and_expires_old_logs(runtime, instance):
    today = dt.datetime.now(dt.UTC).date()
    yesterday, long_ago = today - dt.timedelta(days=1), today - dt.timedelta(days=40)
    log_dir = runtime.settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    access_log_file(log_dir, yesterday).write_text(
        "\n".join(
            [
                access_line(yesterday, "view", "Chrome", 1),
                access_line(yesterday, "interaction", "Chrome", 2),
                access_line(yesterday, "view", "Firefox", 3),
                access_line(yesterday, "export", "Firefox", 4),
            ]
        )
        + "\n"
    )
    old_file = access_log_file(log_dir, long_ago)
    old_file.write_text(access_line(long_ago, "view", "Safari", 5) + "\n")

    result = materialize([access_log_trends], instance=instance, resources=RESOURCES)
    assert result.success
    (event,) = result.asset_materializations_for_node("access_log_trends")
    metadata = {k: v.value for k, v in event.metadata.items()}
    assert metadata["days_rolled_up"] == 2
    assert (metadata["first_day"], metadata["last_day"]) == (str(long_ago), str(yesterday))
    assert (metadata["views"], metadata["interactions"], metadata["exports"]) == (3, 1, 1)
    assert metadata["log_files_expired"] == 1 and metadata["log_files_kept"] == 1
    assert not old_file.exists() and access_log_file(log_dir, yesterday).exists()
    with runtime.db.session() as session:
        rows = dict(session.execute(select(TrendInteraction.day, TrendInteraction.views)).all())
    assert rows == {long_ago: 1, yesterday: 2}
    assert pending_days(runtime) == []

    # Nothing new: the next materialisation rolls nothing up.
    again = materialize([access_log_trends], instance=instance, resources=RESOURCES)
    (event,) = again.asset_materializations_for_node("access_log_trends")
    assert event.metadata["days_rolled_up"].value == 0


def test_a_failed_verification_fails_the_erasure_run(runtime, sandbox, instance, monkeypatch):
    tenant, connection_id = add_stripe_connection(runtime, sandbox.url, "sk_test_cccccccccccc")
    instance.add_dynamic_partitions(STRIPE, [connection_id])
    request_id = request_erasure(runtime, tenant, "ops")

    # A copy of the tenant id in a table nobody knows about: the verification finds it.
    with runtime.db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE stray_copy (note TEXT)"))
        conn.execute(text("INSERT INTO stray_copy VALUES (:v)"), {"v": f"copied {tenant}"})
    (request,) = tick(instance).run_requests
    run = defs.resolve_job_def("erasure").execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, raise_on_error=False
    )
    assert not run.success
    (failure,) = [e for e in run.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert "verification found its data left" in failure.step_failure_data.error.message
    assert failure.step_failure_data.user_failure_data.metadata["verified"].value is False
    assert request_id in run_log_text(instance, run.run_id)


def test_a_failed_revocation_shows_in_the_run_and_re_executing_retries_it(
    runtime, sandbox, instance, monkeypatch
):
    register_oauth_source(monkeypatch, RevocationProbe())
    tenant = add_tenant(runtime, TENANT_NAME, TENANT_EMAIL)
    options = {"base_url": sandbox.url, "auth_base_url": sandbox.url}
    url = begin_authorization(runtime, tenant, RevocationProbe.name, options, CALLBACK)
    location = httpx.get(url, follow_redirects=False).headers["location"]
    remember_secret(parse_qs(urlsplit(location).query)["code"][0])
    complete_authorization(runtime, *parse_callback(location))
    _, secret_variable = client_variables(RevocationProbe.name)
    good_secret = os.environ[secret_variable]
    monkeypatch.setenv(secret_variable, "refused-by-the-provider")
    request_id = request_erasure(runtime, tenant, "ops")
    (request,) = tick(instance).run_requests

    job = defs.resolve_job_def("erasure")
    run = job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, raise_on_error=False
    )
    # The tenant is erased and verified; the run fails on the grant it could not revoke.
    assert not run.success
    assert step_output_metadata(run)["verified"] is True
    assert "writevue tenant revoke-grants" in step_output_metadata(run)["needs_operator_action"]
    (failure,) = [e for e in run.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failure.step_key == "revoke_remaining_grants"
    assert f"writevue tenant revoke-grants {request_id}" in (
        failure.step_failure_data.user_failure_data.description
    )
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags[OUTCOME_TAG] == "needs_operator_action"
    assert sandbox.counters["oauth.revocations"] == 0

    # Once the provider accepts the client again, re-executing retries the revocation.
    monkeypatch.setenv(secret_variable, good_secret)
    again = job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance
    )
    assert again.success and sandbox.counters["oauth.revocations"] == 1
    assert step_output_metadata(again, "revoke_remaining_grants")["grants_revoked_now"] == 1


def test_on_postgres_the_dagster_run_history_is_searched_too(
    runtime, sandbox, postgres_url, tmp_path, monkeypatch
):
    dagster_home = deploy_dagster_home(monkeypatch, postgres_url, tmp_path / "dagster-pg")
    job = defs.resolve_job_def("erasure")

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        # Erased cleanly: the run history keeps only the opaque tenant and connection ids.
        tenant, connection = add_stripe_connection(
            runtime, sandbox.url, new_stripe_key(), name=TENANT_NAME, email=TENANT_EMAIL
        )
        instance.add_dynamic_partitions(STRIPE, [connection])
        request_erasure(runtime, tenant, "ops")
        (request,) = tick(instance).run_requests
        run = job.execute_in_process(
            run_config=request.run_config, tags=request.tags, instance=instance
        )
        assert run.success
        metadata = step_output_metadata(run)
        assert metadata["verified"] is True and metadata["dagster_storage_tables_scanned"] > 5
        assert "places in Dagster's run history hold the opaque" in run_log_text(
            instance, run.run_id
        )

        # A run tag that copied the client's email: found in Dagster's storage, not verified.
        other, _ = add_stripe_connection(
            runtime,
            sandbox.url,
            new_stripe_key(),
            name="Other Co",
            email=planted("leak@other.example"),  # copied into a run tag below, on purpose
        )
        instance.add_run_tags(run.run_id, {"note": "for leak@other.example"})
        request_erasure(runtime, other, "ops")
        (request,) = tick(instance).run_requests
        failed = job.execute_in_process(
            run_config=request.run_config,
            tags=request.tags,
            instance=instance,
            raise_on_error=False,
        )
        assert not failed.success
        logs = run_log_text(instance, failed.run_id)
        assert "still in Dagster's storage: table run_tags:" in logs
        assert "(the tenant id, the tenant's name or email)" in logs
        assert "leak@other.example" not in logs
        assert instance.get_run_by_id(failed.run_id).tags[OUTCOME_TAG] == "not_verified"
