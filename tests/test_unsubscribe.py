"""Every message's unsubscribe link: a one-time token (only its hash stored) that stops that
address's deliveries, behind a confirm page (mail scanners follow GET links) and RFC 8058's
one-click POST, limited against guessing and never logged.

Real peers: the SMTP server the message goes through, a `writevue serve` process.
"""

from __future__ import annotations

import http.client
import json
import uuid
from email import policy
from email.parser import BytesParser
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import select
from support import (
    add_tenant,
    remember_secret,
    start_dashboard_server,
    start_smtp_server,
)
from test_notification_delivery import (
    NOW,
    add_recipient,
    email_address,
    new_scorecard,
    queue,
    rows,
    scorecard,
    with_settings,
)

from writevue_pipelines.models import NotificationDelivery, NotificationRecipient
from writevue_pipelines.notifications import delivery
from writevue_pipelines.notifications.unsubscribe import unsubscribe
from writevue_pipelines.vault import Binding

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
    stored = json.loads(
        runtime.keys.decrypt(row.message_ct, Binding(tenant_id, None, f"delivery.{row.id}"))
    )
    message = BytesParser(policy=policy.default).parsebytes(stored["message"].encode())
    url = message["List-Unsubscribe"].strip("<>")
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
