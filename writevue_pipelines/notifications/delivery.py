"""The outbox: one row per message and recipient, sent over SMTP or HTTP, every outcome kept.

``enqueue_many`` stores each message's content (its figures, already computed) with a
one-time unsubscribe link for each recipient, encrypted, under an idempotency key: sha256
of kind, subject, episode (the scheduled time, or the alert episode's first day) and
recipient, unique in the table, so a scheduler that asks twice, or two runs that race,
queue it once. The email or webhook payload is rendered from it when it is sent (a retry
renders the same content, link and Message-ID).

``send_due`` sends what is due, one row at a time: a row is claimed by moving it from
pending or retrying to ``sending`` in its own commit (two runs never both claim it), sent,
and its outcome recorded in its own commit with an audit event:

- ``sent``: the server accepted it (SMTP 250, HTTP 2xx); the stored message is cleared;
- ``bounced``: refused for good: SMTP 5xx for the recipient or the message, a webhook's
  404 or 410; not retried, and the address is suppressed at the tenant (``suppression``):
  its other queued messages are cancelled and no later one is sent;
- ``retrying``: refused for now (SMTP 4xx, HTTP 5xx, 429 or 408), refused connection,
  timeout, TLS trouble, no SMTP server configured: tried again after 2, 4, 8, 16 minutes,
  at most ``WRITEVUE_NOTIFY_ATTEMPTS`` (5) attempts in all, then ``failed``;
- ``failed``: given up, or a webhook's other 4xx or a redirect (retrying cannot help);
- ``cancelled``: the recipient unsubscribed (or was removed), or the address was
  suppressed (unsubscribed or bounced, error ``suppressed: <reason>``), before it went.

A row left ``sending`` by a run that was killed goes back to ``retrying`` after 15
minutes: a claim is stamped with the clock when it is made (not the run's start, which
may be long before), so a long run's fresh claim is never taken for an abandoned one.
A run sends over a few SMTP connections at once (``CONNECTIONS``, a thread each; every
message to one address on the same one, in order), each kept for the run; once the
server cannot be reached (refused, timeout, TLS, credentials), the run's other mail is
recorded with the same error without trying each (a hanging server costs one timeout
per connection and run, not one per message). An email goes out as the bytes
``messages.email_bytes`` writes; a claim and an outcome are each one short transaction
of prepared statements, without ORM objects.

Errors are kinds ("smtp 451", "http 503", "timeout"), never an address, a URL or a
server's text. A webhook URL is a secret: httpx's request log line is kept from naming it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import secrets
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Boolean, bindparam, case, func, insert, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import registry
from ..errors import InvalidInput
from ..links import hash_token
from ..models import (
    AuditEvent,
    NotificationDelivery,
    NotificationRecipient,
    NotificationSuppression,
    utcnow,
)
from ..runtime import Runtime
from ..settings import ConfigError, Settings
from ..vault import Binding, KeyRing
from . import content as contents
from . import suppression
from .content import AlertContent, ScorecardContent

if TYPE_CHECKING:  # an evaluation queues messages; only a send needs email and SMTP
    from email.message import EmailMessage

    from . import smtp

KINDS = ("scorecard", "alert", "test")
CHANNELS = ("email", "webhook")
STATUSES = ("pending", "sending", "retrying", "sent", "bounced", "failed", "cancelled")
#: what is still to be sent
OPEN = ("pending", "retrying")
ACTOR = "writevue-notifications"
ACTION = "notification.send"
#: a row ``sending`` for longer than this was left by a run that died
STUCK_AFTER = dt.timedelta(minutes=15)
TOKEN_BYTES = 32

_log = logging.getLogger("writevue.notifications")


@dataclass(frozen=True)
class Recipient:
    """Where one message goes (``config.Recipient`` has the same shape)."""

    id: str
    channel: str
    address: str = field(repr=False)


def idempotency_key(kind: str, subject_id: str, episode: str, recipient_id: str) -> str:
    return hashlib.sha256(f"{kind}|{subject_id}|{episode}|{recipient_id}".encode()).hexdigest()


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{settings.dashboard_base_url}/unsubscribe/{token}"


def _binding(tenant_id: str, delivery_id: str) -> Binding:
    return Binding(tenant_id, None, f"delivery.{delivery_id}")


#: what begins a stored message that is compressed (zlib), before it is encrypted; one
#: stored as JSON (as before this format) begins with "{"
_PACKED = b"\x00z"


def pack(text: str) -> bytes:
    """A message's stored JSON, compressed: a scorecard's figures and their series make
    some 5 KB, which compress fivefold, and a run queues one per recipient."""
    return _PACKED + zlib.compress(text.encode(), 1)


def unpack(stored: bytes) -> bytes:
    """The JSON ``pack`` was given, or a message stored before it (JSON as it is)."""
    if stored.startswith(_PACKED):
        return zlib.decompress(stored[len(_PACKED) :])
    return stored


def stored_message(keys: KeyRing, tenant_id: str, delivery_id: str, blob: bytes) -> dict:
    """What a queued row holds (its content; from an earlier version, perhaps the
    rendered message), decrypted."""
    return json.loads(unpack(keys.decrypt(blob, _binding(tenant_id, delivery_id))))


@dataclass(frozen=True)
class Queued:
    """One message to queue: a scorecard's send or an alert's episode, for its recipients
    (each with ``id``, ``channel`` and its suppression hash ``digest`` or its ``address``)."""

    tenant_id: str
    kind: str
    subject_id: str
    episode: str
    scheduled_for: dt.datetime
    content: ScorecardContent | AlertContent
    recipients: Sequence[Any]


def enqueue(
    session: Session,
    keys: KeyRing,
    *,
    tenant_id: str,
    kind: str,
    subject_id: str,
    episode: str,
    scheduled_for: dt.datetime,
    content: ScorecardContent | AlertContent,
    recipients: Sequence[Any],
    settings: Settings,
) -> int:
    """Queue ``content`` for each recipient, once per (kind, subject, episode, recipient);
    how many rows are new (``enqueue_many`` for one message)."""
    queued = Queued(tenant_id, kind, subject_id, episode, scheduled_for, content, recipients)
    return enqueue_many(session, keys, [queued], settings)


def _digest(tenant_id: str, recipient: Any) -> str:
    digest = getattr(recipient, "digest", None)
    return digest or suppression.address_hash(tenant_id, recipient.channel, recipient.address)


def enqueue_many(
    session: Session, keys: KeyRing, queued: Sequence[Queued], settings: Settings
) -> int:
    """Queue each message for each of its recipients, once per (kind, subject, episode,
    recipient), in a few statements whatever their number; how many rows are new.

    What is stored is the message's content with its own one-time unsubscribe link (only
    the token's hash in clear), encrypted; it is rendered for its recipient when it is
    sent (``send_due``), so that a run queuing a thousand scorecards does not also build a
    thousand emails. A retry renders the same content, link and Message-ID again."""
    for item in queued:
        if item.kind not in KINDS:
            raise InvalidInput(
                f"Unknown notification kind {item.kind!r}; one of {', '.join(KINDS)}."
            )
        for recipient in item.recipients:
            if recipient.channel not in CHANNELS:
                raise InvalidInput(
                    f"Unknown channel {recipient.channel!r}; one of {', '.join(CHANNELS)}."
                )
    keyed = {
        idempotency_key(item.kind, item.subject_id, item.episode, r.id): (item, r)
        for item in queued
        for r in item.recipients
    }
    if not keyed:
        return 0
    existing: set[str] = set()
    ids = list(keyed)
    for start in range(0, len(ids), 500):
        existing.update(
            session.scalars(
                select(NotificationDelivery.idempotency_key).where(
                    NotificationDelivery.idempotency_key.in_(ids[start : start + 500])
                )
            )
        )
    stored_content: dict[int, dict] = {}
    rows = []
    for key, (item, recipient) in keyed.items():
        if key in existing:
            continue
        content = stored_content.get(id(item))
        if content is None:
            content = stored_content[id(item)] = contents.to_json(item.content)
        delivery_id = str(uuid.uuid4())
        token = secrets.token_urlsafe(TOKEN_BYTES)
        stored = {
            "channel": recipient.channel,
            "content": content,
            "unsubscribe_url": unsubscribe_url(settings, token),
        }
        rows.append(
            {
                "id": delivery_id,
                "tenant_id": item.tenant_id,
                "idempotency_key": key,
                "kind": item.kind,
                "subject_id": item.subject_id,
                "recipient_id": recipient.id,
                "channel": recipient.channel,
                "scheduled_for": item.scheduled_for,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": item.scheduled_for,
                "message_ct": keys.encrypt(
                    pack(json.dumps(stored)), _binding(item.tenant_id, delivery_id)
                ),
                "address_sha256": _digest(item.tenant_id, recipient),
                "unsubscribe_sha256": hash_token(token),
            }
        )
    if not rows:
        return 0
    try:
        with session.begin_nested():
            session.execute(insert(NotificationDelivery), rows)
        return len(rows)
    except IntegrityError:
        pass  # another run queued some of them meanwhile: one at a time, skipping those
    new = 0
    for row in rows:
        try:
            with session.begin_nested():
                session.execute(insert(NotificationDelivery), [row])
        except IntegrityError:
            continue
        new += 1
    return new


def render(stored: dict, address: str, settings: Settings, message_key: str) -> dict:
    """A stored message as it goes to ``address``: ``{"message": EmailMessage}`` or
    ``{"payload": dict}``. A message queued before contents were stored (it holds its
    rendering) is sent as it was rendered."""
    from email.message import EmailMessage
    from email.parser import BytesParser

    from . import messages

    built = _render(stored, address, settings, message_key)
    if "raw" in built:
        parser = BytesParser(_class=EmailMessage, policy=messages.POLICY)
        return {"message": parser.parsebytes(built["raw"])}
    return built


def _render(stored: dict, address: str, settings: Settings, message_key: str) -> dict:
    """``render`` as it is sent: an email as its bytes on the wire (``{"raw": bytes}``),
    except one queued before contents were stored (``{"message": EmailMessage}``)."""
    from email.message import EmailMessage
    from email.parser import Parser

    from . import messages

    if "content" not in stored:
        if stored["channel"] == "email":
            parser = Parser(_class=EmailMessage, policy=messages.POLICY)
            return {"message": parser.parsestr(stored["message"])}
        return {"payload": stored["payload"]}
    content = contents.from_json(stored["content"])
    unsubscribe = stored["unsubscribe_url"]
    if stored["channel"] == "email":
        raw = messages.email_bytes(
            content,
            sender=settings.mail_from,
            to=address,
            unsubscribe_url=unsubscribe,
            message_id=message_key,
        )
        return {"raw": raw}
    return {"payload": messages.webhook_payload(content, unsubscribe_url=unsubscribe)}


# -- sending ------------------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What one ``send_due`` did: outcomes per status, and per tenant."""

    counts: dict[str, int] = field(default_factory=dict)
    by_tenant: dict[str, dict[str, int]] = field(default_factory=dict)
    #: rows found ``sending`` after a killed run and put back to retrying
    recovered: int = 0

    def add(self, tenant_id: str, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        tenant = self.by_tenant.setdefault(tenant_id, {})
        tenant[status] = tenant.get(status, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        if not self.counts:
            line = "no messages due"
        else:
            parts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
            line = f"{self.total} messages to {len(self.by_tenant)} tenants: {parts}"
        if self.recovered:
            line += f"; {self.recovered} left sending by an earlier run put back to retrying"
        return [line]

    def as_json(self) -> dict:
        return {"counts": self.counts, "by_tenant": self.by_tenant, "recovered": self.recovered}


@dataclass(frozen=True)
class _Outcome:
    status: str
    error: str | None = None


def send_due(
    runtime: Runtime,
    *,
    tenant_ids: Iterable[str] | None = None,
    now: dt.datetime | None = None,
    run_id: str | None = None,
    limit: int | None = None,
) -> DeliveryReport:
    """Send every pending or retrying message whose time has come (of ``tenant_ids`` only,
    when given; at most ``limit``), each outcome in its own commit.

    Over up to ``CONNECTIONS`` SMTP connections at once (one thread each): a server's
    replies are waited for on one while the next message is claimed and rendered on
    another. Every message to one address goes on the same connection, in order, so a
    bounce or an unsubscribe still stops that address's later messages of the run."""
    now = now or dt.datetime.now(dt.UTC)
    settings = runtime.settings
    tenants = None if tenant_ids is None else sorted(set(tenant_ids))
    report = DeliveryReport()
    report.recovered = _recover_stuck(runtime, now, tenants, settings.notify_attempts)
    with runtime.db.session() as session:
        query = (
            select(NotificationDelivery.id, NotificationDelivery.address_sha256)
            .where(
                NotificationDelivery.status.in_(OPEN),
                NotificationDelivery.next_attempt_at <= now,
            )
            .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
        )
        if tenants is not None:
            query = query.where(NotificationDelivery.tenant_id.in_(tenants))
        if limit is not None:
            query = query.limit(limit)
        due = session.execute(query).all()
    if not due:
        return report
    # one lane a connection; an address (its hash; a row without one: by its id) one lane
    lanes: list[list[str]] = [[] for _ in range(min(CONNECTIONS, len(due)))]
    for delivery_id, digest in due:
        lanes[
            int(hashlib.sha256((digest or delivery_id).encode()).hexdigest()[:8], 16) % len(lanes)
        ].append(delivery_id)
    sender = _Sender(runtime, now, run_id, report)
    try:
        if len(lanes) == 1:
            sender.lane(lanes[0])
        else:
            with ThreadPoolExecutor(len(lanes), thread_name_prefix="writevue-send") as pool:
                for done in [pool.submit(sender.lane, lane) for lane in lanes if lane]:
                    done.result()  # a lane that failed as a whole fails the run, as before
    finally:
        sender.close()
    return report


#: SMTP connections (and threads) a run sends over at once
CONNECTIONS = 4


class _Sender:
    """What the lanes of one ``send_due`` share: the report, the webhook client, and the
    SMTP server's failure, once one lane finds it cannot be used (refused, timeout, TLS,
    credentials): every lane then records its mail with that error without trying it."""

    def __init__(self, runtime: Runtime, now: dt.datetime, run_id: str | None, report):
        self.runtime, self.now, self.run_id, self.report = runtime, now, run_id, report
        self.lock = threading.Lock()
        self.down: smtp.SendError | None = None
        self.mailers: list[smtp.SmtpSender] = []
        self.client: httpx.Client | None = None

    def lane(self, delivery_ids: Sequence[str]) -> None:
        """Send these messages in order on one SMTP connection, each outcome recorded."""
        runtime, settings = self.runtime, self.runtime.settings
        mailer: smtp.SmtpSender | None = None
        for delivery_id in delivery_ids:
            row = _claim(runtime, delivery_id, self.now, self.run_id)
            if row is None:
                continue  # another run has it
            digest = row.address_sha256
            try:
                recipient, stored = _load(runtime, row)
                if recipient is not None:
                    digest = digest or recipient.digest
                if recipient is not None and recipient.suppressed is not None:
                    outcome = _Outcome("cancelled", f"suppressed: {recipient.suppressed}")
                elif recipient is None or recipient.unsubscribed_at is not None:
                    outcome = _Outcome("cancelled")
                elif row.channel == "email":
                    if mailer is None:
                        mailer = self._mailer()
                    if mailer.down is None and self.down is not None:
                        mailer.down = self.down
                    built = _render(stored, recipient.address, settings, row.idempotency_key)
                    message = built["raw"] if "raw" in built else built["message"]
                    outcome = _send_email(mailer, message, recipient.address)
                    if mailer.down is not None and self.down is None:
                        self.down = mailer.down
                else:
                    built = _render(stored, recipient.address, settings, row.idempotency_key)
                    outcome = _send_webhook(
                        self._client(), built["payload"], recipient.address, row.idempotency_key
                    )
            except Exception as exc:  # one message's trouble never stops the others
                _log.warning("delivery %s not sent (%s)", row.id, type(exc).__name__)
                outcome = _Outcome("retrying", f"internal {type(exc).__name__}"[:200])
            status = _record(runtime, row, outcome, self.now, settings.notify_attempts, digest)
            with self.lock:
                self.report.add(row.tenant_id, status)

    def _mailer(self) -> smtp.SmtpSender:
        mailer = _mailer(self.runtime.settings)
        with self.lock:
            self.mailers.append(mailer)
        return mailer

    def _client(self) -> httpx.Client:
        with self.lock:
            if self.client is None:
                settings = self.runtime.settings
                self.client = httpx.Client(
                    timeout=settings.notify_timeout_s,
                    follow_redirects=False,
                    headers={"User-Agent": "WriteVue notifications"},
                )
            return self.client

    def close(self) -> None:
        for mailer in self.mailers:
            mailer.close()
        if self.client is not None:
            self.client.close()


def _mailer(settings: Settings) -> smtp.SmtpSender:
    from . import smtp

    try:
        return smtp.SmtpSender(smtp.SmtpConfig.from_settings(settings))
    except ConfigError as exc:
        sender = smtp.SmtpSender(None)
        sender.down = smtp.SendError(str(exc)[:200], connection=True)
        return sender


@dataclass
class _Address:
    address: str = field(repr=False)
    unsubscribed_at: dt.datetime | None
    #: the address's suppression hash, and why it is suppressed at the tenant (or None)
    digest: str
    suppressed: str | None


@dataclass(frozen=True)
class _Claimed:
    """A row claimed for sending (its columns as the claim left them), with what its
    recipient row said in the claim's transaction."""

    id: str
    tenant_id: str
    kind: str
    channel: str
    recipient_id: str
    attempts: int
    idempotency_key: str
    address_sha256: str | None
    next_attempt_at: dt.datetime
    message_ct: bytes | None = field(repr=False)
    #: the recipient row (None: removed): tenant, encrypted address, unsubscribed at
    recipient: tuple | None = field(default=None, repr=False)
    #: why the row's address hash is suppressed at the tenant (or None)
    suppressed: str | None = None


_table = NotificationDelivery.__table__
_recipients = NotificationRecipient.__table__
_suppressions = NotificationSuppression.__table__
_CLAIMED = (
    _table.c.id,
    _table.c.tenant_id,
    _table.c.kind,
    _table.c.channel,
    _table.c.recipient_id,
    _table.c.attempts,
    _table.c.idempotency_key,
    _table.c.address_sha256,
    _table.c.next_attempt_at,
    _table.c.message_ct,
)


def _claim(
    runtime: Runtime, delivery_id: str, now: dt.datetime, run_id: str | None
) -> _Claimed | None:
    """Move one due row to ``sending`` (in its own commit) and read its recipient in the
    same transaction; the row, or None when another run claimed it first. The claim is
    stamped with the clock now (``next_attempt_at``, which ``_recover_stuck`` reads), not
    with the run's ``now``: a run that began long ago and claims a row this moment holds
    a fresh claim. One statement each (``UPDATE … RETURNING``), no ORM objects: a run
    sending a thousand messages makes two thousand of these transactions."""
    stamp = max(now, dt.datetime.now(dt.UTC))
    claim, recipient_of, reason_of = _statements()
    with runtime.db.engine.begin() as connection:
        found = connection.execute(
            claim, {"_id": delivery_id, "_now": now, "_stamp": stamp, "_run": run_id}
        ).first()
        if found is None:
            return None
        row = _Claimed(*found)
        recipient = connection.execute(recipient_of, {"_id": row.recipient_id}).first()
        reason = None
        if row.address_sha256:
            reason = connection.scalar(
                reason_of,
                {"_tenant": row.tenant_id, "_channel": row.channel, "_hash": row.address_sha256},
            )
    return dataclasses.replace(
        row, recipient=None if recipient is None else tuple(recipient), suppressed=reason
    )


@functools.cache
def _statements():
    """The claim's statements, built once (building one costs more than running it)."""
    date = _table.c.next_attempt_at.type
    claim = (
        update(_table)
        .where(
            _table.c.id == bindparam("_id"),
            _table.c.status.in_(OPEN),
            _table.c.next_attempt_at <= bindparam("_now", type_=date),
        )
        .values(
            status="sending",
            attempts=_table.c.attempts + 1,
            next_attempt_at=bindparam("_stamp", type_=date),
            run_id=bindparam("_run", type_=_table.c.run_id.type),
        )
        .returning(*_CLAIMED)
    )
    recipient_of = select(
        _recipients.c.tenant_id, _recipients.c.address_ct, _recipients.c.unsubscribed_at
    ).where(_recipients.c.id == bindparam("_id"))
    reason_of = select(_suppressions.c.reason).where(
        _suppressions.c.tenant_id == bindparam("_tenant"),
        _suppressions.c.channel == bindparam("_channel"),
        _suppressions.c.address_sha256 == bindparam("_hash"),
    )
    return claim, recipient_of, reason_of


def _load(runtime: Runtime, row: _Claimed) -> tuple[_Address | None, dict]:
    """(recipient, or None when it was removed; the stored message), decrypted."""
    keys = runtime.keys
    stored = stored_message(keys, row.tenant_id, row.id, row.message_ct)
    if row.recipient is None:
        return None, stored
    tenant_id, address_ct, unsubscribed_at = row.recipient
    address = keys.decrypt(
        address_ct, Binding(tenant_id, None, f"recipient.{row.recipient_id}")
    ).decode()
    if row.address_sha256:
        return _Address(address, unsubscribed_at, row.address_sha256, row.suppressed), stored
    # a row queued before migration 0012 has no hash: the address gives it
    digest = suppression.address_hash(row.tenant_id, row.channel, address)
    with runtime.db.session() as session:
        reason = suppression.reason_of(session, row.tenant_id, row.channel, digest)
    return _Address(address, unsubscribed_at, digest, reason), stored


def _send_email(mailer: smtp.SmtpSender, message: EmailMessage | bytes, to: str) -> _Outcome:
    from . import smtp

    try:
        mailer.send(message, to)
    except smtp.SendError as exc:
        return _Outcome("bounced" if exc.permanent else "retrying", exc.kind)
    return _Outcome("sent")


#: webhook URLs being sent to, kept out of httpx's log line (``_HideWebhookUrls``)
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


class _HideWebhookUrls(logging.Filter):
    """httpx logs each request's full URL at INFO; a webhook URL is a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _in_flight_lock:
            urls = list(_in_flight)
        if not urls:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = message
        for url in urls:
            clean = clean.replace(url, "<webhook>")
        if clean != message:
            record.msg, record.args = clean, None
        return True


_HIDE = _HideWebhookUrls()
for _name in ("httpx", "httpcore"):
    if _HIDE not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_HIDE)


def _send_webhook(client: httpx.Client, payload: dict, url: str, key: str) -> _Outcome:
    with _in_flight_lock:
        _in_flight.add(url)
    try:
        response = client.post(
            url,
            content=json.dumps(payload, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": key},
        )
    except httpx.TimeoutException:
        return _Outcome("retrying", "timeout")
    except httpx.ConnectError as exc:
        refused = isinstance(exc.__cause__, ConnectionRefusedError) or "refused" in str(exc)
        return _Outcome("retrying", "refused" if refused else "connect")
    except httpx.HTTPError:
        return _Outcome("retrying", "network")
    except httpx.InvalidURL:
        return _Outcome("failed", "invalid url")
    finally:
        with _in_flight_lock:
            _in_flight.discard(url)
    code = response.status_code
    if 200 <= code < 300:
        return _Outcome("sent")
    error = f"http {code}"
    if code in (404, 410):
        return _Outcome("bounced", error)
    if code in (408, 429) or code >= 500:
        return _Outcome("retrying", error)
    return _Outcome("failed", error)


def _record(
    runtime: Runtime,
    row: _Claimed,
    outcome: _Outcome,
    now: dt.datetime,
    most: int,
    digest: str | None = None,
) -> str:
    """Write one attempt's outcome and its audit event in one commit; a bounce also
    suppresses the address (``digest``) at the tenant, cancelling its queued messages."""
    status = outcome.status
    if status == "retrying" and row.attempts >= most:
        status = "failed"
    values: dict[str, Any] = {"status": status, "error": outcome.error}
    if status == "retrying":
        values["next_attempt_at"] = now + dt.timedelta(minutes=2**row.attempts)
    else:
        values["next_attempt_at"] = None
        values["message_ct"] = None
    if status == "sent":
        values["sent_at"] = now
    details = {
        "delivery": row.id,
        "kind": row.kind,
        "channel": row.channel,
        "status": status,
        "attempt": row.attempts,
    }
    if status == "bounced" and digest:
        # the suppression (and the cancelling of the address's queued messages) in the
        # same commit
        with runtime.db.session() as session:
            recorded = session.execute(
                update(NotificationDelivery)
                .where(NotificationDelivery.id == row.id, NotificationDelivery.status == "sending")
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
            if recorded:
                suppression.suppress(
                    session, row.tenant_id, row.channel, digest, "bounced", now=now
                )
            registry.audit(session, ACTOR, ACTION, row.tenant_id, **details)
        return status
    # the common case without ORM objects: the outcome, and its audit event as
    # ``registry.audit`` records it, by statements built once
    recorded, audited = _record_statements()
    with runtime.db.engine.begin() as connection:
        connection.execute(
            recorded,
            {
                "_id": row.id,
                "_status": status,
                "_error": outcome.error,
                "_next": values["next_attempt_at"],
                "_clear": "message_ct" in values,
                "_sent": values.get("sent_at"),
            },
        )
        connection.execute(
            audited, {"_at": utcnow(), "_tenant": row.tenant_id, "_details": details}
        )
    return status


@functools.cache
def _record_statements():
    date = _table.c.next_attempt_at.type
    recorded = (
        update(_table)
        .where(_table.c.id == bindparam("_id"), _table.c.status == "sending")
        .values(
            status=bindparam("_status", type_=_table.c.status.type),
            error=bindparam("_error", type_=_table.c.error.type),
            next_attempt_at=bindparam("_next", type_=date),
            # cleared once nothing is left to send (kept for a retry)
            message_ct=case(
                (bindparam("_clear", type_=Boolean()), null()), else_=_table.c.message_ct
            ),
            sent_at=func.coalesce(bindparam("_sent", type_=date), _table.c.sent_at),
        )
    )
    events = AuditEvent.__table__
    audited = insert(events).values(
        at=bindparam("_at", type_=events.c.at.type),
        actor=ACTOR,
        action=ACTION,
        tenant_id=bindparam("_tenant", type_=events.c.tenant_id.type),
        details=bindparam("_details", type_=events.c.details.type),
        reason=None,
    )
    return recorded, audited


def _recover_stuck(runtime: Runtime, now: dt.datetime, tenants: list[str] | None, most: int) -> int:
    """Rows left ``sending`` by a run that died: back to retrying (or failed, when that was
    their last attempt)."""
    recovered = 0
    with runtime.db.session() as session:
        query = select(NotificationDelivery.id, NotificationDelivery.attempts).where(
            NotificationDelivery.status == "sending",
            NotificationDelivery.next_attempt_at < now - STUCK_AFTER,
        )
        if tenants is not None:
            query = query.where(NotificationDelivery.tenant_id.in_(tenants))
        for delivery_id, attempts in session.execute(query).all():
            final = attempts >= most
            values: dict[str, Any] = {
                "status": "failed" if final else "retrying",
                "error": "interrupted",
                "next_attempt_at": None if final else now,
            }
            if final:
                values["message_ct"] = None
            recovered += session.execute(
                update(NotificationDelivery)
                .where(
                    NotificationDelivery.id == delivery_id, NotificationDelivery.status == "sending"
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
    return recovered


# -- listing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryInfo:
    id: str
    tenant_id: str
    kind: str
    subject_id: str
    channel: str
    status: str
    attempts: int
    error: str | None
    scheduled_for: dt.datetime
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    sent_at: dt.datetime | None

    def as_json(self) -> dict:
        def iso(value):
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "kind": self.kind,
            "subject_id": self.subject_id,
            "channel": self.channel,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "scheduled_for": iso(self.scheduled_for),
            "created_at": iso(self.created_at),
            "next_attempt_at": iso(self.next_attempt_at),
            "sent_at": iso(self.sent_at),
        }


def list_deliveries(
    session: Session,
    *,
    tenant_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[DeliveryInfo]:
    """Deliveries, newest first: what was sent to whom by kind and channel, never where."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"Unknown delivery status {status!r}; one of {', '.join(STATUSES)}.")
    if not 1 <= limit <= 10_000:
        raise InvalidInput("--limit must be from 1 to 10000.")
    query = select(NotificationDelivery).order_by(
        NotificationDelivery.created_at.desc(), NotificationDelivery.id
    )
    if tenant_id is not None:
        query = query.where(
            NotificationDelivery.tenant_id == registry.parse_uuid(tenant_id, "Tenant")
        )
    if status is not None:
        query = query.where(NotificationDelivery.status == status)
    return [
        DeliveryInfo(
            id=row.id,
            tenant_id=row.tenant_id,
            kind=row.kind,
            subject_id=row.subject_id,
            channel=row.channel,
            status=row.status,
            attempts=row.attempts,
            error=row.error,
            scheduled_for=row.scheduled_for,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at,
            sent_at=row.sent_at,
        )
        for row in session.scalars(query.limit(limit))
    ]


def counts_by_status(session: Session, tenant_id: str | None = None) -> dict[str, int]:
    """How many deliveries are in each status (of one tenant, or all)."""
    query = select(NotificationDelivery.status)
    if tenant_id is not None:
        query = query.where(NotificationDelivery.tenant_id == tenant_id)
    return dict(Counter(session.scalars(query)))
