"""Alerts and scorecards in Dagster: the unusual-value check on every refresh, the
``notifications`` sensor (after refreshes, not during them) and the ``notifications``
job (batched, idempotent, outcomes recorded), against a real SMTP server on loopback.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetCheckSeverity, DagsterRunStatus, build_sensor_context
from support import add_facts

from writevue_pipelines import registry
from writevue_pipelines.defs import checks
from writevue_pipelines.defs.assets import SOURCE_ASSETS
from writevue_pipelines.defs.resources import WriteVueResource
from writevue_pipelines.sources import SOURCES

STRIPE = SOURCE_ASSETS["stripe"]
TODAY = dt.datetime.now(dt.UTC).date()
RESOURCES = {"writevue": WriteVueResource()}


def _history(spike: float | None) -> pl.DataFrame:
    """Eight weeks of a steady weekly pattern of payments, and yesterday's value."""
    rows = []
    for back in range(1, 60):
        day = TODAY - dt.timedelta(days=back)
        value = 100.0 + 10 * day.weekday() + (back % 3)
        if back == 1 and spike is not None:
            value = spike
        rows.append({"metric": "charges", "dimension": "", "day": day, "value": value})
    return pl.DataFrame(rows)


def _tenant(runtime, name: str = "Checked Co") -> str:
    with runtime.db.session() as session:
        return registry.add_tenant(session, runtime.keys, name, "checked@example.test")


def _evaluations(runtime, connection_id: str):
    before = {connection_id: checks.ConnectionState(failing=False)}
    return list(checks.evaluate(runtime, SOURCES["stripe"], STRIPE.daily_metrics_key, before, {}))


def test_an_unusual_day_warns_on_its_refresh_with_the_figures_it_was_judged_by(runtime):
    connection_id = add_facts(runtime, _tenant(runtime), "stripe", _history(spike=900.0))
    unusual = [e for e in _evaluations(runtime, connection_id) if e.check_name == "values_usual"]
    assert len(unusual) == 1
    (warning,) = unusual
    assert not warning.passed
    assert warning.severity == AssetCheckSeverity.WARN
    assert warning.partition == connection_id
    assert "charges" in warning.description and "above its usual range" in warning.description
    figures = warning.metadata["charges"].value
    assert figures["direction"] == "above" and figures["score"] > 3.5
    # the client's figures stay out of Dagster's event log, which erasure cannot wipe
    assert "900" not in warning.description and "900" not in str(warning.metadata)


@pytest.mark.parametrize("yesterday", [None, 112.0])
def test_a_usual_day_raises_no_warning(runtime, yesterday):
    connection_id = add_facts(runtime, _tenant(runtime), "stripe", _history(spike=yesterday))
    usual = [e for e in _evaluations(runtime, connection_id) if e.check_name == "values_usual"]
    # every check reports, passes included (the UI shows healthy as healthy)
    assert usual and all(e.passed for e in usual)


# -- the sensor: after refreshes, not during them ------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    from writevue_sandbox import SandboxServer

    with SandboxServer() as server:
        yield server


def _materialize(instance, connection_id: str) -> None:
    from dagster import materialize

    from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS

    instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, [connection_id])
    result = materialize(
        [STRIPE.refresh], instance=instance, resources=RESOURCES, partition_key=connection_id
    )
    assert result.success


def _tick(instance, cursor: str | None = None):
    from writevue_pipelines.defs.notifications import notifications_sensor

    with build_sensor_context(instance=instance, resources=RESOURCES, cursor=cursor) as context:
        return notifications_sensor(context)


def _refresh_in_flight(instance) -> str:
    from dagster._core.storage.dagster_run import DagsterRun

    run = DagsterRun(
        job_name="__ASSET_JOB",
        status=DagsterRunStatus.STARTED,
        tags={"writevue/source": "stripe", "writevue/trigger": "schedule"},
    )
    instance.add_run(run)
    return run.run_id


def test_the_sensor_judges_refreshed_tenants_once_their_refreshes_are_over(
    runtime, sandbox, instance
):
    from support import add_stripe_connection, new_stripe_key

    first, first_connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    second, second_connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    idle, _ = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    _materialize(instance, first_connection)
    _materialize(instance, second_connection)
    running = _refresh_in_flight(instance)

    waiting = _tick(instance)
    assert not waiting.run_requests
    assert "waiting for 1 refresh run" in waiting.skip_reason.skip_message

    instance.delete_run(running)
    requested = _tick(instance, waiting.cursor)
    (request,) = requested.run_requests
    config = request.run_config["ops"]["notify"]["config"]
    assert config["tenants"] == sorted([first, second])  # not the tenant that did not refresh
    assert idle not in config["tenants"]
    assert request.tags["writevue/trigger"] == "after_refresh"

    # Nothing new since: nothing requested.
    again = _tick(instance, requested.cursor)
    assert not again.run_requests


def test_many_tenants_are_judged_in_batches_of_runs(runtime, sandbox, instance, monkeypatch):
    from support import add_stripe_connection, new_stripe_key

    monkeypatch.setenv("WRITEVUE_NOTIFY_BATCH", "2")
    tenants = []
    for _ in range(3):
        tenant, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
        _materialize(instance, connection)
        tenants.append(tenant)
    requests = _tick(instance).run_requests
    batches = [r.run_config["ops"]["notify"]["config"]["tenants"] for r in requests]
    assert [len(batch) for batch in batches] == [2, 1]
    assert sorted(t for batch in batches for t in batch) == sorted(tenants)
    assert len({r.run_key for r in requests}) == 2


def test_the_notifications_job_is_in_the_code_location():
    from writevue_pipelines.defs import defs

    job = defs.resolve_job_def("notifications")
    assert [node.name for node in job.graph.node_defs] == ["notify"]
    assert defs.resolve_sensor_def("notifications").job_name == "notifications"


# -- the job: batched, idempotent, every outcome recorded ---------------------------------


@pytest.fixture
def mail(tmp_path, monkeypatch):
    from support import start_smtp_server

    with start_smtp_server(tmp_path / "smtp") as peer:
        # what the job's resource reads, as the daemon's environment would hold it
        monkeypatch.setenv("WRITEVUE_SMTP_URL", peer.url)
        monkeypatch.setenv("WRITEVUE_NOTIFY_TIMEOUT_S", "3")
        yield peer


CLIENT = "monday-reader@quillfeather.example"


def _due_scorecard(runtime, overdue: dt.timedelta = dt.timedelta(minutes=5)) -> tuple[str, str]:
    """A tenant with eight weeks of payments and a weekly scorecard due ``overdue`` ago."""
    from sqlalchemy import update

    from writevue_pipelines.models import Scorecard
    from writevue_pipelines.notifications import config

    tenant_id = _tenant(runtime, "Quillfeather Haberdashery")
    add_facts(runtime, tenant_id, "stripe", _history(spike=None))
    with runtime.db.session() as session:
        card = config.add_scorecard(
            session,
            runtime.keys,
            tenant_id,
            name="Monday summary",
            metrics=["stripe.charges"],
            period="last_7_days",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            emails=[CLIENT],
        )
        session.execute(
            update(Scorecard)
            .where(Scorecard.id == card)
            .values(next_due_at=dt.datetime.now(dt.UTC) - overdue)
        )
    return tenant_id, card


def _execute(instance, request, *, succeeds: bool = True):
    from writevue_pipelines.defs import defs

    result = defs.resolve_job_def("notifications").execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources=RESOURCES,
        tags=request.tags,
        raise_on_error=False,
    )
    assert result.success is succeeds
    return result


def _deliveries(runtime, tenant_id: str):
    from writevue_pipelines.notifications import delivery

    with runtime.db.session() as session:
        return delivery.list_deliveries(session, tenant_id=tenant_id)


def test_a_due_scorecard_is_sent_once_by_a_notifications_run(runtime, instance, mail):
    tenant_id, card = _due_scorecard(runtime)

    tick = _tick(instance)
    (request,) = tick.run_requests
    assert request.run_config["ops"]["notify"]["config"]["scorecards"][0][0] == card
    assert request.tags["writevue/trigger"] == "scorecards_due"
    result = _execute(instance, request)

    (message,) = mail.messages
    assert message.rcpt_tos == [CLIENT]
    assert "Monday summary" in str(message.message["Subject"])
    (sent,) = _deliveries(runtime, tenant_id)
    assert (sent.status, sent.kind, sent.attempts) == ("sent", "scorecard", 1)
    (output,) = [e for e in result.all_node_events if e.is_successful_output]
    metadata = output.step_output_data.metadata
    assert metadata["deliveries_sent"].value == 1
    assert metadata["deliveries_by_tenant"].value == {tenant_id: {"sent": 1}}

    # The run retried (or the same request launched twice) sends nothing again ...
    _execute(instance, request)
    assert len(mail.messages) == 1
    # ... and the scorecard has moved on to next week: nothing is due.
    later = _tick(instance, tick.cursor)
    assert not later.run_requests


def test_scorecards_do_not_wait_for_refreshes_but_tenants_do(runtime, sandbox, instance, mail):
    from support import add_stripe_connection, new_stripe_key

    _tenant_id, card = _due_scorecard(runtime)
    refreshed, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    _materialize(instance, connection)
    _refresh_in_flight(instance)
    (request,) = _tick(instance).run_requests
    config = request.run_config["ops"]["notify"]["config"]
    assert [c for c, _ in config["scorecards"]] == [card]
    assert refreshed not in config["tenants"]  # judged once the refreshes are over


def _refreshed_at(runtime, tenant_id: str, at: dt.datetime) -> None:
    from sqlalchemy import update

    from writevue_pipelines.models import Connection

    with runtime.db.session() as session:
        session.execute(
            update(Connection).where(Connection.tenant_id == tenant_id).values(last_refreshed_at=at)
        )


def test_a_scorecard_waits_for_its_periods_data_then_goes_out(runtime, instance, mail):
    from writevue_pipelines.notifications import config

    tenant_id, card = _due_scorecard(runtime)
    # the last refresh was before the period's last day (yesterday, UTC) ended
    _refreshed_at(runtime, tenant_id, dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    (request,) = _tick(instance).run_requests
    result = _execute(instance, request)
    assert mail.messages == []
    with runtime.db.session() as session:
        assert config.get_scorecard(session, card).next_due_at < dt.datetime.now(dt.UTC)
    (output,) = [e for e in result.all_node_events if e.is_successful_output]
    assert output.step_output_data.metadata["scorecards_held"].value == 1

    # The refresh comes in: the next run sends it.
    _refreshed_at(runtime, tenant_id, dt.datetime.now(dt.UTC))
    _execute(instance, request)
    assert len(mail.messages) == 1


def test_a_scorecard_held_too_long_goes_out_as_it_is(runtime, instance, mail):
    tenant_id, _card = _due_scorecard(runtime, overdue=dt.timedelta(hours=7))
    _refreshed_at(runtime, tenant_id, dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    (request,) = _tick(instance).run_requests
    _execute(instance, request)
    assert len(mail.messages) == 1


def test_a_scorecard_missed_for_weeks_is_sent_once_not_once_a_week(runtime, instance, mail):
    from writevue_pipelines.notifications import config

    _tenant, card = _due_scorecard(runtime, overdue=dt.timedelta(days=22))
    tick = _tick(instance)
    (request,) = tick.run_requests
    _execute(instance, request)
    assert len(mail.messages) == 1
    with runtime.db.session() as session:
        assert config.get_scorecard(session, card).next_due_at > dt.datetime.now(dt.UTC)
    assert not _tick(instance, tick.cursor).run_requests


def test_a_refused_message_is_recorded_and_sent_by_a_later_run(runtime, instance, mail):
    from sqlalchemy import update

    from writevue_pipelines.models import NotificationDelivery

    tenant_id, _card = _due_scorecard(runtime)
    mail.fail("4xx")
    (request,) = _tick(instance).run_requests
    _execute(instance, request)
    (waiting,) = _deliveries(runtime, tenant_id)
    assert (waiting.status, waiting.error, waiting.attempts) == ("retrying", "smtp 451", 1)
    assert mail.messages == []

    # Its retry time comes and the server accepts mail again: a retry run sends it.
    mail.fail(None)
    with runtime.db.session() as session:
        session.execute(
            update(NotificationDelivery).values(
                next_attempt_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            )
        )
    tick = _tick(instance)
    (retry,) = tick.run_requests
    assert retry.tags["writevue/trigger"] == "retry"
    _execute(instance, retry)
    (sent,) = _deliveries(runtime, tenant_id)
    assert (sent.status, sent.attempts) == ("sent", 2)
    assert len(mail.messages) == 1
    assert not _tick(instance, tick.cursor).run_requests


def test_an_alert_fires_once_however_often_its_tenant_is_judged(runtime, instance, mail):
    from writevue_pipelines.notifications import config

    tenant_id = _tenant(runtime, "Quillfeather Haberdashery")
    add_facts(runtime, tenant_id, "stripe", _history(spike=3.0))
    with runtime.db.session() as session:
        config.add_alert(
            session,
            runtime.keys,
            tenant_id,
            metric="stripe.charges",
            condition="below",
            threshold=50,
            emails=[CLIENT],
        )
    run_config = {"ops": {"notify": {"config": {"tenants": [tenant_id], "scorecards": []}}}}

    class Request:
        tags = {"writevue/trigger": "after_refresh"}

    Request.run_config = run_config
    _execute(instance, Request)
    assert len(mail.messages) == 1  # sent by the run that found it, not a later one
    _execute(instance, Request)

    (message,) = mail.messages
    text = message.part("text/plain")
    assert "Payments was 3" in text and "below your threshold of 50" in text
    assert [d.kind for d in _deliveries(runtime, tenant_id)] == ["alert"]


def test_dagster_keeps_no_recipient_name_or_figure_of_a_notification(runtime, instance, mail):
    tenant_id, _card = _due_scorecard(runtime)
    (request,) = _tick(instance).run_requests
    _execute(instance, request)
    assert len(mail.messages) == 1

    root = instance.root_directory
    stored = b"".join(p.read_bytes() for p in Path(root).rglob("*") if p.is_file())
    for secret in (CLIENT, "Quillfeather", "Monday summary"):
        assert secret.encode() not in stored, secret
    assert tenant_id.encode() in stored  # opaque ids are what runs are filed under


# -- sending now, outside the schedule ------------------------------------------------------


def test_send_now_without_smtp_says_so_and_queues_nothing(runtime, monkeypatch):
    from writevue_pipelines.errors import InvalidInput
    from writevue_pipelines.notifications import runner

    monkeypatch.delenv("WRITEVUE_SMTP_URL", raising=False)
    tenant_id, card = _due_scorecard(runtime)
    with pytest.raises(InvalidInput, match="WRITEVUE_SMTP_URL is not set"):
        runner.send_now(runtime, card)
    assert _deliveries(runtime, tenant_id) == []


def test_send_now_again_replaces_the_copy_still_waiting(runtime, mail):
    import dataclasses

    from writevue_pipelines.notifications import runner
    from writevue_pipelines.settings import Settings

    live = dataclasses.replace(runtime, settings=Settings.from_env())  # reads WRITEVUE_SMTP_URL
    live.__dict__["db"] = runtime.db
    tenant_id, card = _due_scorecard(live)
    mail.fail("4xx")
    runner.send_now(live, card)
    runner.send_now(live, card)
    statuses = sorted(d.status for d in _deliveries(live, tenant_id))
    assert statuses == ["cancelled", "retrying"]  # one copy waits to be retried, not two
    mail.fail(None)
    runner.send_now(live, card)
    assert sorted(d.status for d in _deliveries(live, tenant_id)) == [
        "cancelled",
        "cancelled",
        "sent",
    ]
    assert len(mail.messages) == 1


def _break_tenant_name(runtime, tenant_id: str) -> None:
    """The tenant's name no longer decrypts: rendering its scorecard fails."""
    from sqlalchemy import update

    from writevue_pipelines.models import Tenant

    with runtime.db.session() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(name_ct=b"broken"))


@pytest.mark.parametrize("overdue_hours, given_up", [(0.1, False), (7, True)])
def test_a_scorecard_that_cannot_be_rendered_is_retried_for_hours_then_skipped(
    runtime, instance, mail, overdue_hours, given_up
):
    from writevue_pipelines.notifications import config

    tenant_id, card = _due_scorecard(runtime, overdue=dt.timedelta(hours=overdue_hours))
    _break_tenant_name(runtime, tenant_id)
    (request,) = _tick(instance).run_requests
    _execute(instance, request, succeeds=False)  # failed, in the UI, and not retried at once
    assert mail.messages == []
    with runtime.db.session() as session:
        moved_on = config.get_scorecard(session, card).next_due_at > dt.datetime.now(dt.UTC)
    assert moved_on is given_up


def test_a_send_now_that_fails_to_render_leaves_the_waiting_copy(runtime, mail):
    import dataclasses

    from writevue_pipelines.notifications import runner
    from writevue_pipelines.settings import Settings

    live = dataclasses.replace(runtime, settings=Settings.from_env())
    live.__dict__["db"] = runtime.db
    tenant_id, card = _due_scorecard(live)
    mail.fail("4xx")
    runner.send_now(live, card)
    _break_tenant_name(live, tenant_id)
    with pytest.raises(Exception):  # noqa: B017 -- whatever the render raises
        runner.send_now(live, card)
    assert [d.status for d in _deliveries(live, tenant_id)] == ["retrying"]
