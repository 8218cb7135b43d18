"""Every message's unsubscribe link: a one-time token (only its hash stored) that stops that
address's deliveries, behind a confirm page (mail scanners follow GET links) and RFC 8058's
one-click POST, limited against guessing and never logged.

Real peers: the SMTP server the message goes through, a `writevue serve` process.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import uuid
import zipfile
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import select
from support import (
    add_tenant,
    remember_secret,
    start_dashboard_server,
    start_smtp_server,
    start_webhook_receiver,
)
from test_notification_delivery import (
    NOW,
    add_recipient,
    email_address,
    new_scorecard,
    queue,
    rows,
    scorecard,
    suppressions,
    with_settings,
)

from writevue_pipelines.models import NotificationDelivery, NotificationRecipient
from writevue_pipelines.notifications import config, delivery, suppression
from writevue_pipelines.notifications.unsubscribe import unsubscribe

ONE_CLICK = urlencode({"List-Unsubscribe": "One-Click"})
DONE = "You will no longer receive"
NEUTRAL = "This link was used already or does not work"


def recipients(runtime) -> dict[str, NotificationRecipient]:
    with runtime.db.session() as session:
        return {r.id: r for r in session.scalars(select(NotificationRecipient))}


def token_of(received) -> str:
    """The token in a received message's List-Unsubscribe header (remembered as a secret)."""
    url = received.message["List-Unsubscribe"].strip("<>")
    return remember_secret(url.rsplit("/unsubscribe/", 1)[1])


@pytest.fixture
def sent(any_runtime, tmp_path):
    """Two scorecards of Acme mailed to the same address (and another), one of Globex to it too."""
    with start_smtp_server(tmp_path / "smtp") as mail:
        runtime = with_settings(any_runtime, WRITEVUE_SMTP_URL=mail.url)
        acme = add_tenant(runtime)
        globex = add_tenant(runtime, "Globex Corp", "ops@globex.test")
        address, other = email_address(), email_address()
        weekly, monthly, theirs = (
            new_scorecard(runtime, acme),
            new_scorecard(runtime, acme),
            new_scorecard(runtime, globex),
        )
        people = {
            "weekly": add_recipient(runtime, acme, "email", address, scorecard_id=weekly),
            "other": add_recipient(runtime, acme, "email", other, scorecard_id=weekly),
            # the same address, another case: still the same person
            "monthly": add_recipient(runtime, acme, "email", address.upper(), scorecard_id=monthly),
            "globex": add_recipient(runtime, globex, "email", address, scorecard_id=theirs),
        }
        queue(runtime, acme, weekly, scorecard(acme, weekly), [people["weekly"], people["other"]])
        delivery.send_due(runtime, now=NOW)
        (mine,) = [m for m in mail.messages if m.rcpt_tos == [address]]
        # queued but not yet sent: the monthly one and Globex's
        queue(runtime, acme, monthly, scorecard(acme, monthly), [people["monthly"]])
        queue(runtime, globex, theirs, scorecard(globex, theirs), [people["globex"]])
        yield runtime, people, token_of(mine)


def test_the_token_stops_that_address_at_that_tenant_and_works_once(sent):
    runtime, people, token = sent
    with runtime.db.session() as session:
        assert unsubscribe(session, runtime.keys, token) is True
    with runtime.db.session() as session:
        assert unsubscribe(session, runtime.keys, token) is False  # spent
        assert unsubscribe(session, runtime.keys, "x" * 43) is False  # unknown
        assert unsubscribe(session, runtime.keys, "") is False
    stopped = {name for name, p in people.items() if recipients(runtime)[p.id].unsubscribed_at}
    assert stopped == {"weekly", "monthly"}
    by_recipient = {r.recipient_id: r for r in rows(runtime)}
    monthly = by_recipient[people["monthly"].id]
    assert (monthly.status, monthly.message_ct) == ("cancelled", None)
    assert by_recipient[people["globex"].id].status == "pending"
    with runtime.db.session() as session:
        used = session.scalars(
            select(NotificationDelivery).where(
                NotificationDelivery.unsubscribe_used_at.is_not(None)
            )
        ).all()
    assert [row.recipient_id for row in used] == [people["weekly"].id]
    assert delivery.send_due(runtime, now=NOW).counts == {"sent": 1}  # Globex's only


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A `writevue serve` process with a small guessing budget, on its own home."""
    from support import home_runtime

    root = tmp_path_factory.mktemp("unsubscribe")
    runtime = home_runtime(root)
    log = root / "serve.log"
    server, base = start_dashboard_server(runtime.settings.home, log, WRITEVUE_GUESS_LIMIT="5")
    try:
        yield runtime, base, log
    finally:
        server.stop()
        runtime.close()


def request(base: str, method: str, path: str, body: str | None = None, headers=None):
    """One request without httpx (whose INFO log line would carry the token)."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def queued_token(runtime) -> tuple[str, str]:
    """(token, recipient id) of a message queued to a new recipient; the token as the message
    carries it."""
    tenant_id = add_tenant(runtime)
    card = new_scorecard(runtime, tenant_id)
    person = add_recipient(runtime, tenant_id, "email", email_address(), scorecard_id=card)
    queue(runtime, tenant_id, card, scorecard(tenant_id, card), [person])
    (row,) = rows(runtime, tenant_id)
    stored = delivery.stored_message(runtime.keys, tenant_id, row.id, row.message_ct)
    # rendered as it is sent: the content is stored, the message built when it goes out
    message = delivery.render(stored, "person@example.test", runtime.settings, row.idempotency_key)
    url = message["message"]["List-Unsubscribe"].strip("<>")
    return remember_secret(url.rsplit("/unsubscribe/", 1)[1]), person.id


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_the_page_asks_first_and_one_click_unsubscribes(served):
    runtime, base, log = served
    token, recipient_id = queued_token(runtime)
    status, headers, page = request(base, "GET", f"/unsubscribe/{token}")
    assert status == 200
    assert '<form method="post"' in page and "Unsubscribe" in page
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert "form-action 'self'" in headers["Content-Security-Policy"]
    assert recipients(runtime)[recipient_id].unsubscribed_at is None  # GET changes nothing

    status, _, page = request(base, "POST", f"/unsubscribe/{token}", ONE_CLICK, FORM)
    assert (status, DONE in page) == (200, True)
    assert recipients(runtime)[recipient_id].unsubscribed_at is not None
    status, _, again = request(base, "POST", f"/unsubscribe/{token}", ONE_CLICK, FORM)
    assert (status, NEUTRAL in again, DONE in again) == (200, True, False)
    _, _, unknown = request(base, "POST", f"/unsubscribe/{uuid.uuid4().hex}", "", FORM)
    assert unknown == again  # spent and unknown: the same page

    text = log.read_text()
    assert "/unsubscribe/<token>" in text and token not in text


def test_the_confirm_button_unsubscribes_too(served):
    runtime, base, _ = served
    token, recipient_id = queued_token(runtime)
    status, _, page = request(base, "POST", f"/unsubscribe/{token}", "confirm=1", FORM)
    assert (status, DONE in page) == (200, True)
    assert recipients(runtime)[recipient_id].unsubscribed_at is not None


def test_guessing_is_limited_and_a_real_token_still_works(served):
    runtime, base, _ = served
    token, _ = queued_token(runtime)
    statuses = [
        request(base, "POST", f"/unsubscribe/{uuid.uuid4().hex}", ONE_CLICK, FORM)[0]
        for _ in range(8)
    ]
    # a budget of 5 failures a minute per address (the module's earlier tests spent some)
    first = statuses.index(429)
    assert set(statuses[:first]) == {200} and set(statuses[first:]) == {429}
    status, _, page = request(base, "POST", f"/unsubscribe/{token}", ONE_CLICK, FORM)
    assert (status, DONE in page) == (200, True)
    assert request(base, "GET", "/unsubscribe/not.a.token")[0] == 404


# -- suppression: an unsubscribe or a bounce lasts ---------------------------------------------

TODAY = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)


def add_card(runtime, tenant_id, emails=(), webhooks=(), name="Monday summary") -> str:
    with runtime.db.session() as session:
        return config.add_scorecard(
            session,
            runtime.keys,
            tenant_id,
            name=name,
            metrics=["stripe.charges"],
            period="last_week",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            emails=list(emails),
            webhooks=list(webhooks),
            now=TODAY,
        )


def queue_card(runtime, tenant_id, card, episode="w48") -> int:
    with runtime.db.session() as session:
        people = config.active_recipients(session, runtime.keys, scorecard_id=card)
    return queue(runtime, tenant_id, card, scorecard(tenant_id, card), people, episode=episode)


def listed(runtime, tenant_id) -> dict[str, dict]:
    with runtime.db.session() as session:
        cards = {
            c.id: c.as_json()["recipients"] for c in config.list_scorecards(session, tenant_id)
        }
        alerts = {a.id: a.as_json()["recipients"] for a in config.list_alerts(session, tenant_id)}
    return {**cards, **alerts}


def test_an_unsubscribe_outlives_its_scorecard_and_a_new_one_keeps_the_address_stopped(
    any_runtime, tmp_path
):
    with start_smtp_server(tmp_path / "smtp") as mail:
        runtime = with_settings(any_runtime, WRITEVUE_SMTP_URL=mail.url)
        acme = add_tenant(runtime)
        globex = add_tenant(runtime, "Globex Corp", "ops@globex.test")
        address, other = email_address(), email_address()
        weekly = add_card(runtime, acme, [address, other])
        monthly = add_card(runtime, acme, [address.upper()], name="Monthly")
        theirs = add_card(runtime, globex, [address])
        queue_card(runtime, acme, weekly)
        delivery.send_due(runtime, now=NOW)
        (mine,) = [m for m in mail.messages if m.rcpt_tos == [address]]
        token = token_of(mine)
        queue_card(runtime, acme, monthly)
        queue_card(runtime, globex, theirs)
        with runtime.db.session() as session:
            config.remove_scorecard(session, weekly)

        with runtime.db.session() as session:
            assert unsubscribe(session, runtime.keys, token) is True
        (stop,) = suppressions(runtime)
        assert (stop.tenant_id, stop.channel, stop.reason) == (acme, "email", "unsubscribed")
        assert stop.address_sha256 == suppression.address_hash(acme, "email", address)
        by_subject = {r.subject_id: r for r in rows(runtime)}
        assert by_subject[monthly].status == "cancelled"
        assert by_subject[theirs].status == "pending"
        assert listed(runtime, acme)[monthly]["by_channel"]["email"] == {
            "active": 0,
            "unsubscribed": 1,
            "bounced": 0,
        }

        # the operator adds the address again, in another case: it stays stopped
        again = add_card(runtime, acme, [f" {address.title()} ", other], name="Again")
        with runtime.db.session() as session:
            alert_id = config.add_alert(
                session,
                runtime.keys,
                acme,
                metric="stripe.charges",
                condition="below",
                threshold=1,
                emails=[address],
            )
            assert config.suppressed_count(session, scorecard_id=again) == 1
            assert config.suppressed_count(session, alert_id=alert_id) == 1
            assert config.suppressed_count(session, scorecard_id=theirs) == 0
            active = config.active_recipients(session, runtime.keys, scorecard_id=again)
            assert [r.address for r in active] == [other]
            assert config.active_recipients(session, runtime.keys, alert_id=alert_id) == []
        shown = listed(runtime, acme)
        assert shown[again]["by_channel"]["email"] == {"active": 1, "unsubscribed": 1, "bounced": 0}
        assert (shown[again]["email"], shown[again]["unsubscribed"], shown[again]["bounced"]) == (
            2,
            1,
            0,
        )
        assert shown[alert_id]["by_channel"]["email"]["unsubscribed"] == 1
        assert listed(runtime, globex)[theirs]["by_channel"]["email"]["active"] == 1
        assert address not in json.dumps(shown)
        # a message queued to a row that knows nothing of it is cancelled when due
        fresh = add_recipient(runtime, acme, "email", address, scorecard_id=again)
        queue(runtime, acme, again, scorecard(acme, again), [fresh], episode="w50")
        assert delivery.send_due(runtime, now=NOW, tenant_ids=[acme]).counts == {"cancelled": 1}


def test_a_bounced_webhook_is_counted_and_stays_stopped(any_runtime, tmp_path):
    with start_smtp_server(tmp_path / "smtp") as mail, start_webhook_receiver() as hooks:
        runtime = with_settings(any_runtime, WRITEVUE_SMTP_URL=mail.url)
        acme = add_tenant(runtime)
        url = hooks.url()
        card = add_card(runtime, acme, [email_address()], [url])
        queue_card(runtime, acme, card)
        hooks.fail(410)
        assert delivery.send_due(runtime, now=NOW).counts == {"sent": 1, "bounced": 1}
        shown = listed(runtime, acme)[card]
        assert shown["by_channel"] == {
            "email": {"active": 1, "unsubscribed": 0, "bounced": 0},
            "webhook": {"active": 0, "unsubscribed": 0, "bounced": 1},
        }
        assert (shown["webhook"], shown["bounced"], shown["unsubscribed"]) == (1, 1, 0)
        with runtime.db.session() as session:
            assert [
                r.channel
                for r in config.active_recipients(session, runtime.keys, scorecard_id=card)
            ] == ["email"]
        second = add_card(runtime, acme, webhooks=[url], name="Second")
        with runtime.db.session() as session:
            assert config.suppressed_count(session, scorecard_id=second) == 1
        assert listed(runtime, acme)[second]["by_channel"]["webhook"]["bounced"] == 1


def test_the_export_lists_suppressions_as_hashes(any_runtime, tmp_path):
    from writevue_pipelines.privacy.export import export_tenant

    runtime = any_runtime
    acme = add_tenant(runtime)
    address = email_address()
    card = add_card(runtime, acme, [address])
    queue_card(runtime, acme, card)
    (row,) = rows(runtime, acme)
    stored = delivery.stored_message(runtime.keys, acme, row.id, row.message_ct)
    message = delivery.render(stored, address, runtime.settings, row.idempotency_key)["message"]
    token = remember_secret(message["List-Unsubscribe"].strip("<>").rsplit("/unsubscribe/", 1)[1])
    with runtime.db.session() as session:
        config.remove_scorecard(session, card)
        assert unsubscribe(session, runtime.keys, token) is True
    out = tmp_path / "export.zip"
    export_tenant(runtime, acme, out)
    with zipfile.ZipFile(out) as archive:
        data = json.loads(archive.read("notifications.json"))
    assert data["suppressions"] == [
        {
            "channel": "email",
            "address_sha256": suppression.address_hash(acme, "email", address),
            "reason": "unsubscribed",
            "created_at": data["suppressions"][0]["created_at"],
        }
    ]
    assert address not in json.dumps(data)
