"""A client's export: everything WriteVue keeps about it, in one zip, without a secret.

``aggregates.csv`` and ``aggregates.parquet`` hold every aggregate (the warehouse's
facts), ``connections.csv`` the connected sources (never a credential),
``links.csv`` the dashboard links (never a token or its hash), ``client.json`` the
contact details, ``dashboard.json`` how its dashboard is set up (template, brand,
locale, comparison, polarity, goals), ``notifications.json`` its scorecards, alerts,
their recipients with their addresses and webhook URLs (the client's own data), the
deliveries' outcomes (never a message or an unsubscribe token) and the unusual days
found in its metrics, and ``README.txt`` says what each file is. The
CSV files are safe to open in a spreadsheet (``spreadsheet``: no cell runs as a formula).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from sqlalchemy import select

from .. import links, registry
from ..errors import InvalidInput
from ..models import Connection, Fact, TenantSettings
from ..runtime import Runtime
from ..spreadsheet import csv_text, frame_csv

AGGREGATE_SCHEMA = {
    "connection_id": pl.String,
    "source": pl.String,
    "metric": pl.String,
    "dimension": pl.String,
    "day": pl.Date,
    "value": pl.Float64,
    "updated_at": pl.Datetime("us", "UTC"),
}

README = """\
WriteVue export for {name}
Made {made} UTC. Client id: {tenant_id}

WriteVue keeps only daily aggregates of your sources, never the raw records, and
never shows a stored secret again. This archive holds everything it keeps about you:

client.json          your name, contact email and when you became a client
connections.csv      your connected sources: id, source, how it is authorised,
                     non-secret options (such as an account or property id), status,
                     last refresh. API keys, passwords and OAuth tokens are not
                     included: they are stored encrypted and never shown back.
links.csv            your dashboard links: id, label, created, expires, revoked,
                     last used. The secret URLs themselves are not stored by WriteVue
                     (only a one-way hash, also left out), so they cannot be exported.
aggregates.csv       every aggregate: connection_id, source, metric, dimension
                     ('' when the metric has no breakdown), day, value, updated_at (UTC).
aggregates.parquet   the same table in Apache Parquet, with its types.
dashboard.json       how your dashboard is set up: its layout (template) and look
                     (brand) by name, number format (locale), what figures are
                     compared with, which changes count as good news, and your goals.
notifications.json   your scorecards and alerts: what they show and when they are
                     sent, with their recipients' email addresses and webhook URLs;
                     every message sent or to be sent (when, channel, outcome; not the
                     message itself, which is deleted once sent); the addresses your
                     messages no longer go to because they unsubscribed or bounced
                     (a one-way hash of each, with the reason: the address itself is
                     not kept once its scorecard or alert is gone); the unusual days
                     found in your metrics; your time zone, and whether your messages
                     carry a dashboard link.

In the CSV files every text is in double quotes, and a text that begins with =, +, -,
@, a tab or a carriage return starts with an added ' so that a spreadsheet shows it
rather than running it as a formula; aggregates.parquet holds every value exactly.

{facts} aggregates from {connections} connections.
"""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    facts: int
    connections: int
    links: int
    bytes: int


def _csv(rows: list[dict], columns: list[str]) -> bytes:
    return csv_text(columns, ([row[name] for name in columns] for row in rows)).encode()


def _iso(value: dt.datetime | None) -> str:
    return "" if value is None else value.isoformat()


def tenant_aggregates(runtime: Runtime, tenant_id: str) -> pl.DataFrame:
    """Every fact of one tenant, per connection, in the export's schema."""
    with runtime.db.session() as session:
        rows = session.execute(
            select(
                Fact.connection_id,
                Connection.source,
                Fact.metric,
                Fact.dimension,
                Fact.day,
                Fact.value,
                Fact.updated_at,
            )
            .join(Connection, Connection.id == Fact.connection_id)
            .where(Fact.tenant_id == tenant_id)
            .order_by(Fact.connection_id, Fact.metric, Fact.dimension, Fact.day)
        ).all()
    return pl.DataFrame(rows, schema=AGGREGATE_SCHEMA, orient="row")


def _dashboard_setup(session, tenant_id: str) -> dict:
    """The tenant's dashboard settings and goals, by name (no ids of other records)."""
    from .. import goals
    from ..models import Brand, DashboardTemplate

    chosen = session.get(TenantSettings, tenant_id)
    template = brand = None
    if chosen is not None and chosen.template_id:
        row = session.get(DashboardTemplate, chosen.template_id)
        template = row.name if row else None
    if chosen is not None and chosen.brand_id:
        row = session.get(Brand, chosen.brand_id)
        brand = row.display_name if row else None
    return {
        "template": template,
        "brand": brand,
        "locale": chosen.locale if chosen else "en",
        "comparison": chosen.comparison if chosen else None,
        "polarity": dict(chosen.polarity or {}) if chosen else {},
        "goals": [
            {
                "metric": g.metric,
                "dimension": g.dimension,
                "period": g.period,
                "target": g.target,
                "starts_on": g.starts_on.isoformat() if g.starts_on else None,
                "due_on": g.due_on.isoformat() if g.due_on else None,
            }
            for g in goals.list_goals(session, tenant_id)
        ],
    }


def _notifications(session, keys, tenant_id: str) -> dict:
    """The tenant's scorecards, alerts (with recipients' addresses: its own data),
    deliveries (outcomes only: no message, token or hash) and anomalies."""
    from ..models import MetricAnomaly, NotificationDelivery, NotificationRecipient
    from ..notifications import config, suppression
    from ..vault import VaultError

    recipients: dict[str, list[dict]] = {}
    rows = session.scalars(
        select(NotificationRecipient)
        .where(NotificationRecipient.tenant_id == tenant_id)
        .order_by(NotificationRecipient.created_at, NotificationRecipient.id)
    )
    for row in rows:
        try:
            address = keys.decrypt_text(row.address_ct, config.recipient_binding(tenant_id, row.id))
        except VaultError:
            address = None  # damaged: said so rather than left out
        recipients.setdefault(row.scorecard_id or row.alert_id or "", []).append(
            {
                "id": row.id,
                "channel": row.channel,
                "address": address,
                "unsubscribed_at": _iso(row.unsubscribed_at) or None,
                "created_at": _iso(row.created_at),
            }
        )
    deliveries = session.scalars(
        select(NotificationDelivery)
        .where(NotificationDelivery.tenant_id == tenant_id)
        .order_by(NotificationDelivery.created_at, NotificationDelivery.id)
    )
    anomalies = session.scalars(
        select(MetricAnomaly)
        .where(MetricAnomaly.tenant_id == tenant_id)
        .order_by(MetricAnomaly.metric, MetricAnomaly.dimension, MetricAnomaly.day)
    )
    chosen = session.get(TenantSettings, tenant_id)
    return {
        "timezone": config.tenant_timezone(session, tenant_id),
        "dashboard_link_in_messages": chosen is not None and chosen.message_link_id is not None,
        "scorecards": [
            {**card.as_json(), "recipients": recipients.get(card.id, [])}
            for card in config.list_scorecards(session, tenant_id)
        ],
        "alerts": [
            {**alert.as_json(), "recipients": recipients.get(alert.id, [])}
            for alert in config.list_alerts(session, tenant_id)
        ],
        "deliveries": [
            {
                "id": d.id,
                "kind": d.kind,
                "subject_id": d.subject_id,
                "recipient_id": d.recipient_id,
                "channel": d.channel,
                "scheduled_for": _iso(d.scheduled_for),
                "status": d.status,
                "attempts": d.attempts,
                "error": d.error,
                "created_at": _iso(d.created_at),
                "sent_at": _iso(d.sent_at) or None,
                "unsubscribed_with_it_at": _iso(d.unsubscribe_used_at) or None,
            }
            for d in deliveries
        ],
        # addresses the messages no longer go to (unsubscribed or bounced): only a hash
        # of each is kept, so only the hash can be exported
        "suppressions": [
            item.as_json() for item in suppression.list_suppressions(session, tenant_id)
        ],
        "anomalies": [
            {
                "metric": a.metric,
                "dimension": a.dimension,
                "day": a.day.isoformat(),
                "value": a.value,
                "expected": a.expected,
                "low": a.low,
                "high": a.high,
            }
            for a in anomalies
        ],
    }


#: the files of an export (README, client, connections, links, aggregates twice,
#: dashboard, notifications): for its progress
_EXPORT_FILES = 8


def export_tenant(
    runtime: Runtime,
    tenant_id: str,
    out: Path,
    *,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExportReport:
    """Write the tenant's export to ``out`` atomically (a temporary file, then a rename).

    ``progress(label, done, total)`` hears each part read and each file written.
    """

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress("exporting tenant", done, total)

    out = Path(out).expanduser()
    if out.suffix.lower() != ".zip":
        raise InvalidInput(f"{out} does not end in .zip; name the export FILE.zip.")
    if out.is_dir():
        raise InvalidInput(f"{out} is a directory; give a file name ending in .zip.")
    if out.exists() and not force:
        raise InvalidInput(f"{out} already exists; pass --force to replace it.")
    if not out.parent.is_dir():
        raise InvalidInput(f"The folder {out.parent} does not exist; create it first.")

    with runtime.db.session() as session:
        tenant = registry.get_tenant(session, runtime.keys, tenant_id)
        connections = registry.list_connections(session, tenant_id=tenant.id)
        link_rows = links.list_links(session, tenant.id)
        dashboard = _dashboard_setup(session, tenant.id)
        notifications = _notifications(session, runtime.keys, tenant.id)
    step(1, 2 + _EXPORT_FILES)
    facts = tenant_aggregates(runtime, tenant.id)
    step(2, 2 + _EXPORT_FILES)

    parquet = io.BytesIO()
    facts.write_parquet(parquet)
    files = {
        "README.txt": README.format(
            name=tenant.name,
            made=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
            tenant_id=tenant.id,
            facts=facts.height,
            connections=len(connections),
        ).encode(),
        "client.json": json.dumps(
            {
                "id": tenant.id,
                "name": tenant.name,
                "email": tenant.email,
                "created_at": _iso(tenant.created_at),
            },
            indent=2,
        ).encode(),
        "connections.csv": _csv(
            [
                {
                    "id": c.id,
                    "source": c.source,
                    "auth_kind": c.auth_kind,
                    "options": json.dumps(c.options, sort_keys=True),
                    "status": c.status,
                    "last_refreshed_at": _iso(c.last_refreshed_at),
                }
                for c in connections
            ],
            ["id", "source", "auth_kind", "options", "status", "last_refreshed_at"],
        ),
        "links.csv": _csv(
            [
                {
                    "id": item.id,
                    "label": item.label or "",
                    "created_at": _iso(item.created_at),
                    "expires_at": _iso(item.expires_at),
                    "revoked_at": _iso(item.revoked_at),
                    "last_used_at": _iso(item.last_used_at),
                }
                for item in link_rows
            ],
            ["id", "label", "created_at", "expires_at", "revoked_at", "last_used_at"],
        ),
        "aggregates.csv": frame_csv(
            facts.with_columns(pl.col("updated_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"))
        ).encode(),
        "aggregates.parquet": parquet.getvalue(),
        "dashboard.json": json.dumps(dashboard, indent=2, sort_keys=True).encode(),
        "notifications.json": json.dumps(notifications, indent=2).encode(),
    }

    # The export holds personal data: owner-only, and never a half-written file at ``out``.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for index, (name, data) in enumerate(files.items(), start=1):
                    archive.writestr(name, data)
                    step(2 + index, 2 + len(files))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportReport(
        path=out,
        facts=facts.height,
        connections=len(connections),
        links=len(link_rows),
        bytes=out.stat().st_size,
    )
