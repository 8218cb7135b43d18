"""The outbox: messages rendered, queued once, sent over SMTP and webhooks, every outcome
recorded and audited.

Real peers: aiosmtpd in its own process on loopback (plain, STARTTLS with AUTH, SMTPS with
a self-signed CA), an HTTP receiver on loopback, SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import uuid

import pytest
from sqlalchemy import select
from support import add_tenant, remember_secret, start_smtp_server, start_webhook_receiver

from writevue_pipelines import registry
from writevue_pipelines.errors import InvalidInput
from writevue_pipelines.models import (
    NotificationDelivery,
    NotificationRecipient,
    NotificationSuppression,
    Scorecard,
)
from writevue_pipelines.notifications import delivery, messages, smtp, suppression
from writevue_pipelines.notifications.content import (
    AlertContent,
    BrandInfo,
    Figure,
    ScorecardContent,
)
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import ConfigError, Settings
from writevue_pipelines.vault import Binding

NOW = dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)


# -- what the tests send ------------------------------------------------------------------------


def scorecard(tenant_id: str, scorecard_id: str, **changes) -> ScorecardContent:
    figures = (
        Figure(
            ref="stripe.gross_volume",
            dimension="",
            label="Gross volume (EUR)",
            value=12_900.0,
            value_text="€12.9k",
            previous=11_486.0,
            previous_text="€11.5k",
            change=0.123,
            change_text="+12.3% vs previous period",
            sentiment="good",
            series=(1500.0, 1800.0, None, 2100.0, 1900.0, 2500.0, 3100.0),
            goal_text="€31k of €50k (62%) · on track",
        ),
        Figure(
            ref="stripe.refunds",
            dimension="",
            label="Refunds",
            value=4.0,
            value_text="4",
            change=1.0,
            change_text="+100% vs previous period",
            sentiment="bad",
            series=(0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0),
        ),
    )
    values = dict(
        tenant_id=tenant_id,
        scorecard_id=scorecard_id,
        title="Monday summary",
        tenant_name="Acme <Ltd> & Co",
        period_start=dt.date(2026, 11, 23),
        period_end=dt.date(2026, 11, 29),
        period_label="Mon 23 Nov to Sun 29 Nov 2026",
        comparison_label="previous period",
        figures=figures,
    )
    values.update(changes)
    return ScorecardContent(**values)


def alert(tenant_id: str, alert_id: str, **changes) -> AlertContent:
    values = dict(
        tenant_id=tenant_id,
        alert_id=alert_id,
        tenant_name="Acme Ltd",
        label="Gross volume (EUR)",
        condition="below",
        day=dt.date(2026, 12, 3),
        value=1204.0,
        sentence="Gross volume (EUR) was €1,204 on Thu 3 Dec 2026, below your threshold of €2,000.",
        series=(2500.0, 2600.0, 2400.0, 1204.0),
    )
    values.update(changes)
    return AlertContent(**values)


def new_scorecard(runtime: Runtime, tenant_id: str) -> str:
    """A scorecard row (config.add_scorecard's job; here only what deliveries refer to)."""
    with runtime.db.session() as session:
        row = Scorecard(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            name="Monday summary",
            metrics=["stripe.gross_volume"],
            period="last_week",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            send_at="08:00",
            next_due_at=NOW,
        )
        session.add(row)
    return row.id


def add_recipient(
    runtime: Runtime, tenant_id: str, channel: str, address: str, *, scorecard_id=None
) -> delivery.Recipient:
    """A recipient row, its address encrypted as config.py stores it."""
    recipient_id = str(uuid.uuid4())
    with runtime.db.session() as session:
        session.add(
            NotificationRecipient(
                id=recipient_id,
                tenant_id=tenant_id,
                scorecard_id=scorecard_id,
                channel=channel,
                address_ct=runtime.keys.encrypt(
                    address, Binding(tenant_id, None, f"recipient.{recipient_id}")
                ),
            )
        )
    return delivery.Recipient(recipient_id, channel, address)


def queue(runtime, tenant_id, subject_id, content, recipients, *, episode="w48", kind=None, at=NOW):
    with runtime.db.session() as session:
        return delivery.enqueue(
            session,
            runtime.keys,
            tenant_id=tenant_id,
            kind=kind or ("scorecard" if isinstance(content, ScorecardContent) else "alert"),
            subject_id=subject_id,
            episode=episode,
            scheduled_for=at,
            content=content,
            recipients=recipients,
            settings=runtime.settings,
        )


def rows(runtime: Runtime, tenant_id: str | None = None) -> list[NotificationDelivery]:
    with runtime.db.session() as session:
        query = select(NotificationDelivery).order_by(NotificationDelivery.created_at)
        if tenant_id is not None:
            query = query.where(NotificationDelivery.tenant_id == tenant_id)
        return list(session.scalars(query))


def with_settings(runtime: Runtime, **env: str) -> Runtime:
    """The same warehouse and keys, with these settings on top of the runtime's."""
    base = {"WRITEVUE_HOME": str(runtime.settings.home)}
    if runtime.settings.database_url_override:
        base["WRITEVUE_DATABASE_URL"] = runtime.settings.database_url_override
    other = Runtime(Settings.from_env({**base, **env}))
    other.__dict__["db"] = runtime.db
    return other


def email_address() -> str:
    return remember_secret(f"client-{uuid.uuid4().hex[:10]}@example.test")


@pytest.fixture
def mail(tmp_path):
    with start_smtp_server(tmp_path / "smtp") as peer:
        yield peer


@pytest.fixture
def hooks():
    with start_webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
def world(any_runtime, mail):
    """A tenant with a scorecard, one email recipient, and a runtime mailing to ``mail``."""
    runtime = with_settings(any_runtime, WRITEVUE_SMTP_URL=mail.url, WRITEVUE_NOTIFY_TIMEOUT_S="2")
    tenant_id = add_tenant(runtime)
    card = new_scorecard(runtime, tenant_id)
    return runtime, tenant_id, card


# -- queuing ------------------------------------------------------------------------------------


def test_a_message_is_queued_once_per_recipient_and_stored_encrypted(world, hooks):
    runtime, tenant_id, card = world
    address = email_address()
    people = [
        add_recipient(runtime, tenant_id, "email", address, scorecard_id=card),
        add_recipient(runtime, tenant_id, "webhook", hooks.url(), scorecard_id=card),
    ]
    content = scorecard(tenant_id, card)
    assert queue(runtime, tenant_id, card, content, people) == 2
    assert queue(runtime, tenant_id, card, content, people) == 0  # a scheduler asking twice
    assert queue(runtime, tenant_id, card, content, people, episode="w49") == 2
    found = rows(runtime, tenant_id)
    assert len(found) == 4
    first = found[0]
    expected = hashlib.sha256(f"scorecard|{card}|w48|{people[0].id}".encode()).hexdigest()
    assert {row.idempotency_key for row in found} >= {expected}
    for row in found:
        assert row.status == "pending" and row.attempts == 0
        assert row.message_ct and address.encode() not in row.message_ct
        assert b"Gross volume" not in row.message_ct
        assert len(row.unsubscribe_sha256) == 64
    assert first.scheduled_for == NOW


def test_a_queued_message_is_stored_compressed_and_one_stored_plain_still_sends(world, mail):
    """A scorecard's stored content (its figures with their series, some 5 KB of JSON)
    is compressed before it is encrypted: a run queuing a thousand writes a fifth of the
    pages. A message queued before that, its JSON encrypted as it is, is still sent."""
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address()) for _ in range(2)]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    with runtime.db.session() as session:
        queued = session.scalars(select(NotificationDelivery)).all()
        assert len(queued) == 2
        for row in queued:
            binding = Binding(tenant_id, None, f"delivery.{row.id}")
            stored = runtime.keys.decrypt(row.message_ct, binding)
            text = delivery.unpack(stored)
            assert json.loads(text)["content"]["title"] == "Monday summary"
            assert len(stored) < len(text) * 3 / 4  # this small one; a 15-figure one fivefold
        # the last as an earlier version stored it: the JSON itself, encrypted
        assert text.startswith(b"{")
        row.message_ct = runtime.keys.encrypt(text, binding)
    assert delivery.send_due(runtime, now=NOW).counts == {"sent": 2}
    texts = [received.part("text/plain") for received in mail.messages]
    assert len(texts) == 2 and all("Gross volume (EUR): €12.9k" in t for t in texts)


def test_an_unknown_kind_or_channel_is_refused(world):
    runtime, tenant_id, card = world
    people = [delivery.Recipient(str(uuid.uuid4()), "pigeon", "x")]
    with pytest.raises(InvalidInput):
        queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    with pytest.raises(InvalidInput):
        queue(runtime, tenant_id, card, scorecard(tenant_id, card), [], kind="newsletter")
    assert rows(runtime) == []


# -- sending ------------------------------------------------------------------------------------


def test_a_scorecard_reaches_its_email_and_webhook_recipients_once(world, mail, hooks):
    runtime, tenant_id, card = world
    address = email_address()
    url = hooks.url()
    people = [
        add_recipient(runtime, tenant_id, "email", address, scorecard_id=card),
        add_recipient(runtime, tenant_id, "webhook", url, scorecard_id=card),
    ]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    report = delivery.send_due(runtime, now=NOW, run_id="run-1")
    assert report.counts == {"sent": 2}
    assert report.by_tenant == {tenant_id: {"sent": 2}}
    assert any("2 sent" in line for line in report.lines())

    (received,) = mail.messages
    assert received.rcpt_tos == [address]
    message = received.message
    assert message["To"] == address
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Monday summary · Acme <Ltd> & Co · Mon 23 Nov to Sun 29 Nov 2026"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = message["List-Unsubscribe"]
    assert unsubscribe.startswith(f"<{runtime.settings.dashboard_base_url}/unsubscribe/")
    (row_email,) = [r for r in rows(runtime) if r.channel == "email"]
    assert message["Message-ID"].strip() == f"<{row_email.idempotency_key}@localhost>"
    text = received.part("text/plain")
    assert "Gross volume (EUR): €12.9k" in text and "+12.3% vs previous period" in text
    assert "€31k of €50k (62%) · on track" in text
    assert unsubscribe.strip("<>") in text
    html = received.part("text/html")
    assert "Acme &lt;Ltd&gt; &amp; Co" in html and "<Ltd>" not in html
    assert "<script" not in html.lower() and "<img" not in html.lower()  # no logo given
    assert "http" not in html.replace(unsubscribe.strip("<>"), "")  # nothing to fetch
    assert "dashboard" not in text.lower()  # no link: the tenant did not opt in

    (hook,) = hooks.requests
    assert hook.path == url.split(str(hooks.port), 1)[1]
    (row_hook,) = [r for r in rows(runtime) if r.channel == "webhook"]
    assert hook.headers["Idempotency-Key"] == row_hook.idempotency_key
    payload = hook.json()
    assert "Gross volume (EUR)" in payload["text"] and payload["blocks"]
    assert "€12.9k" in json.dumps(payload, ensure_ascii=False)

    for row in rows(runtime):
        assert (row.status, row.attempts, row.message_ct, row.run_id) == ("sent", 1, None, "run-1")
        assert row.sent_at == NOW
    assert delivery.send_due(runtime, now=NOW + dt.timedelta(hours=1)).counts == {}
    assert len(mail.messages) == 1 and len(hooks.requests) == 1

    with runtime.db.session() as session:
        events = registry.list_audit(session, tenant_id, action="notification.send")
        details = [e.details for e in events]
    assert sorted(d["channel"] for d in details) == ["email", "webhook"]
    assert all(e.actor == "writevue-notifications" for e in events)
    assert all(d["status"] == "sent" and d["kind"] == "scorecard" for d in details)
    assert address not in json.dumps(details) and url not in json.dumps(details)


def test_one_click_unsubscribe_is_a_plain_url_on_the_wire(any_runtime, mail):
    """A mail client reads List-Unsubscribe from the raw header: an RFC 2047 encoded word
    (=?utf-8?q?=3Chttps...) is not a URL to it, however long the dashboard's address."""
    base = "https://dashboards.agency-name.example.com"
    runtime = with_settings(any_runtime, WRITEVUE_SMTP_URL=mail.url, WRITEVUE_DASHBOARD_URL=base)
    tenant_id = add_tenant(runtime)
    card = new_scorecard(runtime, tenant_id)
    people = [add_recipient(runtime, tenant_id, "email", email_address(), scorecard_id=card)]
    content = alert(tenant_id, str(uuid.uuid4()))
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    queue(runtime, tenant_id, content.alert_id, content, people)
    assert delivery.send_due(runtime, now=NOW).counts == {"sent": 2}
    for received in mail.messages:
        raw = received.raw
        found = re.search(
            rb"\r?\nList-Unsubscribe: <"
            + re.escape(base.encode())
            + rb"/unsubscribe/([A-Za-z0-9_-]{43})>\r?\n(?![ \t])",
            raw,
        )
        assert found, raw.split(b"\n\r\n", 1)[0].decode()
        assert re.search(rb"\r?\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r?\n", raw)
        assert b"=?utf-8?q?=3Chttps" not in raw
        # the same token in the message's text, so either way stops the same messages
        assert found.group(1).decode() in received.part("text/plain")
        # other headers still folded within 78 characters where they can be
        header = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")
        for line in header.split(b"\n"):
            assert len(line) <= 78 or line.startswith(b"List-Unsubscribe: "), line
    preview = messages.preview(
        scorecard(tenant_id, card), unsubscribe_url=f"{base}/unsubscribe/{'x' * 43}"
    )
    assert f"\nList-Unsubscribe: <{base}/unsubscribe/{'x' * 43}>\n" in preview


def test_an_alert_with_a_brand_logo_and_a_dashboard_link(world, mail):
    runtime, tenant_id, _card = world
    address = email_address()
    people = [add_recipient(runtime, tenant_id, "email", address)]
    brand = BrandInfo(
        display_name="Agency & Partners", primary="#aa3300", logo=PNG, logo_type="image/png"
    )
    link = f"{runtime.settings.dashboard_base_url}/d/{remember_secret(uuid.uuid4().hex * 2)}"
    content = alert(tenant_id, str(uuid.uuid4()), brand=brand, dashboard_url=link)
    queue(runtime, tenant_id, content.alert_id, content, people, episode="2026-12-03")
    assert delivery.send_due(runtime, now=NOW).counts == {"sent": 1}
    (received,) = mail.messages
    message = received.message
    assert message["Subject"] == "Alert: Gross volume (EUR) · Acme Ltd"
    assert message["From"].startswith('"Agency & Partners"') or message["From"].startswith(
        "Agency & Partners"
    )
    html = received.part("text/html")
    assert "#aa3300" in html and 'src="cid:' in html
    (logo,) = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert logo.get_content() == PNG
    cid = html.split('src="cid:', 1)[1].split('"', 1)[0]
    assert f"<{cid}>" == logo["Content-ID"]
    assert link in received.part("text/plain") and link in html
    assert "below your threshold of €2,000." in received.part("text/plain")


def test_the_preview_is_the_email_an_operator_can_open():
    content = scorecard(str(uuid.uuid4()), str(uuid.uuid4()))
    text = messages.preview(content)
    assert text.startswith(("From:", "Subject:", "Content-Type:", "MIME-Version:", "To:"))
    assert "List-Unsubscribe:" in text and "multipart/alternative" in text
    assert "Monday summary" in text


def test_webhook_payload_is_slack_compatible_and_aggregates_only():
    content = scorecard(str(uuid.uuid4()), str(uuid.uuid4()))
    payload = messages.webhook_payload(content, unsubscribe_url="https://x.test/unsubscribe/t")
    assert set(payload) == {"text", "blocks"}
    kinds = [block["type"] for block in payload["blocks"]]
    assert kinds[0] == "header" and "section" in kinds and kinds[-1] == "context"
    body = json.dumps(payload, ensure_ascii=False)
    assert "Acme &lt;Ltd&gt; &amp; Co" in body  # Slack's escaping in mrkdwn
    assert "<https://x.test/unsubscribe/t|" in body
    assert len(payload["blocks"]) <= 50
    assert all(len(b["text"]["text"]) <= 150 for b in payload["blocks"] if b["type"] == "header")


# -- failures: recorded, retried, never lost or duplicated --------------------------------------


def test_a_temporary_smtp_refusal_is_retried_and_delivered_once(world, mail):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address(), scorecard_id=card)]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    mail.fail("4xx")
    assert delivery.send_due(runtime, now=NOW).counts == {"retrying": 1}
    (row,) = rows(runtime)
    assert (row.status, row.attempts, row.error) == ("retrying", 1, "smtp 451")
    assert row.next_attempt_at == NOW + dt.timedelta(minutes=2)
    assert row.message_ct is not None
    assert delivery.send_due(runtime, now=NOW + dt.timedelta(minutes=1)).counts == {}
    mail.fail(None)
    assert delivery.send_due(runtime, now=NOW + dt.timedelta(minutes=2)).counts == {"sent": 1}
    assert len(mail.messages) == 1
    (row,) = rows(runtime)
    assert (row.status, row.attempts, row.error) == ("sent", 2, None)
    with runtime.db.session() as session:
        statuses = [e.details["status"] for e in registry.list_audit(session, tenant_id)]
    assert statuses == ["retrying", "sent"]


def test_a_refused_recipient_bounces_and_the_others_still_get_theirs(world, mail):
    runtime, tenant_id, card = world
    gone, fine = email_address(), email_address()
    people = [
        add_recipient(runtime, tenant_id, "email", gone, scorecard_id=card),
        add_recipient(runtime, tenant_id, "email", fine, scorecard_id=card),
    ]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    mail.fail("5xx", only=[gone])
    assert delivery.send_due(runtime, now=NOW).counts == {"bounced": 1, "sent": 1}
    assert [m.rcpt_tos for m in mail.messages] == [[fine]]
    bounced = [r for r in rows(runtime) if r.status == "bounced"]
    assert [(r.error, r.message_ct, r.next_attempt_at) for r in bounced] == [
        ("smtp 550", None, None)
    ]
    mail.fail(None)
    assert delivery.send_due(runtime, now=NOW + dt.timedelta(hours=1)).counts == {}


def test_a_message_refused_after_data_bounces(world, mail):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address())]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    mail.fail("data5xx")
    assert delivery.send_due(runtime, now=NOW).counts == {"bounced": 1}
    assert rows(runtime)[0].error == "smtp 554"


def test_a_server_that_refuses_or_hangs_is_retried_then_given_up(world, mail):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address()) for _ in range(3)]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    mail.fail("refuse")
    now = NOW
    assert delivery.send_due(runtime, now=now).counts == {"retrying": 3}
    assert {r.error for r in rows(runtime)} == {"refused"}
    mail.fail("hang")
    for attempt in range(2, 6):
        now += dt.timedelta(minutes=2**attempt)
        report = delivery.send_due(runtime, now=now)
        assert report.counts == ({"failed": 3} if attempt == 5 else {"retrying": 3})
        # a hanging server costs one timeout per run, not one per message
        assert {r.error for r in rows(runtime)} == {"timeout"}
    for row in rows(runtime):
        assert (row.status, row.attempts, row.message_ct) == ("failed", 5, None)
    mail.fail(None)
    assert delivery.send_due(runtime, now=now + dt.timedelta(days=1)).counts == {}
    assert mail.messages == []


def test_mail_without_an_smtp_server_configured_waits_with_a_clear_error(any_runtime):
    runtime = any_runtime
    tenant_id = add_tenant(runtime)
    card = new_scorecard(runtime, tenant_id)
    people = [add_recipient(runtime, tenant_id, "email", email_address())]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    assert delivery.send_due(runtime, now=NOW).counts == {"retrying": 1}
    assert rows(runtime)[0].error == "WRITEVUE_SMTP_URL is not set"


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (503, "retrying", "http 503"),
        (429, "retrying", "http 429"),
        (408, "retrying", "http 408"),
        (404, "bounced", "http 404"),
        (410, "bounced", "http 410"),
        (400, "failed", "http 400"),
        ("hang", "retrying", "timeout"),
        ("refuse", "retrying", "refused"),
    ],
)
def test_a_failing_webhook_is_recorded(runtime, hooks, answer, status, error):
    runtime = with_settings(runtime, WRITEVUE_NOTIFY_TIMEOUT_S="1")
    tenant_id = add_tenant(runtime)
    content = alert(tenant_id, str(uuid.uuid4()))
    people = [add_recipient(runtime, tenant_id, "webhook", hooks.url())]
    queue(runtime, tenant_id, content.alert_id, content, people)
    hooks.fail(answer)
    assert delivery.send_due(runtime, now=NOW).counts == {status: 1}
    (row,) = rows(runtime)
    assert (row.status, row.error) == (status, error)
    assert (row.message_ct is None) == (status != "retrying")
    hooks.fail(None)
    later = delivery.send_due(runtime, now=NOW + dt.timedelta(minutes=2))
    assert later.counts == ({"sent": 1} if status == "retrying" else {})
    assert len([r for r in hooks.requests if r.headers.get("Idempotency-Key")]) == (
        (1 if status == "retrying" else 0) + (1 if isinstance(answer, int) else 0)
    )


def test_two_runs_at_once_never_send_one_message_twice(world, mail, hooks):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address()) for _ in range(12)]
    people += [add_recipient(runtime, tenant_id, "webhook", hooks.url()) for _ in range(6)]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    reports = []
    start = threading.Barrier(2)

    def run(name):
        start.wait()
        reports.append(delivery.send_due(runtime, now=NOW, run_id=name))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(r.counts.get("sent", 0) for r in reports) == 18
    assert sorted(m.rcpt_tos[0] for m in mail.messages) == sorted(
        p.address for p in people if p.channel == "email"
    )
    assert sorted(r.path for r in hooks.requests) == sorted(
        p.address.split(str(hooks.port), 1)[1] for p in people if p.channel == "webhook"
    )
    assert {r.attempts for r in rows(runtime)} == {1}


def test_a_row_left_sending_by_a_killed_run_is_retried(world, mail):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address())]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    with runtime.db.session() as session:
        row = session.scalars(select(NotificationDelivery)).one()
        row.status, row.attempts, row.next_attempt_at = "sending", 1, NOW
    assert delivery.send_due(runtime, now=NOW + dt.timedelta(minutes=10)).counts == {}
    report = delivery.send_due(runtime, now=NOW + dt.timedelta(minutes=16))
    assert report.counts == {"sent": 1} and report.recovered == 1
    (row,) = rows(runtime)
    assert (row.status, row.attempts) == ("sent", 2)


def test_a_claim_is_stamped_when_it_is_made_not_when_the_run_began(world, mail):
    """A run that began 20 minutes ago and claims a message now keeps it: another run's
    recovery of rows left "sending" by killed runs does not take it away."""
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address())]
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people, at=started)
    (row,) = rows(runtime)
    before = dt.datetime.now(dt.UTC)
    claimed = delivery._claim(runtime, row.id, started, "long-run")
    assert claimed is not None and claimed.next_attempt_at >= before
    report = delivery.send_due(runtime, run_id="other-run")
    assert (report.counts, report.recovered) == ({}, 0)
    assert mail.messages == []
    (row,) = rows(runtime)
    assert (row.status, row.run_id, row.attempts) == ("sending", "long-run", 1)


def suppressions(runtime, tenant_id=None) -> list[NotificationSuppression]:
    with runtime.db.session() as session:
        query = select(NotificationSuppression)
        if tenant_id is not None:
            query = query.where(NotificationSuppression.tenant_id == tenant_id)
        return list(session.scalars(query))


def test_a_bounce_stops_that_address_at_that_tenant(world, mail):
    """An SMTP 5xx suppresses the address (reason "bounced"): its other queued messages of
    the tenant are cancelled, and so is any later one; another tenant's go on."""
    runtime, acme, weekly = world
    monthly = new_scorecard(runtime, acme)
    globex = add_tenant(runtime, "Globex Corp", "ops@globex.test")
    gone = email_address()
    first = add_recipient(runtime, acme, "email", gone, scorecard_id=weekly)
    again = add_recipient(runtime, acme, "email", gone.upper(), scorecard_id=monthly)
    theirs = add_recipient(runtime, globex, "email", gone)
    queue(runtime, acme, weekly, scorecard(acme, weekly), [first])
    later = NOW + dt.timedelta(hours=1)
    queue(runtime, acme, monthly, scorecard(acme, monthly), [again], at=later)
    queue(runtime, globex, monthly, scorecard(globex, monthly), [theirs], at=later)
    with runtime.db.session() as session:
        hashes = {
            r.recipient_id: r.address_sha256 for r in session.scalars(select(NotificationDelivery))
        }
    digest = suppression.address_hash(acme, "email", gone)
    assert hashes[first.id] == hashes[again.id] == digest != hashes[theirs.id]
    assert gone.encode() not in digest.encode() and len(digest) == 64

    mail.fail("5xx", only=[gone])
    assert delivery.send_due(runtime, now=NOW).counts == {"bounced": 1}
    (stop,) = suppressions(runtime)
    assert (stop.tenant_id, stop.channel, stop.address_sha256, stop.reason) == (
        acme,
        "email",
        digest,
        "bounced",
    )
    by_recipient = {r.recipient_id: r for r in rows(runtime)}
    assert (by_recipient[again.id].status, by_recipient[again.id].message_ct) == ("cancelled", None)
    assert by_recipient[theirs.id].status == "pending"
    mail.fail(None)
    # queued after the bounce (a recipient row that knows nothing of it): cancelled at send
    queue(runtime, acme, weekly, scorecard(acme, weekly), [first], episode="w49", at=later)
    report = delivery.send_due(runtime, now=later)
    assert report.by_tenant == {acme: {"cancelled": 1}, globex: {"sent": 1}}
    assert [m.rcpt_tos for m in mail.messages] == [[gone]]  # Globex's
    cancelled = [r for r in rows(runtime, acme) if r.status == "cancelled"]
    assert {r.error for r in cancelled} == {"suppressed: bounced"}
    with runtime.db.session() as session:
        statuses = [e.details["status"] for e in registry.list_audit(session, acme)]
    assert statuses == ["bounced", "cancelled"]
    assert gone not in json.dumps([s.address_sha256 for s in suppressions(runtime)])


@pytest.mark.parametrize("answer", [404, 410])
def test_a_gone_webhook_is_suppressed(runtime, hooks, answer):
    tenant_id = add_tenant(runtime)
    url = hooks.url()
    content = alert(tenant_id, str(uuid.uuid4()))
    people = [add_recipient(runtime, tenant_id, "webhook", url)]
    queue(runtime, tenant_id, content.alert_id, content, people)
    hooks.fail(answer)
    assert delivery.send_due(runtime, now=NOW).counts == {"bounced": 1}
    (stop,) = suppressions(runtime)
    assert (stop.channel, stop.reason) == ("webhook", "bounced")
    assert stop.address_sha256 == suppression.address_hash(tenant_id, "webhook", url)
    hooks.fail(None)
    queue(runtime, tenant_id, content.alert_id, content, people, episode="next")
    assert delivery.send_due(runtime, now=NOW).counts == {"cancelled": 1}
    assert len(hooks.requests) == 1


def test_a_temporary_refusal_or_a_given_up_message_suppresses_nothing(world, mail):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address())]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    mail.fail("4xx")
    now = NOW
    for attempt in range(1, 6):
        delivery.send_due(runtime, now=now)
        now += dt.timedelta(minutes=2**attempt)
    assert rows(runtime)[0].status == "failed"
    assert suppressions(runtime) == []


def test_an_unsubscribed_recipients_pending_message_is_cancelled(world, mail):
    runtime, tenant_id, card = world
    person = add_recipient(runtime, tenant_id, "email", email_address())
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), [person])
    with runtime.db.session() as session:
        session.get(NotificationRecipient, person.id).unsubscribed_at = NOW
    assert delivery.send_due(runtime, now=NOW).counts == {"cancelled": 1}
    assert mail.messages == []
    (row,) = rows(runtime)
    assert (row.status, row.message_ct) == ("cancelled", None)


def test_only_the_given_tenants_and_up_to_the_limit_are_sent(world, mail):
    runtime, acme, card = world
    globex = add_tenant(runtime, "Globex Corp", "ops@globex.test")
    for tenant in (acme, globex):
        people = [add_recipient(runtime, tenant, "email", email_address()) for _ in range(3)]
        queue(runtime, tenant, card, scorecard(tenant, card), people)
    assert delivery.send_due(runtime, now=NOW, tenant_ids=[globex], limit=2).counts == {"sent": 2}
    assert delivery.send_due(runtime, now=NOW, tenant_ids=[globex]).by_tenant == {
        globex: {"sent": 1}
    }
    assert delivery.send_due(runtime, now=NOW).by_tenant == {acme: {"sent": 3}}


def test_deliveries_are_listed_without_addresses(world, mail):
    runtime, tenant_id, card = world
    address = email_address()
    people = [add_recipient(runtime, tenant_id, "email", address)]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    mail.fail("4xx")
    delivery.send_due(runtime, now=NOW)
    with runtime.db.session() as session:
        (info,) = delivery.list_deliveries(session, tenant_id=tenant_id, status="retrying")
        assert delivery.list_deliveries(session, status="sent") == []
        with pytest.raises(InvalidInput):
            delivery.list_deliveries(session, status="lost")
        with pytest.raises(InvalidInput):
            delivery.list_deliveries(session, limit=0)
    data = info.as_json()
    assert (data["kind"], data["channel"], data["status"], data["attempts"], data["error"]) == (
        "scorecard",
        "email",
        "retrying",
        1,
        "smtp 451",
    )
    assert data["tenant_id"] == tenant_id and address not in json.dumps(data)


# -- SMTP over TLS, with credentials ------------------------------------------------------------


def test_starttls_with_a_password_file_and_smtps_verified_against_the_ca(runtime, tmp_path):
    password = remember_secret(f"pw-{uuid.uuid4().hex}")
    secret = tmp_path / "smtp-password"
    secret.write_text(password + "\n")
    tenant_id = add_tenant(runtime)
    card = new_scorecard(runtime, tenant_id)
    with (
        start_smtp_server(
            tmp_path / "587", tls="starttls", user="mailer", password=password
        ) as starttls,
        start_smtp_server(tmp_path / "465", tls="smtps") as smtps,
    ):
        for n, (peer, env) in enumerate(
            [
                (
                    starttls,
                    {
                        "WRITEVUE_SMTP_USER": "mailer",
                        "WRITEVUE_SMTP_PASSWORD_FILE": str(secret),
                    },
                ),
                (smtps, {}),
            ]
        ):
            people = [add_recipient(runtime, tenant_id, "email", email_address())]
            queue(runtime, tenant_id, card, scorecard(tenant_id, card), people, episode=str(n))
            untrusted = with_settings(
                runtime, WRITEVUE_SMTP_URL=peer.url, WRITEVUE_NOTIFY_TIMEOUT_S="5", **env
            )
            assert delivery.send_due(untrusted, now=NOW).counts == {"retrying": 1}
            assert rows(runtime)[-1].error == "tls"  # the system's CAs do not know it
            trusted = with_settings(
                runtime,
                WRITEVUE_SMTP_URL=peer.url,
                WRITEVUE_SMTP_CA_FILE=str(peer.ca_file),
                WRITEVUE_NOTIFY_TIMEOUT_S="5",
                **env,
            )
            later = NOW + dt.timedelta(minutes=5)
            assert delivery.send_due(trusted, now=later).counts == {"sent": 1}
            (received,) = peer.messages
            assert received.tls
            assert received.authenticated == (peer is starttls)


def test_a_wrong_smtp_password_is_a_recorded_failure(runtime, tmp_path):
    tenant_id = add_tenant(runtime)
    card = new_scorecard(runtime, tenant_id)
    password = remember_secret(f"pw-{uuid.uuid4().hex}")
    wrong = remember_secret(f"wrong-{uuid.uuid4().hex}")
    with start_smtp_server(tmp_path / "587", tls="starttls", user="m", password=password) as peer:
        people = [add_recipient(runtime, tenant_id, "email", email_address())]
        queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
        rt = with_settings(
            runtime,
            WRITEVUE_SMTP_URL=peer.url,
            WRITEVUE_SMTP_CA_FILE=str(peer.ca_file),
            WRITEVUE_SMTP_USER="m",
            WRITEVUE_SMTP_PASSWORD=wrong,
        )
        assert delivery.send_due(rt, now=NOW).counts == {"retrying": 1}
        assert rows(runtime)[0].error == "smtp 535"
        assert peer.messages == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WRITEVUE_SMTP_URL": "smtp://user:pw@mail.test:25"}, "user name or password"),
        ({"WRITEVUE_SMTP_URL": "http://mail.test"}, "smtp://, smtp+starttls:// or smtps://"),
        ({"WRITEVUE_SMTP_URL": "smtp://"}, "host"),
        ({"WRITEVUE_SMTP_URL": "smtp://mail.test:99999"}, "port"),
        ({"WRITEVUE_SMTP_URL": "smtp://mail.test/path"}, "path"),
        (
            {"WRITEVUE_SMTP_URL": "smtps://mail.test", "WRITEVUE_SMTP_PASSWORD": "x" * 9},
            "WRITEVUE_SMTP_USER",
        ),
        (
            {
                "WRITEVUE_SMTP_URL": "smtps://mail.test",
                "WRITEVUE_SMTP_USER": "u",
                "WRITEVUE_SMTP_PASSWORD_FILE": "/nonexistent/pw",
            },
            "cannot be read",
        ),
        (
            {"WRITEVUE_SMTP_URL": "smtp://mail.test", "WRITEVUE_MAIL_FROM": "not an address"},
            "WRITEVUE_MAIL_FROM",
        ),
        (
            {
                "WRITEVUE_SMTP_URL": "smtp://mail.test:25",
                "WRITEVUE_SMTP_USER": "mailer",
                "WRITEVUE_SMTP_PASSWORD": "x" * 9,
            },
            "unencrypted",
        ),
        (
            {"WRITEVUE_SMTP_URL": "smtp://10.0.0.5:2525", "WRITEVUE_SMTP_USER": "mailer"},
            "smtp+starttls://",
        ),
    ],
)
def test_an_smtp_setting_that_cannot_work_is_refused_clearly(tmp_path, env, message):
    settings = Settings.from_env({"WRITEVUE_HOME": str(tmp_path), **env})
    with pytest.raises(ConfigError) as caught:
        smtp.SmtpConfig.from_settings(settings)
    assert message in str(caught.value)
    assert "pw" not in str(caught.value).replace("password", "")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.53"])
def test_a_login_over_plain_smtp_is_allowed_to_a_relay_on_this_machine(tmp_path, host):
    settings = Settings.from_env(
        {
            "WRITEVUE_HOME": str(tmp_path),
            "WRITEVUE_SMTP_URL": f"smtp://{host}:2525",
            "WRITEVUE_SMTP_USER": "mailer",
            "WRITEVUE_SMTP_PASSWORD": "x" * 9,
        }
    )
    config = smtp.SmtpConfig.from_settings(settings)
    assert (config.security, config.user, config.port) == ("plain", "mailer", 2525)


def test_smtp_settings_are_read_with_defaults(tmp_path):
    settings = Settings.from_env(
        {"WRITEVUE_HOME": str(tmp_path), "WRITEVUE_SMTP_URL": "smtp+starttls://mail.test"}
    )
    config = smtp.SmtpConfig.from_settings(settings)
    assert (config.security, config.host, config.port) == ("starttls", "mail.test", 587)
    assert (
        smtp.SmtpConfig.from_settings(
            Settings.from_env(
                {"WRITEVUE_HOME": str(tmp_path), "WRITEVUE_SMTP_URL": "smtps://m.test"}
            )
        ).port
        == 465
    )
    assert (
        smtp.SmtpConfig.from_settings(Settings.from_env({"WRITEVUE_HOME": str(tmp_path)})) is None
    )
    with pytest.raises(ConfigError):
        Settings.from_env({"WRITEVUE_HOME": str(tmp_path), "WRITEVUE_NOTIFY_TIMEOUT_S": "0"})
    shown = Settings.from_env(
        {"WRITEVUE_HOME": str(tmp_path), "WRITEVUE_SMTP_PASSWORD": "hunter2-hunter2"}
    )
    assert shown.smtp_password == "hunter2-hunter2" and "hunter2" not in repr(shown)


def test_a_message_that_cannot_be_read_is_recorded_and_the_run_goes_on(world, mail):
    runtime, tenant_id, card = world
    people = [add_recipient(runtime, tenant_id, "email", email_address()) for _ in range(3)]
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
    with runtime.db.session() as session:
        first, second, _ = session.scalars(
            select(NotificationDelivery).order_by(NotificationDelivery.id)
        ).all()
        # a blob copied into another row does not decrypt (it is bound to its row)
        first.message_ct, second.message_ct = second.message_ct, first.message_ct
    report = delivery.send_due(runtime, now=NOW)
    assert report.counts == {"retrying": 2, "sent": 1}
    errors = sorted(r.error or "" for r in rows(runtime))
    assert errors == ["", "internal VaultError", "internal VaultError"]
    assert len(mail.messages) == 1
