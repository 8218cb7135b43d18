"""Scorecards and alert rules as an operator sets them up: periods and cadences in the
tenant's time zone (DST included), what is refused, the recipients encrypted, the time
zone and the opt-in dashboard link, and the `writevue scorecard|alert|notifications`
commands."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import uuid

import pytest
from sqlalchemy import select
from support import add_tenant, remember_secret, run_cli

from writevue_pipelines import goals, links, templates, tenant_settings
from writevue_pipelines.errors import InvalidInput, NotFound
from writevue_pipelines.models import (
    AlertRule,
    NotificationDelivery,
    NotificationRecipient,
    Scorecard,
    TenantSettings,
)
from writevue_pipelines.notifications import config, schedule
from writevue_pipelines.notifications.schedule import (
    local_today,
    next_due,
    period_label,
    period_window,
)
from writevue_pipelines.vault import Binding

UTC = dt.UTC
D = dt.date


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# -- periods -------------------------------------------------------------------------------

THU = D(2026, 12, 3)  # a Thursday
MON = D(2026, 11, 30)  # a Monday
FIRST = D(2026, 12, 1)  # the 1st (a Tuesday)


@pytest.mark.parametrize(
    ("period", "today", "window"),
    [
        ("yesterday", THU, (D(2026, 12, 2), D(2026, 12, 2))),
        ("yesterday", D(2026, 1, 1), (D(2025, 12, 31), D(2025, 12, 31))),
        ("last_7_days", THU, (D(2026, 11, 26), D(2026, 12, 2))),
        ("last_30_days", THU, (D(2026, 11, 3), D(2026, 12, 2))),
        ("week_to_date", THU, (MON, D(2026, 12, 2))),
        # on a Monday the week so far has no whole day: the whole last week
        ("week_to_date", MON, (D(2026, 11, 23), D(2026, 11, 29))),
        ("week_to_date", D(2026, 12, 1), (MON, MON)),
        ("month_to_date", THU, (FIRST, D(2026, 12, 2))),
        # on the 1st: the whole last month
        ("month_to_date", FIRST, (D(2026, 11, 1), D(2026, 11, 30))),
        ("month_to_date", D(2026, 3, 1), (D(2026, 2, 1), D(2026, 2, 28))),
        ("last_week", THU, (D(2026, 11, 23), D(2026, 11, 29))),
        ("last_week", MON, (D(2026, 11, 23), D(2026, 11, 29))),
        ("last_week", D(2026, 11, 29), (D(2026, 11, 16), D(2026, 11, 22))),
        ("last_month", THU, (D(2026, 11, 1), D(2026, 11, 30))),
        ("last_month", FIRST, (D(2026, 11, 1), D(2026, 11, 30))),
        ("last_month", D(2026, 1, 15), (D(2025, 12, 1), D(2025, 12, 31))),
        ("last_month", D(2024, 3, 31), (D(2024, 2, 1), D(2024, 2, 29))),
    ],
)
def test_periods_are_whole_days_ending_at_most_yesterday(period, today, window):
    assert period_window(period, today) == window
    assert window[1] < today


def test_every_period_has_a_window_and_an_unknown_one_is_refused():
    assert set(schedule.PERIODS) == {
        "yesterday",
        "last_7_days",
        "last_30_days",
        "week_to_date",
        "month_to_date",
        "last_week",
        "last_month",
    }
    for day in (D(2026, 1, 1) + dt.timedelta(days=n) for n in range(400)):
        for period in schedule.PERIODS:
            start, end = period_window(period, day)
            assert start <= end < day
    with pytest.raises(InvalidInput, match="yesterday, last_7_days"):
        period_window("fortnight", THU)


def test_period_labels():
    assert period_label(THU, THU) == "Thu 3 Dec 2026"
    assert period_label(D(2026, 11, 23), D(2026, 11, 29)) == "Mon 23 Nov to Sun 29 Nov 2026"
    assert period_label(D(2026, 12, 28), D(2027, 1, 3)) == "Mon 28 Dec 2026 to Sun 3 Jan 2027"


# -- cadences ------------------------------------------------------------------------------


def test_daily_weekly_monthly_in_utc():
    kw = {"weekday": None, "day_of_month": None, "timezone": "UTC"}
    assert next_due("daily", send_at="08:00", after=at(2026, 12, 3, 7, 59), **kw) == at(
        2026, 12, 3, 8, 0
    )
    # strictly after: at the send time itself, the next one
    assert next_due("daily", send_at="08:00", after=at(2026, 12, 3, 8, 0), **kw) == at(
        2026, 12, 4, 8, 0
    )
    weekly = {"weekday": 0, "day_of_month": None, "timezone": "UTC"}
    assert next_due("weekly", send_at="08:30", after=at(2026, 12, 3, 12), **weekly) == at(
        2026, 12, 7, 8, 30
    )
    assert next_due("weekly", send_at="08:30", after=at(2026, 12, 7, 8, 29), **weekly) == at(
        2026, 12, 7, 8, 30
    )
    monthly = {"weekday": None, "day_of_month": 28, "timezone": "UTC"}
    assert next_due("monthly", send_at="23:59", after=at(2026, 2, 28, 23, 59), **monthly) == at(
        2026, 3, 28, 23, 59
    )
    assert next_due("monthly", send_at="00:00", after=at(2026, 12, 29), **monthly) == at(
        2027, 1, 28
    )


def test_a_local_time_follows_the_tenant_across_daylight_saving():
    berlin = {"weekday": None, "day_of_month": None, "timezone": "Europe/Berlin"}
    winter = next_due("daily", send_at="08:00", after=at(2026, 3, 27, 12), **berlin)
    assert winter == at(2026, 3, 28, 7, 0)  # CET, UTC+1
    summer = next_due("daily", send_at="08:00", after=winter, **berlin)
    assert summer == at(2026, 3, 29, 6, 0)  # CEST from that night, UTC+2
    ny = {"weekday": 0, "day_of_month": None, "timezone": "America/New_York"}
    # Monday 9:00 in New York, before and after the November change
    assert next_due("weekly", send_at="09:00", after=at(2026, 10, 27), **ny) == at(
        2026, 11, 2, 14, 0
    )
    assert next_due("weekly", send_at="09:00", after=at(2026, 10, 20), **ny) == at(
        2026, 10, 26, 13, 0
    )
    # a zone ahead of UTC: Monday 07:00 in Auckland is still Sunday in UTC
    nz = {"weekday": 0, "day_of_month": None, "timezone": "Pacific/Auckland"}
    assert next_due("weekly", send_at="07:00", after=at(2026, 12, 3), **nz) == at(
        2026, 12, 6, 18, 0
    )


def test_a_local_time_that_does_not_exist_that_day_is_sent_at_the_next_valid_minute():
    berlin = {"weekday": None, "day_of_month": None, "timezone": "Europe/Berlin"}
    # 02:30 does not exist on 29 March 2026 in Berlin (02:00 -> 03:00): sent at 03:00 CEST
    gap = next_due("daily", send_at="02:30", after=at(2026, 3, 28, 12), **berlin)
    assert gap == at(2026, 3, 29, 1, 0)
    assert gap.astimezone(schedule.zone("Europe/Berlin")).strftime("%H:%M") == "03:00"
    # and the next day at 02:30 again
    assert next_due("daily", send_at="02:30", after=gap, **berlin) == at(2026, 3, 30, 0, 30)
    # 02:30 happens twice on 25 October 2026: sent once, at the first
    first = next_due("daily", send_at="02:30", after=at(2026, 10, 24, 12), **berlin)
    assert first == at(2026, 10, 25, 0, 30)
    assert next_due("daily", send_at="02:30", after=first, **berlin) == at(2026, 10, 26, 1, 30)


def test_the_result_is_aware_utc_and_bad_schedules_are_refused():
    result = next_due(
        "daily",
        weekday=None,
        day_of_month=None,
        send_at="08:00",
        timezone="Asia/Kolkata",
        after=at(2026, 12, 3),
    )
    assert result.tzinfo is not None and result.utcoffset() == dt.timedelta(0)
    assert result == at(2026, 12, 3, 2, 30)
    kw = {"weekday": None, "day_of_month": None, "timezone": "UTC", "after": at(2026, 1, 1)}
    for send_at in ("8am", "24:00", "12:60", "", "1200"):
        with pytest.raises(InvalidInput, match="HH:MM"):
            next_due("daily", send_at=send_at, **kw)
    with pytest.raises(InvalidInput, match="time zone"):
        next_due("daily", send_at="08:00", **{**kw, "timezone": "Mars/Olympus"})
    with pytest.raises(InvalidInput, match="daily, weekly, monthly"):
        next_due("hourly", send_at="08:00", **kw)
    with pytest.raises(ValueError, match="naive"):
        next_due("daily", send_at="08:00", **{**kw, "after": dt.datetime(2026, 1, 1)})


def test_local_today():
    assert local_today("Pacific/Auckland", at(2026, 12, 3, 12)) == D(2026, 12, 4)
    assert local_today("America/Los_Angeles", at(2026, 12, 3, 5)) == D(2026, 12, 2)
    assert local_today("UTC", at(2026, 12, 3, 23, 59)) == D(2026, 12, 3)


def test_time_zones_are_checked_with_one_clear_message():
    assert schedule.check_timezone("Europe/Berlin") == "Europe/Berlin"
    for bad in ("Mars/Olympus", "", "../../etc/passwd", "Europe/Berlin\n", "x" * 300):
        with pytest.raises(InvalidInput, match="not an IANA time zone") as caught:
            schedule.check_timezone(bad)
        assert len(str(caught.value).splitlines()) == 1


# -- scorecards ----------------------------------------------------------------------------

NOW = at(2026, 12, 3, 12)  # a Thursday
TEMPLATE = """
name = "shop"
[[calculated]]
name = "aov"
formula = "stripe.gross_volume[eur] / stripe.charges"
unit = "money"
currency = "eur"
"""


def webhook_url() -> str:
    """A Slack-like webhook URL: a secret (its path is the credential)."""
    return remember_secret(f"https://hooks.slack.test/services/T0/B0/{uuid.uuid4().hex}")


def scorecard(session, keys, tenant, **overrides) -> str:
    kwargs = {
        "name": "Monday summary",
        "metrics": ["stripe.gross_volume[eur]", "stripe.charges"],
        "period": "last_week",
        "comparison": "previous",
        "cadence": "weekly",
        "weekday": 0,
        "send_at": "08:00",
        "emails": ["ana@client.test"],
        "now": NOW,
    }
    kwargs.update(overrides)
    return config.add_scorecard(session, keys, tenant, **kwargs)


def test_add_list_get_remove_a_scorecard(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    hook = webhook_url()
    with runtime.db.session() as session:
        tenant_settings.update_settings(session, tenant, timezone="Europe/Berlin")
        card = scorecard(
            session,
            runtime.keys,
            tenant,
            emails=["ana@client.test", "Ben@Client.test", "ana@CLIENT.test"],
            webhooks=[hook],
        )
        daily = scorecard(
            session,
            runtime.keys,
            tenant,
            name="Daily",
            metrics=["github.stars"],
            period="yesterday",
            cadence="daily",
            weekday=None,
            send_at="7:30",
        )
    with runtime.db.session() as session:
        listed = config.list_scorecards(session, tenant)
        assert [item.id for item in listed] == [card, daily]
        first = listed[0]
        assert first.metrics == ("stripe.gross_volume[eur]", "stripe.charges")
        assert (first.period, first.comparison, first.cadence) == (
            "last_week",
            "previous",
            "weekly",
        )
        assert (first.weekday, first.day_of_month, first.send_at) == (0, None, "08:00")
        # Monday 7 December 08:00 in Berlin (CET) is 07:00 UTC
        assert first.next_due_at == at(2026, 12, 7, 7, 0)
        assert (first.emails, first.webhooks, first.unsubscribed) == (2, 1, 0)
        assert listed[1].send_at == "07:30" and listed[1].next_due_at == at(2026, 12, 4, 6, 30)
        shown = json.dumps([item.as_json() for item in listed])
        assert "client.test" not in shown and "hooks.slack" not in shown
        assert json.loads(shown)[0]["schedule"] == "every Monday at 08:00 Europe/Berlin"
        assert config.get_scorecard(session, card) == first
        # encrypted at rest, bound to the row
        rows = session.scalars(
            select(NotificationRecipient).where(NotificationRecipient.scorecard_id == card)
        ).all()
        assert len(rows) == 3 and {r.tenant_id for r in rows} == {tenant}
        for row in rows:
            assert b"client.test" not in row.address_ct and b"slack" not in row.address_ct
            plain = runtime.keys.decrypt_text(
                row.address_ct, Binding(tenant, None, f"recipient.{row.id}")
            )
            assert plain in {"ana@client.test", "Ben@Client.test", hook}
        recipients = config.active_recipients(session, runtime.keys, scorecard_id=card)
        assert sorted((r.channel, r.address) for r in recipients) == [
            ("email", "Ben@Client.test"),
            ("email", "ana@client.test"),
            ("webhook", hook),
        ]
        assert "client.test" not in repr(recipients) and hook not in repr(recipients)
    with runtime.db.session() as session:
        removed = config.remove_scorecard(session, daily)
    assert removed.id == daily
    with runtime.db.session() as session:
        assert [item.id for item in config.list_scorecards(session, tenant)] == [card]
        assert (
            session.scalars(
                select(NotificationRecipient).where(NotificationRecipient.scorecard_id == daily)
            ).all()
            == []
        )
        with pytest.raises(NotFound, match="scorecard list"):
            config.get_scorecard(session, daily)
        with pytest.raises(NotFound, match="scorecard list"):
            config.remove_scorecard(session, daily)
        with pytest.raises(InvalidInput, match="not a valid id"):
            config.get_scorecard(session, "nope")


def _delivery(session, tenant, subject, status, kind="scorecard") -> str:
    row = NotificationDelivery(
        id=str(uuid.uuid4()),
        tenant_id=tenant,
        idempotency_key=uuid.uuid4().hex + uuid.uuid4().hex,
        kind=kind,
        subject_id=subject,
        recipient_id=str(uuid.uuid4()),
        channel="email",
        scheduled_for=NOW,
        status=status,
        attempts=0,
        message_ct=None if status == "sent" else b"sealed message",
        sent_at=NOW if status == "sent" else None,
    )
    session.add(row)
    session.flush()
    return row.id


def test_removing_a_scorecard_or_alert_cancels_what_it_still_had_to_send(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(session, runtime.keys, tenant)
        rule = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=10,
            emails=["ana@client.test"],
        )
        ids = {
            (subject, status): _delivery(session, tenant, subject, status, kind)
            for subject, kind in ((card, "scorecard"), (rule, "alert"))
            for status in ("pending", "retrying", "sending", "sent")
        }
    with runtime.db.session() as session:
        config.remove_scorecard(session, card)
        config.remove_alert(session, rule)
    with runtime.db.session() as session:
        for (_subject, before), delivery_id in ids.items():
            row = session.get(NotificationDelivery, delivery_id)
            if before in ("pending", "retrying"):
                assert (row.status, row.message_ct) == ("cancelled", None)
            else:  # one being sent now finishes; one sent stays on record
                assert row.status == before
        assert session.scalars(select(NotificationRecipient)).all() == []
        assert session.scalars(select(Scorecard)).all() == []
        assert session.scalars(select(AlertRule)).all() == []


def test_goal_comparison_needs_a_goal_for_every_metric(runtime):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        goals.set_goal(
            session, tenant, "stripe.gross_volume", 50_000, period="month", dimension="eur"
        )
        with pytest.raises(InvalidInput, match=r"stripe\.charges and github\.stars have no goal"):
            scorecard(
                session,
                runtime.keys,
                tenant,
                metrics=["stripe.gross_volume[eur]", "stripe.charges", "github.stars"],
                comparison="goal",
            )
        card = scorecard(
            session, runtime.keys, tenant, metrics=["stripe.gross_volume[eur]"], comparison="goal"
        )
    with runtime.db.session() as session:
        assert config.get_scorecard(session, card).comparison == "goal"


def test_bad_scorecards_are_refused_and_nothing_is_written(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    sixteen = [f"rest.m{i}" for i in range(16)]
    bad = [
        ({"metrics": []}, "at least one metric"),
        ({"metrics": sixteen}, "at most 15 metrics"),
        ({"metrics": ["strpe.net"]}, 'no source "strpe"'),
        ({"metrics": ["stripe.gross"]}, 'stripe has no metric "gross"'),
        ({"metrics": ["calc.aov"]}, 'no calculated metric "aov"'),
        ({"metrics": ["ga4.sessions[x]"]}, "no breakdown"),
        ({"metrics": ["stripe.charges + 1"]}, "is not a metric"),
        ({"metrics": ["stripe.charges", "stripe.charges"]}, "twice"),
        ({"name": " "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"period": "fortnight"}, "yesterday, last_7_days"),
        ({"comparison": "budget"}, "previous, last_year, goal"),
        ({"cadence": "hourly"}, "daily, weekly, monthly"),
        ({"cadence": "weekly", "weekday": None}, "weekday"),
        ({"cadence": "weekly", "weekday": 7}, "weekday"),
        ({"cadence": "monthly", "weekday": None, "day_of_month": 29}, "1 to 28"),
        ({"cadence": "daily", "weekday": 2}, "daily"),
        ({"send_at": "25:00"}, "HH:MM"),
        ({"emails": [], "webhooks": []}, "at least one recipient"),
        ({"emails": ["not-an-address"]}, "--to 1 is not an email address"),
        ({"emails": ["a@b.test", "x@y"]}, "--to 2 is not an email address"),
        ({"emails": ["a@b.test\r\nBcc: x@evil.test"]}, "--to 1 is not an email address"),
        ({"webhooks": ["ftp://hooks.test/x"]}, "webhook URL 1 is not an http"),
        ({"webhooks": ["https:///path-only"]}, "webhook URL 1 is not an http"),
        ({"webhooks": ["https://user:pw@hooks.test/x"]}, "user name or password"),
        ({"webhooks": ["https://hooks.test/" + "x" * 2000]}, "2000"),
        ({"webhooks": ["https://hooks.test/a b"]}, "webhook URL 1 is not an http"),
        ({"webhooks": ["https://hooks.test:99999/x"]}, "webhook URL 1 is not an http"),
    ]
    for overrides, message in bad:
        with pytest.raises(InvalidInput, match=message), runtime.db.session() as session:
            scorecard(session, runtime.keys, tenant, **overrides)
    with pytest.raises(NotFound), runtime.db.session() as session:
        scorecard(session, runtime.keys, str(uuid.uuid4()))
    with runtime.db.session() as session:
        assert config.list_scorecards(session, tenant) == []
        assert session.scalars(select(NotificationRecipient)).all() == []
        # a calculated metric of the tenant's template is fine, and so are 15 metrics
        templates.save_template(session, templates.parse_template(TEMPLATE, "toml"))
        templates.apply_template(session, "shop", [tenant])
        scorecard(session, runtime.keys, tenant, metrics=["calc.aov", *sixteen[:14]])


def test_limits_per_tenant(runtime):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        for n in range(config.MAX_SCORECARDS):
            scorecard(session, runtime.keys, tenant, name=f"card {n}")
        with pytest.raises(InvalidInput, match="at most 20 scorecards"):
            scorecard(session, runtime.keys, tenant, name="one too many")
        for n in range(config.MAX_ALERTS):
            config.add_alert(
                session,
                runtime.keys,
                tenant,
                metric="stripe.charges",
                condition="above",
                threshold=n,
                emails=["ana@client.test"],
            )
        with pytest.raises(InvalidInput, match="at most 50 alerts"):
            config.add_alert(
                session,
                runtime.keys,
                tenant,
                metric="stripe.charges",
                condition="above",
                threshold=1000,
                emails=["ana@client.test"],
            )
    other = add_tenant(runtime, "Other Co")
    with runtime.db.session() as session:
        scorecard(session, runtime.keys, other)  # the limit is per tenant


# -- alerts --------------------------------------------------------------------------------


def test_add_list_get_remove_alerts(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    hook = webhook_url()
    with runtime.db.session() as session:
        add = lambda **kw: config.add_alert(  # noqa: E731
            session, runtime.keys, tenant, **{"emails": ["ana@client.test"], **kw}
        )
        above = add(metric="stripe.gross_volume[eur]", condition="above", threshold=2000)
        below = add(metric="stripe.charges", condition="below", threshold=0, window_days=7)
        change = add(metric="github.stars", condition="change", threshold=20, webhooks=[hook])
        anomaly = add(metric="rest.signups", condition="anomaly", emails=[], webhooks=[hook])
        sensitive = add(metric="stripe.charges", condition="anomaly", threshold=2.5)
    with runtime.db.session() as session:
        listed = {a.id: a for a in config.list_alerts(session, tenant)}
        assert list(listed) == [above, below, change, anomaly, sensitive]
        first = listed[above]
        assert (first.metric, first.dimension, first.condition, first.threshold) == (
            "stripe.gross_volume",
            "eur",
            "above",
            2000,
        )
        assert first.ref == "stripe.gross_volume[eur]" and first.window_days == 1
        assert first.state == "ok" and first.firing_since is None
        assert listed[below].window_days == 7 and listed[below].threshold == 0
        assert (listed[change].emails, listed[change].webhooks) == (1, 1)
        assert listed[anomaly].threshold == 3.5 and (
            listed[anomaly].emails,
            listed[anomaly].webhooks,
        ) == (0, 1)
        assert listed[sensitive].threshold == 2.5
        assert listed[above].describe() == "stripe.gross_volume[eur] above 2000 (the last day)"
        assert listed[below].describe() == "stripe.charges below 0 (the last 7 days)"
        assert listed[change].describe() == "github.stars changes by more than 20% (the last day)"
        assert listed[anomaly].describe() == "rest.signups unusual (sensitivity 3.5) (the last day)"
        shown = json.dumps([a.as_json() for a in listed.values()])
        assert "client.test" not in shown and "slack" not in shown
        assert config.get_alert(session, change) == listed[change]
        assert [
            r.address for r in config.active_recipients(session, runtime.keys, alert_id=anomaly)
        ] == [hook]
        with pytest.raises(ValueError, match="one of"):
            config.active_recipients(session, runtime.keys)
    with runtime.db.session() as session:
        assert config.remove_alert(session, change).id == change
    with runtime.db.session() as session:
        assert change not in {a.id for a in config.list_alerts(session, tenant)}
        with pytest.raises(NotFound, match="alert list"):
            config.remove_alert(session, change)


def test_bad_alerts_are_refused_and_nothing_is_written(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    bad = [
        ({"metric": "stripe.charges", "condition": "above"}, "needs a threshold"),
        ({"metric": "stripe.charges", "condition": "below", "threshold": float("nan")}, "finite"),
        ({"metric": "stripe.charges", "condition": "change"}, "positive percentage"),
        ({"metric": "stripe.charges", "condition": "change", "threshold": -5}, "positive"),
        ({"metric": "stripe.charges", "condition": "change", "threshold": 0}, "positive"),
        ({"metric": "stripe.charges", "condition": "anomaly", "threshold": 0.2}, "between 1"),
        ({"metric": "stripe.charges", "condition": "anomaly", "threshold": 50}, "between 1"),
        (
            {"metric": "stripe.charges", "condition": "anomaly", "window_days": 7},
            "single days",
        ),
        (
            {"metric": "stripe.charges", "condition": "above", "threshold": 1, "window_days": 3},
            "1 or 7",
        ),
        ({"metric": "stripe.charges", "condition": "sideways", "threshold": 1}, "above, below"),
        ({"metric": "strpe.charges", "condition": "above", "threshold": 1}, 'no source "strpe"'),
        ({"metric": "calc.aov", "condition": "above", "threshold": 1}, "no calculated"),
        (
            {"metric": "stripe.charges", "condition": "above", "threshold": 1, "emails": []},
            "at least one recipient",
        ),
        (
            {"metric": "stripe.charges", "condition": "above", "threshold": 1, "emails": ["@x"]},
            "--to 1 is not an email address",
        ),
    ]
    for kwargs, message in bad:
        kwargs = {"emails": ["ana@client.test"], **kwargs}
        with pytest.raises(InvalidInput, match=message), runtime.db.session() as session:
            config.add_alert(session, runtime.keys, tenant, **kwargs)
    with runtime.db.session() as session:
        assert config.list_alerts(session, tenant) == []
        assert session.scalars(select(NotificationRecipient)).all() == []
        config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="above",
            threshold=5,
            emails=["ana@client.test"],
        )
    with pytest.raises(InvalidInput, match="same alert"), runtime.db.session() as session:
        config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="above",
            threshold=5.0,
            emails=["ben@client.test"],
        )


def test_unsubscribed_recipients_are_not_active_and_are_counted(runtime):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(
            session, runtime.keys, tenant, emails=["ana@client.test", "ben@client.test"]
        )
    with runtime.db.session() as session:
        ana = next(
            r
            for r in config.active_recipients(session, runtime.keys, scorecard_id=card)
            if r.address.startswith("ana")
        )
        session.get(NotificationRecipient, ana.id).unsubscribed_at = NOW
    with runtime.db.session() as session:
        assert [
            r.address for r in config.active_recipients(session, runtime.keys, scorecard_id=card)
        ] == ["ben@client.test"]
        info = config.get_scorecard(session, card)
        assert (info.emails, info.unsubscribed) == (2, 1)


# -- due and advanced ----------------------------------------------------------------------


def test_due_scorecards_and_advancing_them(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    other = add_tenant(runtime, "Other Co")
    with runtime.db.session() as session:
        monday = scorecard(session, runtime.keys, tenant)  # next: Mon 7 Dec 08:00 UTC
        daily = scorecard(
            session,
            runtime.keys,
            other,
            period="yesterday",
            cadence="daily",
            weekday=None,
            send_at="09:00",
        )  # next: Thu 3 Dec 09:00 UTC... already past NOW: Fri 4 Dec 09:00
        paused = scorecard(
            session, runtime.keys, tenant, period="yesterday", cadence="daily", weekday=None
        )
        session.get(Scorecard, paused).paused_at = NOW
    with runtime.db.session() as session:
        assert config.due_scorecards(session, NOW) == []
        assert config.due_scorecards(session, at(2026, 12, 4, 9)) == [
            (daily, other, at(2026, 12, 4, 9))
        ]
        assert config.due_scorecards(session, at(2026, 12, 7, 8)) == [
            (daily, other, at(2026, 12, 4, 9)),
            (monday, tenant, at(2026, 12, 7, 8)),
        ]
        assert config.advance_scorecard(session, daily, after=at(2026, 12, 4, 9)) == at(
            2026, 12, 5, 9
        )
    with runtime.db.session() as session:
        assert config.due_scorecards(session, at(2026, 12, 4, 23)) == []
        assert config.get_scorecard(session, daily).next_due_at == at(2026, 12, 5, 9)


# -- the tenant's time zone and its link in messages ---------------------------------------


def test_time_zone_setting_reschedules_the_tenants_scorecards(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    other = add_tenant(runtime, "Other Co")
    with runtime.db.session() as session:
        assert config.tenant_timezone(session, tenant) == "UTC"
        assert tenant_settings.get_settings(session, tenant).timezone == "UTC"
        card = scorecard(session, runtime.keys, tenant)
        kept = scorecard(session, runtime.keys, other)
    with runtime.db.session() as session:
        assert config.get_scorecard(session, card).next_due_at == at(2026, 12, 7, 8)
        settings = tenant_settings.update_settings(session, tenant, timezone="America/New_York")
        assert settings.timezone == "America/New_York"
    with runtime.db.session() as session:
        assert config.tenant_timezone(session, tenant) == "America/New_York"
        assert (
            config.get_scorecard(session, card)
            .next_due_at.astimezone(schedule.zone("America/New_York"))
            .strftime("%a %H:%M")
            == "Mon 08:00"
        )
        assert config.get_scorecard(session, kept).next_due_at == at(2026, 12, 7, 8)
        # other settings stay as they were
        tenant_settings.update_settings(session, tenant, locale="de")
        assert tenant_settings.get_settings(session, tenant).timezone == "America/New_York"
    for bad in ("Mars/Olympus", "", "Europe/Berlin; DROP"):
        with pytest.raises(InvalidInput, match="not an IANA time zone"), runtime.db.session() as s:
            tenant_settings.update_settings(s, tenant, timezone=bad, locale="fr")
    with runtime.db.session() as session:
        settings = tenant_settings.get_settings(session, tenant)
        assert (settings.timezone, settings.locale) == ("America/New_York", "de")


def test_a_dashboard_link_goes_into_messages_only_when_opted_in(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    app = runtime.settings
    with runtime.db.session() as session:
        assert config.message_link_url(session, runtime.keys, tenant, app) is None
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    with runtime.db.session() as session:
        url = config.message_link_url(session, runtime.keys, tenant, app)
        assert url is not None and url.startswith(app.dashboard_base_url + "/d/")
        token = url.rsplit("/", 1)[1]
        info = links.resolve_token(session, token)
        assert info is not None and info.tenant_id == tenant and info.label == "in messages"
        row = session.get(TenantSettings, tenant)
        assert row.message_link_id == info.id and token.encode() not in row.message_link_ct
        assert tenant_settings.get_settings(session, tenant).links_in_messages is True
        # on again: the same link
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    with runtime.db.session() as session:
        assert config.message_link_url(session, runtime.keys, tenant, app) == url
        # revoked elsewhere (`writevue link revoke`): no link in messages any more
        links.revoke_link(session, info.id)
    with runtime.db.session() as session:
        assert config.message_link_url(session, runtime.keys, tenant, app) is None
        # on once more: a new link
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    with runtime.db.session() as session:
        again = config.message_link_url(session, runtime.keys, tenant, app)
        assert again is not None and again != url
        new_id = session.get(TenantSettings, tenant).message_link_id
        tenant_settings.set_message_link(session, runtime.keys, tenant, False)
    with runtime.db.session() as session:
        assert config.message_link_url(session, runtime.keys, tenant, app) is None
        row = session.get(TenantSettings, tenant)
        assert (row.message_link_id, row.message_link_ct) == (None, None)
        assert links.resolve_token(session, again.rsplit("/", 1)[1]) is None
        assert {item.id: item.state() for item in links.list_links(session, tenant)}[
            new_id
        ] == "revoked"
        assert tenant_settings.get_settings(session, tenant).links_in_messages is False
        tenant_settings.set_message_link(session, runtime.keys, tenant, False)  # stays off
    with pytest.raises(NotFound), runtime.db.session() as session:
        tenant_settings.set_message_link(session, runtime.keys, str(uuid.uuid4()), True)


# -- the commands --------------------------------------------------------------------------


NEW_COMMANDS = [
    "scorecard add",
    "scorecard list",
    "scorecard remove",
    "alert add",
    "alert list",
    "alert remove",
    "notifications list",
    "scorecard pause",
    "scorecard resume",
    "scorecard recipients",
    "scorecard preview",
    "scorecard send-now",
    "alert pause",
    "alert resume",
    "alert recipients",
    "alert test",
]


def test_every_notification_command_has_an_example_in_its_help(capsys):
    for name in NEW_COMMANDS:
        with pytest.raises(SystemExit) as done:
            from writevue_pipelines import cli

            cli.main([*name.split(), "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert f"writevue {name}" in out.split("example", 1)[1], (name, out)


def _events(runtime, action):
    from writevue_pipelines.privacy import list_events

    return list_events(runtime, action=action)


def test_scorecard_commands_end_to_end(runtime, monkeypatch, capsys, tmp_path):
    tenant = add_tenant(runtime)
    hook, other_hook = webhook_url(), webhook_url()
    hooks = tmp_path / "hooks.txt"
    hooks.write_text(f"# the client's Slack\n{hook}\n\n")
    code, out, err = run_cli(
        monkeypatch, capsys, "tenant", "set", tenant, "--timezone", "Europe/Berlin"
    )
    assert code == 0, err
    assert "time zone Europe/Berlin" in out and "link in messages off" in out

    add = [
        *("scorecard", "add", tenant, "--name", "Monday summary"),
        *("--metric", "stripe.gross_volume[eur]", "--metric", "stripe.charges"),
        *("--period", "last_week", "--compare", "previous", "--every", "weekly", "--on", "mon"),
        *("--at", "08:00", "--to", "ana@client.test", "--to", "ben@client.test"),
    ]
    code, out, err = run_cli(monkeypatch, capsys, *add, "--webhook-file", str(hooks))
    assert code == 0, err
    card = out.strip().splitlines()[-1]
    assert str(uuid.UUID(card)) == card
    assert "every Monday at 08:00 Europe/Berlin" in err and "next" in err
    for text in (out, err):
        assert "client.test" not in text and hook not in text
    (event,) = _events(runtime, "scorecard.add")
    assert event.tenant_id == tenant
    assert event.details == {"scorecard_id": card, "emails": 2, "webhooks": 1}

    # the webhook URL from stdin; monthly, the default time
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("scorecard", "add", tenant, "--name", "Month", "--metric", "github.stars"),
        *("--period", "last_month", "--compare", "last_year", "--every", "monthly"),
        *("--day", "2", "--webhook-file", "-"),
        stdin=other_hook + "\n",
    )
    assert code == 0, err
    monthly = out.strip().splitlines()[-1]
    assert other_hook not in out + err

    code, out, err = run_cli(
        monkeypatch, capsys, "scorecard", "list", tenant, "--json", "--reason", "T-1"
    )
    assert code == 0, err
    listed = {item["id"]: item for item in json.loads(out)}
    counted = ("email", "webhook", "unsubscribed", "bounced")
    assert [listed[card]["recipients"][k] for k in counted] == [2, 1, 0, 0]
    assert listed[card]["weekday"] == "mon" and listed[card]["timezone"] == "Europe/Berlin"
    assert listed[monthly]["day_of_month"] == 2 and listed[monthly]["send_at"] == "08:00"
    assert [listed[monthly]["recipients"][k] for k in counted] == [0, 1, 0, 0]
    assert "client.test" not in out and "slack" not in out
    code, out, _ = run_cli(monkeypatch, capsys, "scorecard", "list", tenant)
    assert "Monday summary" in out and "stripe.gross_volume[eur], stripe.charges" in out
    assert "2 emails, 1 webhook" in out and "client.test" not in out
    assert [e.details for e in _events(runtime, "scorecard.list")][-1] == {"scorecards": 2}

    for args, stdin, message in [
        ([*add, "--day", "3"], "", "--day is for --every monthly"),
        ([*add[:-4]], "", "at least one recipient"),
        ([*add, "--to", "nobody"], "", "--to 3 is not an email address"),
        ([*add, "--webhook-file", str(tmp_path / "missing.txt")], "", "cannot read"),
        ([*add, "--webhook-file", "-"], "not a url at all\n", "webhook URL 1 is not an http"),
        ([*add, "--webhook-file", "-"], "", "no webhook URL"),
        ([*add[:13], "--every", "daily", "--on", "tue"], "", "--on is for --every weekly"),
        ([*add, "--at", "8pm"], "", "HH:MM"),
        ([*add, "--period", "fortnight"], "", "invalid choice"),
        ([*add[:5], "--metric", "strpe.net", *add[9:]], "", 'no source "strpe"'),
    ]:
        code, out, err = run_cli(monkeypatch, capsys, *args, stdin=stdin)
        assert code == 2 and out == "" and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
        assert "not a url at all" not in err
    with runtime.db.session() as session:
        assert len(config.list_scorecards(session, tenant)) == 2

    code, out, err = run_cli(monkeypatch, capsys, "scorecard", "remove", monthly)
    assert code == 0 and f"removed scorecard {monthly}" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "scorecard", "remove", monthly)
    assert code == 2 and "No scorecard" in err
    everything = json.dumps([e.as_json() for e in _events(runtime, None)])
    assert "client.test" not in everything and "slack" not in everything


def test_alert_commands_end_to_end(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime)
    base = ["alert", "add", tenant]
    to = ["--to", "ana@client.test"]
    ids = {}
    for key, args in {
        "below": ["stripe.charges", "--below", "10"],
        "above": ["stripe.gross_volume[eur]", "--above", "2k", "--window", "7"],
        "change": ["github.stars", "--change", "20%"],
        "anomaly": ["rest.signups", "--anomaly", "--sensitivity", "3"],
    }.items():
        code, out, err = run_cli(monkeypatch, capsys, *base, *args, *to)
        assert code == 0, err
        ids[key] = out.strip().splitlines()[-1]
        assert "client.test" not in out + err
    events = _events(runtime, "alert.add")
    assert [e.details["alert_id"] for e in events] == list(ids.values())
    assert events[0].details == {"alert_id": ids["below"], "emails": 1, "webhooks": 0}

    code, out, err = run_cli(monkeypatch, capsys, "alert", "list", tenant, "--json")
    assert code == 0, err
    listed = {item["id"]: item for item in json.loads(out)}
    assert listed[ids["above"]]["threshold"] == 2000 and listed[ids["above"]]["window_days"] == 7
    assert listed[ids["change"]]["threshold"] == 20
    assert listed[ids["anomaly"]]["threshold"] == 3 and listed[ids["anomaly"]]["state"] == "ok"
    assert listed[ids["below"]]["description"] == "stripe.charges below 10 (the last day)"
    code, out, _ = run_cli(monkeypatch, capsys, "alert", "list", tenant)
    assert "stripe.charges below 10 (the last day)" in out and "1 email" in out
    assert "client.test" not in out

    for args, message in [
        (["stripe.charges", *to], "give one of --above, --below, --change or --anomaly"),
        (["stripe.charges", "--above", "1", "--below", "2", *to], "only one of"),
        (["stripe.charges", "--above", "1", "--sensitivity", "2", *to], "--sensitivity is for"),
        (["stripe.charges", "--above", "lots", *to], "not a number"),
        (["stripe.charges", "--change", "-5", *to], "positive"),
        (["stripe.charges", "--anomaly", "--window", "7", *to], "single days"),
        (["stripe.charges", "--above", "1", "--window", "3", *to], "invalid choice"),
        (["stripe.charges", "--above", "1"], "at least one recipient"),
    ]:
        code, out, err = run_cli(monkeypatch, capsys, *base, *args)
        assert code == 2 and out == "" and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1

    code, out, err = run_cli(monkeypatch, capsys, "alert", "remove", ids["change"])
    assert code == 0 and f"removed alert {ids['change']}" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "alert", "remove", ids["change"])
    assert code == 2 and "No alert" in err


def test_the_dashboard_link_in_messages_is_opted_in_and_audited(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("tenant", "set", tenant, "--link-in-messages", "on", "--reason", "T-9"),
    )
    assert code == 0, err
    assert "link in messages on" in out and "/d/" not in out + err
    (event,) = _events(runtime, "tenant.link-in-messages")
    assert (event.tenant_id, event.reason) == (tenant, "T-9")
    with runtime.db.session() as session:
        link_id = session.get(TenantSettings, tenant).message_link_id
        assert event.details == {"on": True, "link_id": link_id}
        assert config.message_link_url(session, runtime.keys, tenant, runtime.settings)
    code, out, err = run_cli(
        monkeypatch, capsys, "tenant", "set", tenant, "--link-in-messages", "off"
    )
    assert code == 0 and "link in messages off" in out, err
    with runtime.db.session() as session:
        assert config.message_link_url(session, runtime.keys, tenant, runtime.settings) is None
    # a change of locale alone records nothing
    code, out, err = run_cli(monkeypatch, capsys, "tenant", "set", tenant, "--locale", "de")
    assert code == 0, err
    assert len(_events(runtime, "tenant.link-in-messages")) == 2
    code, out, err = run_cli(
        monkeypatch, capsys, "tenant", "set", tenant, "--timezone", "Mars/Base"
    )
    assert code == 2 and "not an IANA time zone" in err and len(err.splitlines()) == 1


def test_notifications_list_shows_outcomes_never_addresses(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime)
    other = add_tenant(runtime, "Other Co")
    with runtime.db.session() as session:
        card = scorecard(session, runtime.keys, tenant)
        sent = _delivery(session, tenant, card, "sent")
        failed = _delivery(session, other, card, "retrying")
        row = session.get(NotificationDelivery, failed)
        row.attempts, row.error = 2, "smtp 451"
    code, out, err = run_cli(monkeypatch, capsys, "notifications", "list", "--json")
    assert code == 0, err
    rows = {item["id"]: item for item in json.loads(out)}
    assert set(rows) == {sent, failed}
    assert rows[failed]["status"] == "retrying" and rows[failed]["attempts"] == 2
    assert rows[failed]["error"] == "smtp 451" and rows[failed]["tenant_id"] == other
    assert rows[sent]["when"] == NOW.isoformat() and rows[sent]["kind"] == "scorecard"
    assert "client.test" not in out
    (event,) = _events(runtime, "notifications.list")
    assert (event.tenant_id, event.details) == (None, {"deliveries": 2, "tenants": 2})
    code, out, err = run_cli(
        monkeypatch, capsys, "notifications", "list", "--tenant", other, "--status", "retrying"
    )
    assert code == 0, err
    assert failed in out and sent not in out and "smtp 451" in out and "attempts 2" in out
    assert _events(runtime, "notifications.list")[-1].details == {"deliveries": 1}
    code, out, err = run_cli(monkeypatch, capsys, "notifications", "list", "--limit", "0")
    assert code == 2 and "--limit" in err


# -- review fixes: what repeats, what is malformed, what adds up currencies ----------------

FITS = {
    "daily": {"yesterday", "last_7_days", "last_30_days", "week_to_date", "month_to_date"},
    "weekly": {"last_week", "last_7_days", "week_to_date", "last_30_days", "month_to_date"},
    "monthly": {"last_month", "month_to_date", "last_30_days"},
}


def test_a_cadence_takes_only_periods_that_do_not_repeat_the_same_figures(runtime):
    tenant = add_tenant(runtime)
    when = {"daily": {}, "weekly": {"weekday": 0}, "monthly": {"day_of_month": 1}}
    for cadence, fits in FITS.items():
        for period in schedule.PERIODS:
            kwargs = {"cadence": cadence, "period": period, "weekday": None, **when[cadence]}
            if period in fits:
                with runtime.db.session() as session:
                    config.remove_scorecard(
                        session, scorecard(session, runtime.keys, tenant, **kwargs)
                    )
                continue
            shown = ", ".join(p for p in schedule.PERIODS if p in fits)
            with pytest.raises(InvalidInput) as refused, runtime.db.session() as session:
                scorecard(session, runtime.keys, tenant, **kwargs)
            message = str(refused.value)
            assert f"--every {cadence}" in message and period in message, message
            assert f"fits {shown}." in message and "\n" not in message
    with runtime.db.session() as session:
        assert config.list_scorecards(session, tenant) == []


@pytest.mark.parametrize(
    "ref", ["stripe.gross_volume[", "stripe.gross_volume[eur", "stripe.", "stripe.charges)"]
)
def test_a_malformed_metric_ref_gets_a_clear_message(runtime, ref):
    tenant = add_tenant(runtime)
    expected = "is not a metric such as stripe.charges or stripe.gross_volume[eur]"
    with pytest.raises(InvalidInput) as refused, runtime.db.session() as session:
        scorecard(session, runtime.keys, tenant, metrics=[ref])
    assert expected in str(refused.value) and "position" not in str(refused.value)
    with pytest.raises(InvalidInput) as refused, runtime.db.session() as session:
        config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric=ref,
            condition="above",
            threshold=1,
            emails=["ana@client.test"],
        )
    assert expected in str(refused.value) and "position" not in str(refused.value)


def test_an_alert_on_money_names_its_currency(runtime):
    tenant = add_tenant(runtime)
    add = lambda metric: config.add_alert(  # noqa: E731
        session,
        runtime.keys,
        tenant,
        metric=metric,
        condition="above",
        threshold=1000,
        emails=["ana@client.test"],
    )
    for metric in ("stripe.gross_volume", "stripe.refunds"):
        with pytest.raises(InvalidInput) as refused, runtime.db.session() as session:
            add(metric)
        message = str(refused.value)
        assert "currencies" in message and f"{metric}[usd]" in message, message
    with runtime.db.session() as session:
        assert config.list_alerts(session, tenant) == []
        add("stripe.gross_volume[eur]")
        add("stripe.charges")  # a count: no currency
        # a scorecard splits money per currency: no currency needed
        scorecard(session, runtime.keys, tenant, metrics=["stripe.gross_volume"])


# -- review fixes: time zone and link ------------------------------------------------------


def test_a_time_zone_change_does_not_skip_a_scorecard_already_due(runtime):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        waiting = scorecard(session, runtime.keys, tenant)
        due = scorecard(session, runtime.keys, tenant, name="Due")
        session.get(Scorecard, due).next_due_at = at(2026, 11, 30, 8)  # not sent yet
    with runtime.db.session() as session:
        tenant_settings.update_settings(session, tenant, timezone="Europe/Berlin")
    with runtime.db.session() as session:
        assert config.get_scorecard(session, due).next_due_at == at(2026, 11, 30, 8)
        assert config.get_scorecard(session, waiting).next_due_at == at(2026, 12, 7, 7)


def test_a_rotated_message_link_is_replaced_when_turned_on_again(runtime):
    tenant = add_tenant(runtime)
    app = runtime.settings
    with runtime.db.session() as session:
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    with runtime.db.session() as session:
        first = session.get(TenantSettings, tenant).message_link_id
        links.rotate_link(session, first)  # `writevue link rotate`: the kept token is stale
    with runtime.db.session() as session:
        assert config.message_link_url(session, runtime.keys, tenant, app) is None
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    with runtime.db.session() as session:
        url = config.message_link_url(session, runtime.keys, tenant, app)
        assert url is not None
        second = session.get(TenantSettings, tenant).message_link_id
        assert second != first
        states = {item.id: item.state() for item in links.list_links(session, tenant)}
        # the rotated one is revoked: no second live "in messages" link nobody uses
        assert states == {first: "revoked", second: "live"}
        assert links.resolve_token(session, url.rsplit("/", 1)[1]).id == second


# -- review fixes: pause, resume, recipients -----------------------------------------------


def test_pausing_and_resuming_a_scorecard_and_an_alert(runtime):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(
            session, runtime.keys, tenant, period="yesterday", cadence="daily", weekday=None
        )
        rule = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=1,
            emails=["ana@client.test"],
        )
    with runtime.db.session() as session:
        assert config.pause_scorecard(session, card, now=NOW).paused is True
        assert config.pause_scorecard(session, card, now=NOW).paused is True  # stays paused
        assert config.pause_alert(session, rule, now=NOW).paused is True
    with runtime.db.session() as session:
        assert config.due_scorecards(session, at(2026, 12, 20)) == []
        assert config.list_alerts(session, tenant)[0].paused is True
        # resumed a week later: the next send from then, not the missed ones
        resumed = config.resume_scorecard(session, card, now=at(2026, 12, 10, 9))
        assert resumed.paused is False and resumed.next_due_at == at(2026, 12, 11, 8)
        assert config.resume_alert(session, rule).paused is False
    with runtime.db.session() as session:
        assert config.due_scorecards(session, at(2026, 12, 11, 8)) == [
            (card, tenant, at(2026, 12, 11, 8))
        ]
        assert config.get_alert(session, rule).paused is False
        with pytest.raises(NotFound, match="scorecard list"):
            config.pause_scorecard(session, str(uuid.uuid4()))
        with pytest.raises(NotFound, match="alert list"):
            config.resume_alert(session, str(uuid.uuid4()))


def _addresses(session, keys, **subject) -> list[str]:
    rows = session.scalars(
        select(NotificationRecipient).filter_by(**subject).order_by(NotificationRecipient.id)
    )
    return sorted(
        keys.decrypt_text(r.address_ct, config.recipient_binding(r.tenant_id, r.id)) for r in rows
    )


def test_recipients_are_added_and_removed_by_address(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    hook, other_hook = webhook_url(), webhook_url()
    with runtime.db.session() as session:
        card = scorecard(
            session, runtime.keys, tenant, emails=["ana@client.test", "ben@client.test"]
        )
        rule = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=1,
            webhooks=[hook],
        )
        ben = next(
            r.id
            for r in config.active_recipients(session, runtime.keys, scorecard_id=card)
            if r.address.startswith("ben")
        )
        queued = _delivery(session, tenant, card, "pending")
        session.get(NotificationDelivery, queued).recipient_id = ben
        others = _delivery(session, tenant, card, "pending")
    with runtime.db.session() as session:
        change = config.change_recipients(
            session,
            runtime.keys,
            scorecard_id=card,
            add_emails=["cy@client.test", "ANA@client.test"],
            add_webhooks=[hook],
            remove_emails=["Ben@Client.test"],
        )
        assert (change.added, change.already, change.removed) == (2, 1, 1)
        assert "client.test" not in repr(change) and hook not in repr(change)
    with runtime.db.session() as session:
        assert _addresses(session, runtime.keys, scorecard_id=card) == sorted(
            ["ana@client.test", "cy@client.test", hook]
        )
        info = config.get_scorecard(session, card)
        assert (info.emails, info.webhooks) == (2, 1)
        # what was queued for the removed address is cancelled; the rest goes out
        assert session.get(NotificationDelivery, queued).status == "cancelled"
        assert session.get(NotificationDelivery, queued).message_ct is None
        assert session.get(NotificationDelivery, others).status == "pending"
        change = config.change_recipients(
            session,
            runtime.keys,
            alert_id=rule,
            add_emails=["dee@client.test"],
            remove_webhooks=[hook],
        )
        assert (change.added, change.removed) == (1, 1)
    with runtime.db.session() as session:
        assert _addresses(session, runtime.keys, alert_id=rule) == ["dee@client.test"]
        # the scorecard still has its webhook: removing from the alert touched only the alert
        assert hook in _addresses(session, runtime.keys, scorecard_id=card)
    bad = [
        ({"remove_emails": ["zed@client.test"]}, "--remove-to 1 is not a recipient"),
        ({"remove_webhooks": [other_hook]}, "webhook URL 1 to remove is not a recipient"),
        ({"add_emails": ["nope"]}, "--add-to 1 is not an email address"),
        ({"add_webhooks": ["ftp://x.test/"]}, "webhook URL 1 is not an http"),
        ({}, "Give an address to add or remove"),
        (
            {"add_emails": ["eve@client.test"], "remove_emails": ["eve@client.test"]},
            "both added and removed",
        ),
        (
            {"remove_emails": ["ana@client.test", "cy@client.test"], "remove_webhooks": [hook]},
            "at least one recipient",
        ),
        (
            {"add_emails": [f"p{n}@client.test" for n in range(config.MAX_RECIPIENTS)]},
            f"at most {config.MAX_RECIPIENTS} recipients",
        ),
    ]
    for kwargs, message in bad:
        with pytest.raises(InvalidInput, match=message) as refused, runtime.db.session() as s:
            config.change_recipients(s, runtime.keys, scorecard_id=card, **kwargs)
        assert "client.test" not in str(refused.value) and "slack" not in str(refused.value)
    with runtime.db.session() as session:
        assert _addresses(session, runtime.keys, scorecard_id=card) == sorted(
            ["ana@client.test", "cy@client.test", hook]
        )
        with pytest.raises(ValueError, match="one of"):
            config.change_recipients(session, runtime.keys, add_emails=["a@b.test"])
        with pytest.raises(NotFound, match="scorecard list"):
            config.change_recipients(
                session, runtime.keys, scorecard_id=str(uuid.uuid4()), add_emails=["a@b.test"]
            )


def test_an_unsubscribed_recipient_added_again_stays_unsubscribed(runtime):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(
            session, runtime.keys, tenant, emails=["ana@client.test", "ben@client.test"]
        )
    with runtime.db.session() as session:
        for row in session.scalars(select(NotificationRecipient)):
            row.unsubscribed_at = NOW
            break
    with runtime.db.session() as session:
        change = config.change_recipients(
            session, runtime.keys, scorecard_id=card, add_emails=["ana@client.test"]
        )
        assert (change.added, change.already) == (0, 1)
        assert config.get_scorecard(session, card).unsubscribed == 1


# -- review fixes: the commands ------------------------------------------------------------


def test_pause_resume_and_recipients_commands(runtime, monkeypatch, capsys, tmp_path):
    tenant = add_tenant(runtime)
    hook = webhook_url()
    with runtime.db.session() as session:
        card = scorecard(session, runtime.keys, tenant)
        rule = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=1,
            emails=["ana@client.test"],
        )
    code, out, err = run_cli(monkeypatch, capsys, "scorecard", "pause", card)
    assert code == 0 and f"paused scorecard {card}" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "scorecard", "list", tenant)
    assert "PAUSED" in out
    code, out, err = run_cli(monkeypatch, capsys, "scorecard", "resume", card)
    assert code == 0 and f"resumed scorecard {card}; next Mon " in out, err
    code, out, err = run_cli(monkeypatch, capsys, "alert", "pause", rule)
    assert code == 0 and f"paused alert {rule}" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "alert", "list", tenant, "--json")
    assert json.loads(out)[0]["paused"] is True
    code, out, err = run_cli(monkeypatch, capsys, "alert", "resume", rule)
    assert code == 0 and f"resumed alert {rule}" in out, err

    hooks = tmp_path / "hooks.txt"
    hooks.write_text(hook + "\n")
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("scorecard", "recipients", card, "--add-to", "ben@client.test"),
        *("--remove-to", "ana@client.test", "--add-webhook-file", str(hooks)),
        *("--reason", "T-3"),
    )
    assert code == 0, err
    assert "2 added, 1 removed; now 1 email, 1 webhook" in out
    assert "client.test" not in out + err and hook not in out + err
    (event,) = _events(runtime, "scorecard.recipients")
    assert (event.tenant_id, event.reason) == (tenant, "T-3")
    assert event.details == {"scorecard_id": card, "added": 2, "removed": 1}
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("scorecard", "recipients", card, "--remove-webhook-file", "-"),
        stdin=hook + "\n",
    )
    assert code == 0 and "0 added, 1 removed; now 1 email, 0 webhooks" in out, err
    code, out, err = run_cli(
        monkeypatch, capsys, "alert", "recipients", rule, "--add-webhook-file", "-", stdin=hook
    )
    assert code == 0 and "1 added, 0 removed; now 1 email, 1 webhook" in out, err
    (event,) = _events(runtime, "alert.recipients")
    assert event.details == {"alert_id": rule, "added": 1, "removed": 0}
    for args, message in [
        (["scorecard", "recipients", card, "--remove-to", "zed@client.test"], "not a recipient"),
        (["scorecard", "recipients", card], "Give an address to add or remove"),
        (
            [
                *("scorecard", "recipients", card, "--add-webhook-file", "-"),
                *("--remove-webhook-file", "-"),
            ],
            "only one of them from stdin",
        ),
        (["alert", "pause", str(uuid.uuid4())], "No alert"),
        (["scorecard", "resume", "nope"], "not a valid id"),
    ]:
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and out == "" and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "client.test" not in err
    with runtime.db.session() as session:
        assert _addresses(session, runtime.keys, scorecard_id=card) == ["ben@client.test"]
    everything = json.dumps([e.as_json() for e in _events(runtime, None)])
    assert "client.test" not in everything and "slack" not in everything


def test_commands_refuse_repeating_periods_and_malformed_refs_in_one_line(
    runtime, monkeypatch, capsys
):
    tenant = add_tenant(runtime)
    base = [*("scorecard", "add", tenant, "--name", "S", "--to", "ana@client.test")]
    for args, message in [
        (
            [*base, "--metric", "stripe.charges", "--period", "last_week"],
            "--every daily repeats the same figures",
        ),
        (
            [*base, "--metric", "stripe.gross_volume[", "--period", "yesterday"],
            '"stripe.gross_volume[" is not a metric such as',
        ),
    ]:
        code, out, err = run_cli(
            monkeypatch, capsys, *args, "--compare", "previous", "--every", "daily"
        )
        assert code == 2 and out == "" and message in err, err
        assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("alert", "add", tenant, "stripe.gross_volume", "--above", "1k"),
        *("--to", "ana@client.test"),
    )
    assert code == 2 and "stripe.gross_volume[usd]" in err and len(err.splitlines()) == 1


def test_notifications_list_names_the_subject_and_shows_minutes(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(session, runtime.keys, tenant)
        rule = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=10,
            emails=["ana@client.test"],
        )
        gone = scorecard(session, runtime.keys, tenant, name="Old one")
        sent = _delivery(session, tenant, card, "sent")
        session.get(NotificationDelivery, sent).sent_at = at(2026, 12, 3, 12, 0, 7, 123456)
        fired = _delivery(session, tenant, rule, "pending", kind="alert")
        tested = _delivery(session, tenant, rule, "pending", kind="test")
        removed = _delivery(session, tenant, gone, "sent")
    with runtime.db.session() as session:
        config.remove_scorecard(session, gone)
    code, out, err = run_cli(monkeypatch, capsys, "notifications", "list", "--tenant", tenant)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "Monday summary" in lines[sent] and "2026-12-03 12:00 UTC" in lines[sent]
    assert "12:00:07" not in out and ".123456" not in out
    assert "stripe.charges below 10 (the last day)" in lines[fired]
    assert "test: stripe.charges below 10" in lines[tested]
    assert "(removed)" in lines[removed]
    code, out, err = run_cli(
        monkeypatch, capsys, "notifications", "list", "--tenant", tenant, "--json"
    )
    rows = {row["id"]: row for row in json.loads(out)}
    assert rows[sent]["subject"] == "Monday summary" and rows[removed]["subject"] == "(removed)"


def test_a_preview_never_holds_the_live_dashboard_link(runtime, monkeypatch, capsys, tmp_path):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(session, runtime.keys, tenant)
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    with runtime.db.session() as session:
        url = config.message_link_url(session, runtime.keys, tenant, runtime.settings)
    token = url.rsplit("/", 1)[1]
    out_file = tmp_path / "monday.eml"
    out_file.write_text("an older preview")
    out_file.chmod(0o644)  # os.open's mode does not tighten a file that exists
    code, out, err = run_cli(
        monkeypatch, capsys, "scorecard", "preview", card, "--out", str(out_file)
    )
    assert code == 0, err
    text = out_file.read_text()
    assert token not in text and token not in out + err
    placeholder = runtime.settings.dashboard_url(config.PREVIEW_LINK)
    message = email.message_from_string(text, policy=email.policy.default)
    assert placeholder in message.get_body(preferencelist=("plain",)).get_content()
    assert out_file.stat().st_mode & 0o777 == 0o600
    html = tmp_path / "monday.html"
    code, out, err = run_cli(monkeypatch, capsys, "scorecard", "preview", card, "--out", str(html))
    assert code == 0 and token not in html.read_text(), err
    assert html.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def smtp_peer(tmp_path):
    from support import start_smtp_server

    peer = start_smtp_server(tmp_path / "smtp")
    yield peer
    peer.stop()


def test_send_now_and_alert_test_are_audited_and_say_when_nothing_went_out(
    runtime, monkeypatch, capsys, smtp_peer
):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        card = scorecard(session, runtime.keys, tenant)
        rule = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=10,
            emails=["ana@client.test"],
        )
    env = {"WRITEVUE_SMTP_URL": smtp_peer.url}
    code, out, err = run_cli(
        monkeypatch, capsys, "scorecard", "send-now", card, "--reason", "T-5", env=env
    )
    assert code == 0 and "1 sent" in out, err
    (event,) = _events(runtime, "scorecard.send-now")
    assert (event.tenant_id, event.reason, event.details) == (tenant, "T-5", {"scorecard": card})
    code, out, err = run_cli(monkeypatch, capsys, "alert", "test", rule, env=env)
    assert code == 0, err
    assert "1 sent" in out and "tenants judged" not in out
    (event,) = _events(runtime, "alert.test")
    assert (event.tenant_id, event.details) == (tenant, {"alert": rule})
    assert len(smtp_peer.messages) == 2

    smtp_peer.fail("4xx")  # the server says "later": queued, retried by the sensor
    for args in (["scorecard", "send-now", card], ["alert", "test", rule]):
        code, out, err = run_cli(monkeypatch, capsys, *args, env=env)
        assert code != 0, (args, out)
        assert (
            err.strip()
            .splitlines()[-1]
            .endswith(
                "Not sent yet: queued; the notifications sensor retries it "
                "(writevue notifications list --status retrying)"
            )
        ), err
        assert len(err.strip().splitlines()) == 1
        assert "tenants judged" not in out or args[0] == "scorecard"
    assert len(_events(runtime, "scorecard.send-now")) == 2
    assert len(_events(runtime, "alert.test")) == 2
    everything = json.dumps([e.as_json() for e in _events(runtime, None)])
    assert "client.test" not in everything


def test_commands_say_when_a_given_address_stays_off(runtime, monkeypatch, capsys):
    from writevue_pipelines.notifications import suppression

    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        for address, reason in (("ana@client.test", "unsubscribed"), ("bo@client.test", "bounced")):
            digest = suppression.address_hash(tenant, "email", address)
            suppression.suppress(session, tenant, "email", digest, reason)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("alert", "add", tenant, "stripe.charges", "--below", "1"),
        *("--to", "Ana@client.test", "--to", "bo@client.test", "--to", "cy@client.test"),
    )
    assert code == 0, err
    rule = out.strip()
    assert "2 recipients unsubscribed or bounced earlier and stay off" in err
    assert "client.test" not in out + err
    code, out, err = run_cli(
        monkeypatch, capsys, "alert", "recipients", rule, "--remove-to", "cy@client.test"
    )
    assert code == 0, err
    assert "0 added, 1 removed; now 2 emails, 0 webhooks (1 unsubscribed, 1 bounced)" in out
