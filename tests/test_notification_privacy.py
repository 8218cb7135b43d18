"""Notifications under the privacy promises: a client's scorecards, alerts, recipients
(with their addresses: the client's own data), deliveries and anomalies are in its
export and gone after its erasure, and the erasure's verification searches for every
recipient's address and webhook URL wherever something could still hold them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
import zipfile

import pytest
from sqlalchemy import func, select
from support import add_tenant, remember_secret

from writevue_pipelines import tenant_settings
from writevue_pipelines.models import (
    AlertRule,
    MetricAnomaly,
    NotificationDelivery,
    NotificationRecipient,
    Scorecard,
    TenantSettings,
)
from writevue_pipelines.notifications import config
from writevue_pipelines.privacy import export_tenant, run_erasure
from writevue_pipelines.vault import Binding

NOW = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)
TABLES = (Scorecard, AlertRule, NotificationRecipient, NotificationDelivery, MetricAnomaly)


def _client(runtime, name: str, email: str) -> dict:
    """A tenant with a scorecard (an address and a webhook), an alert, a delivery still
    to send (its rendered message sealed), one sent, an anomaly and a link in messages."""
    tenant = add_tenant(runtime, name, f"ops@{name.split()[0].lower()}.test")
    hook = remember_secret(f"https://hooks.slack.test/services/T1/B1/{uuid.uuid4().hex}")
    with runtime.db.session() as session:
        card = config.add_scorecard(
            session,
            runtime.keys,
            tenant,
            name="Monday summary",
            metrics=["stripe.charges"],
            period="last_week",
            comparison="previous",
            cadence="weekly",
            weekday=0,
            emails=[email],
            webhooks=[hook],
            now=NOW,
        )
        alert = config.add_alert(
            session,
            runtime.keys,
            tenant,
            metric="stripe.charges",
            condition="below",
            threshold=10,
            emails=[email],
        )
        recipient = config.active_recipients(session, runtime.keys, scorecard_id=card)[0]
        deliveries = []
        for status in ("pending", "sent"):
            row = NotificationDelivery(
                id=str(uuid.uuid4()),
                tenant_id=tenant,
                idempotency_key=uuid.uuid4().hex * 2,
                kind="scorecard",
                subject_id=card,
                recipient_id=recipient.id,
                channel="email",
                scheduled_for=NOW,
                status=status,
                attempts=1 if status == "sent" else 0,
                message_ct=b"SEALED-MESSAGE-BYTES" if status == "pending" else None,
                unsubscribe_sha256=uuid.uuid4().hex * 2,
                sent_at=NOW if status == "sent" else None,
            )
            session.add(row)
            deliveries.append(row.id)
        session.add(
            MetricAnomaly(
                tenant_id=tenant,
                metric="stripe.charges",
                dimension="",
                day=dt.date(2026, 12, 2),
                value=40.0,
                expected=12.0,
                low=6.0,
                high=18.0,
            )
        )
        tenant_settings.update_settings(session, tenant, timezone="Europe/Berlin")
        tenant_settings.set_message_link(session, runtime.keys, tenant, True)
    return {
        "tenant": tenant,
        "card": card,
        "alert": alert,
        "hook": hook,
        "email": email,
        "deliveries": deliveries,
    }


def _rows(runtime, tenant_id: str) -> dict[str, int]:
    with runtime.db.session() as session:
        return {
            model.__tablename__: session.scalar(
                select(func.count()).select_from(model).where(model.tenant_id == tenant_id)
            )
            for model in TABLES
        }


def test_the_export_holds_notifications_with_addresses_and_no_secret(runtime, tmp_path):
    made = _client(runtime, "Export Co", "owner@export-co.test")
    other = _client(runtime, "Other Co", "someone@other-co.test")
    out = tmp_path / "export.zip"
    export_tenant(runtime, made["tenant"], out)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        data = json.loads(archive.read("notifications.json"))
        readme = archive.read("README.txt").decode()
        everything = b"".join(archive.read(name) for name in names)
    assert "notifications.json" in readme and "addresses" in readme
    assert data["timezone"] == "Europe/Berlin" and data["dashboard_link_in_messages"] is True
    (card,) = data["scorecards"]
    assert card["id"] == made["card"] and card["metrics"] == ["stripe.charges"]
    assert card["schedule"] == "every Monday at 08:00 Europe/Berlin"
    assert sorted((r["channel"], r["address"]) for r in card["recipients"]) == [
        ("email", made["email"]),
        ("webhook", made["hook"]),
    ]
    (alert,) = data["alerts"]
    assert alert["id"] == made["alert"] and alert["condition"] == "below"
    assert [r["address"] for r in alert["recipients"]] == [made["email"]]
    assert {d["id"]: d["status"] for d in data["deliveries"]} == dict(
        zip(made["deliveries"], ("pending", "sent"), strict=True)
    )
    for delivery in data["deliveries"]:
        assert "message_ct" not in delivery and "unsubscribe_sha256" not in delivery
    (anomaly,) = data["anomalies"]
    assert anomaly == {
        "metric": "stripe.charges",
        "dimension": "",
        "day": "2026-12-02",
        "value": 40.0,
        "expected": 12.0,
        "low": 6.0,
        "high": 18.0,
    }
    # nothing sealed, no token or hash, nothing of the other client
    assert b"SEALED-MESSAGE-BYTES" not in everything
    with runtime.db.session() as session:
        hashes = session.scalars(select(NotificationDelivery.unsubscribe_sha256)).all()
        token = config.message_link_url(
            session, runtime.keys, made["tenant"], runtime.settings
        ).rsplit("/", 1)[1]
    assert not any(h.encode() in everything for h in hashes)
    assert token.encode() not in everything
    for value in (other["tenant"], other["email"], other["hook"], other["card"]):
        assert value.encode() not in everything


def test_the_erasure_removes_notifications_and_leaves_other_clients(any_runtime):
    runtime = any_runtime
    made = _client(runtime, "Gone Co", "owner@gone-co.test")
    kept = _client(runtime, "Stays Co", "owner@stays-co.test")
    assert all(_rows(runtime, made["tenant"]).values())
    report = run_erasure(runtime, made["tenant"])
    assert report.ok, report.lines()
    assert _rows(runtime, made["tenant"]) == dict.fromkeys((m.__tablename__ for m in TABLES), 0)
    with runtime.db.session() as session:
        assert session.get(TenantSettings, made["tenant"]) is None
        assert [c.id for c in config.list_scorecards(session, kept["tenant"])] == [kept["card"]]
        assert [
            r.address
            for r in config.active_recipients(session, runtime.keys, alert_id=kept["alert"])
        ] == [kept["email"]]
    assert _rows(runtime, kept["tenant"]) == {
        "scorecards": 1,
        "alert_rules": 1,
        "notification_recipients": 3,
        "notification_deliveries": 2,
        "metric_anomalies": 1,
    }


@pytest.mark.parametrize("what", ["email", "hook"])
def test_the_verification_searches_for_recipients_addresses(runtime, what):
    made = _client(runtime, "Searched Co", "person@searched-co.test")
    # A copy the erasure does not know to remove: an old mail log, a note.
    (runtime.settings.log_dir / "mail-old.log.bak").write_text(f"to {made[what]}\n")
    report = run_erasure(runtime, made["tenant"])
    assert not report.ok
    assert report.verification.files == ["logs/mail-old.log.bak (the tenant's name or email)"]
    (runtime.settings.log_dir / "mail-old.log.bak").unlink()
    assert run_erasure(runtime, made["tenant"]).ok


def test_an_address_that_cannot_be_decrypted_fails_the_verification(runtime):
    from sqlalchemy import update

    made = _client(runtime, "Garbled Co", "person@garbled-co.test")
    with runtime.db.session() as session:  # a blob damaged on disk, or under a lost key
        session.execute(
            update(NotificationRecipient)
            .where(NotificationRecipient.alert_id == made["alert"])
            .values(address_ct=b"\x00garbled")
        )
    report = run_erasure(runtime, made["tenant"])
    assert not report.ok
    assert any("recipient" in u for u in report.verification.unchecked), report.lines()


def test_key_rotation_reencrypts_addresses_messages_and_the_message_link(runtime):
    from writevue_pipelines.privacy import retire_key, rotate_keys
    from writevue_pipelines.runtime import Runtime

    made = _client(runtime, "Rotated Co", "person@rotated-co.test")
    with runtime.db.session() as session:
        before = config.message_link_url(session, runtime.keys, made["tenant"], runtime.settings)
        pending = session.get(NotificationDelivery, made["deliveries"][0])
        pending.message_ct = runtime.keys.encrypt(
            "Subject: figures", Binding(made["tenant"], None, f"delivery.{pending.id}")
        )
    old = runtime.keys.primary
    assert rotate_keys(runtime).total_rotated > 0
    fresh = Runtime(runtime.settings)  # a new process, with the new ring
    try:
        retire_key(fresh, old)
        with fresh.db.session() as session:
            addresses = config.active_recipients(session, fresh.keys, scorecard_id=made["card"])
            assert sorted(r.address for r in addresses) == sorted([made["email"], made["hook"]])
            url = config.message_link_url(session, fresh.keys, made["tenant"], fresh.settings)
            assert url == before
            row = session.get(NotificationDelivery, made["deliveries"][0])
            binding = Binding(made["tenant"], None, f"delivery.{row.id}")
            assert fresh.keys.decrypt_text(row.message_ct, binding) == "Subject: figures"
    finally:
        fresh.close()
