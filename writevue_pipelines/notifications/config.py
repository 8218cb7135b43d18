"""Scorecards, alert rules and where their messages go (tables ``scorecards``,
``alert_rules``, ``notification_recipients``).

A recipient is an email address or a webhook URL (Slack-compatible); both are stored
encrypted, bound to their row (``Binding(tenant, None, "recipient.<id>")``), and never
appear in a listing, a log, an error or an audit record: listings count recipients by
channel and say how many unsubscribed. Everything is checked before anything is
written, so a refused scorecard or alert leaves nothing behind.

Removing a scorecard or an alert removes its recipients and cancels what it still had
to send (pending and retrying deliveries, their rendered messages cleared); what was
sent stays on record.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .. import goals, links, registry
from ..errors import InvalidInput, NotFound
from ..formulas import parse_ref
from ..models import (
    AlertRule,
    NotificationDelivery,
    NotificationRecipient,
    NotificationSuppression,
    Scorecard,
    TenantSettings,
    utcnow,
)
from ..sources import SOURCES
from ..tenant_settings import check_tenant_ref
from ..vault import Binding, KeyRing, VaultError
from . import schedule, suppression

#: the most metrics one scorecard shows
MAX_METRICS = 15
#: the most scorecards and alert rules one tenant may have
MAX_SCORECARDS = 20
MAX_ALERTS = 50
#: the most recipients (addresses and webhooks together) of one scorecard or alert
MAX_RECIPIENTS = 50
MAX_NAME = 100
MAX_WEBHOOK_URL = 2000
CHANNELS: tuple[str, ...] = ("email", "webhook")
CONDITIONS: tuple[str, ...] = ("above", "below", "change", "anomaly")
WINDOWS: tuple[int, ...] = (1, 7)
#: an anomaly alert's default sensitivity: the robust z-score beyond which a day is unusual
DEFAULT_SENSITIVITY = 3.5
SENSITIVITY_RANGE = (1.0, 10.0)
#: deliveries that have not gone out yet, which a removal cancels
UNSENT = ("pending", "retrying")

_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_PRINTABLE_URL = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class Recipient:
    """Where one message goes, decrypted for sending: never logged or shown."""

    id: str
    #: email | webhook
    channel: str
    address: str = field(repr=False)


@dataclass(frozen=True)
class ChannelCounts:
    """One channel's recipients of a scorecard or alert: each is active, unsubscribed
    (the person asked) or bounced (the server refused it for good; see ``suppression``)."""

    active: int = 0
    unsubscribed: int = 0
    bounced: int = 0

    @property
    def total(self) -> int:
        return self.active + self.unsubscribed + self.bounced

    def as_json(self) -> dict:
        return {"active": self.active, "unsubscribed": self.unsubscribed, "bounced": self.bounced}


@dataclass(frozen=True)
class _Counts:
    email: ChannelCounts = ChannelCounts()
    webhook: ChannelCounts = ChannelCounts()

    @property
    def emails(self) -> int:
        return self.email.total

    @property
    def webhooks(self) -> int:
        return self.webhook.total

    @property
    def unsubscribed(self) -> int:
        return self.email.unsubscribed + self.webhook.unsubscribed

    @property
    def bounced(self) -> int:
        return self.email.bounced + self.webhook.bounced


def _recipients_json(item) -> dict:
    """A listing's recipient counts: totals by channel (stopped ones included), how many
    unsubscribed and bounced, and each channel's active / unsubscribed / bounced."""
    return {
        "email": item.emails,
        "webhook": item.webhooks,
        "unsubscribed": item.unsubscribed,
        "bounced": item.bounced,
        "by_channel": {
            "email": item.email_counts.as_json(),
            "webhook": item.webhook_counts.as_json(),
        },
    }


@dataclass(frozen=True)
class ScorecardInfo:
    id: str
    tenant_id: str
    name: str
    metrics: tuple[str, ...]
    period: str
    comparison: str
    cadence: str
    weekday: int | None
    day_of_month: int | None
    send_at: str
    timezone: str
    next_due_at: dt.datetime
    paused: bool
    #: recipients by channel (unsubscribed ones included) and how many unsubscribed
    emails: int
    webhooks: int
    unsubscribed: int
    created_at: dt.datetime
    #: how many recipients bounced, and each channel's active / unsubscribed / bounced
    bounced: int = 0
    email_counts: ChannelCounts = ChannelCounts()
    webhook_counts: ChannelCounts = ChannelCounts()

    @property
    def schedule(self) -> str:
        return schedule.cadence_text(
            self.cadence, self.weekday, self.day_of_month, self.send_at, self.timezone
        )

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "metrics": list(self.metrics),
            "period": self.period,
            "comparison": self.comparison,
            "cadence": self.cadence,
            "weekday": None if self.weekday is None else schedule.WEEKDAYS[self.weekday],
            "day_of_month": self.day_of_month,
            "send_at": self.send_at,
            "timezone": self.timezone,
            "schedule": self.schedule,
            "next_due_at": self.next_due_at.isoformat(),
            "paused": self.paused,
            "recipients": _recipients_json(self),
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class AlertInfo:
    id: str
    tenant_id: str
    metric: str
    dimension: str
    condition: str
    threshold: float | None
    window_days: int
    #: ok | firing
    state: str
    firing_since: dt.date | None
    last_day: dt.date | None
    paused: bool
    emails: int
    webhooks: int
    unsubscribed: int
    created_at: dt.datetime
    bounced: int = 0
    email_counts: ChannelCounts = ChannelCounts()
    webhook_counts: ChannelCounts = ChannelCounts()

    @property
    def ref(self) -> str:
        return self.metric + (f"[{self.dimension}]" if self.dimension else "")

    def describe(self) -> str:
        """ "stripe.charges below 10 (the last day)"."""
        threshold = _number(self.threshold)
        what = {
            "above": f"above {threshold}",
            "below": f"below {threshold}",
            "change": f"changes by more than {threshold}%",
            "anomaly": f"unusual (sensitivity {threshold})",
        }.get(self.condition, self.condition)
        window = "the last day" if self.window_days == 1 else f"the last {self.window_days} days"
        return f"{self.ref} {what} ({window})"

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "metric": self.metric,
            "dimension": self.dimension,
            "condition": self.condition,
            "threshold": self.threshold,
            "window_days": self.window_days,
            "description": self.describe(),
            "state": self.state,
            "firing_since": self.firing_since.isoformat() if self.firing_since else None,
            "last_day": self.last_day.isoformat() if self.last_day else None,
            "paused": self.paused,
            "recipients": _recipients_json(self),
            "created_at": self.created_at.isoformat(),
        }


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# -- checks --------------------------------------------------------------------------------


def check_email(address: Any, position: int, flag: str = "--to") -> str:
    """An email address as given, or one message naming which ``--to`` (never its text)."""
    if not (isinstance(address, str) and len(address) <= 254 and _EMAIL.fullmatch(address)):
        raise InvalidInput(f"{flag} {position} is not an email address such as name@example.com.")
    return address


def check_webhook_url(url: Any, position: int, what: str = "") -> str:
    """A webhook URL: http(s), a host, no user:password@, at most 2000 characters. The
    URL is a secret: a message names it by its place, never by its text."""
    where = f"webhook URL {position}{what}"
    if not isinstance(url, str):
        raise InvalidInput(f"{where} is not an http(s) URL with a host.")
    if len(url) > MAX_WEBHOOK_URL:
        raise InvalidInput(f"{where} is longer than {MAX_WEBHOOK_URL} characters.")
    try:
        if not _PRINTABLE_URL.fullmatch(url):
            raise ValueError
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        has_userinfo = "@" in parts.netloc
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok, has_userinfo = False, False
    if has_userinfo:
        raise InvalidInput(
            f"{where} carries a user name or password (user:password@); webhooks take "
            "their secret in the URL's path or query."
        )
    if not ok:
        raise InvalidInput(f"{where} is not an http(s) URL with a host.")
    return url


def _recipients(emails: Iterable[str], webhooks: Iterable[str]) -> list[tuple[str, str]]:
    """(channel, address) pairs checked, duplicates dropped (an address in any case)."""
    found: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for position, address in enumerate(emails or (), 1):
        address = check_email(address.strip() if isinstance(address, str) else address, position)
        key = ("email", address.lower())
        if key not in seen:
            seen.add(key)
            found.append(("email", address))
    for position, url in enumerate(webhooks or (), 1):
        url = check_webhook_url(url.strip() if isinstance(url, str) else url, position)
        if ("webhook", url) not in seen:
            seen.add(("webhook", url))
            found.append(("webhook", url))
    if not found:
        raise InvalidInput("Give at least one recipient: --to EMAIL or --webhook-file.")
    if len(found) > MAX_RECIPIENTS:
        raise InvalidInput(f"At most {MAX_RECIPIENTS} recipients; this gives {len(found)}.")
    return found


def _ref(session: Session, tenant_id: str, text: Any) -> tuple[str, str]:
    """(metric, dimension) of a metric ref the tenant can have."""
    shown = str(text)[:80]
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("expected a metric such as stripe.gross_volume")
    try:
        ref = parse_ref(text.strip())
    except InvalidInput:
        # the formula parser's "position 20" means nothing to someone naming one metric
        raise InvalidInput(
            f'"{shown}" is not a metric such as stripe.charges or stripe.gross_volume[eur].'
        ) from None
    try:
        check_tenant_ref(session, tenant_id, ref.metric, ref.dimension)
    except InvalidInput as exc:
        raise InvalidInput(f"{shown}: {exc}.") from None
    return ref.metric, ref.dimension or ""


def _shown_ref(metric: str, dimension: str) -> str:
    return metric + (f"[{dimension}]" if dimension else "")


def _count(session: Session, model, tenant_id: str) -> int:
    return session.scalar(
        select(func.count()).select_from(model).where(model.tenant_id == tenant_id)
    )


def _add_recipients(
    session: Session,
    keys: KeyRing,
    tenant_id: str,
    pairs: Sequence[tuple[str, str]],
    *,
    scorecard_id: str | None = None,
    alert_id: str | None = None,
) -> None:
    """Add these recipients; an address the tenant's messages no longer go to (it
    unsubscribed or bounced: ``suppression``) starts out unsubscribed, so adding it again
    does not start its messages again (``suppressed_count`` says how many)."""
    stopped = suppression.suppressed(session, tenant_id) if pairs else {}
    now = utcnow()
    for channel, address in pairs:
        recipient_id = str(uuid.uuid4())
        digest = suppression.address_hash(tenant_id, channel, address)
        session.add(
            NotificationRecipient(
                id=recipient_id,
                tenant_id=tenant_id,
                scorecard_id=scorecard_id,
                alert_id=alert_id,
                channel=channel,
                address_ct=keys.encrypt(address, recipient_binding(tenant_id, recipient_id)),
                address_sha256=digest,
                unsubscribed_at=now if (channel, digest) in stopped else None,
            )
        )


def recipient_binding(tenant_id: str, recipient_id: str) -> Binding:
    return Binding(tenant_id, None, f"recipient.{recipient_id}")


# -- scorecards ----------------------------------------------------------------------------


def add_scorecard(
    session: Session,
    keys: KeyRing,
    tenant_id: str,
    *,
    name: str,
    metrics: list[str],
    period: str,
    comparison: str,
    cadence: str,
    weekday: int | None = None,
    day_of_month: int | None = None,
    send_at: str = "08:00",
    emails: Iterable[str] = (),
    webhooks: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> str:
    """A new scorecard of the tenant, due at its first send time after ``now``; its id."""
    tenant_id = registry.require_tenant(session, tenant_id)
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidInput(f"The name is 1 to {MAX_NAME} printable characters.")
    metrics = list(metrics or ())
    if not metrics:
        raise InvalidInput("A scorecard shows at least one metric (--metric).")
    if len(metrics) > MAX_METRICS:
        raise InvalidInput(
            f"A scorecard shows at most {MAX_METRICS} metrics; this gives {len(metrics)}."
        )
    refs: list[tuple[str, str]] = []
    for text in metrics:
        ref = _ref(session, tenant_id, text)
        if ref in refs:
            raise InvalidInput(f"{_shown_ref(*ref)} is given twice.")
        refs.append(ref)
    schedule.check_period(period)
    if comparison not in schedule.COMPARISONS:
        raise InvalidInput(
            f'comparison "{str(comparison)[:20]}" is not one of {", ".join(schedule.COMPARISONS)}.'
        )
    schedule.check_cadence(cadence, weekday, day_of_month)
    schedule.check_period_fits(cadence, period)
    send_at = schedule.normal_send_at(send_at)
    if comparison == "goal":
        have = {(g.metric, g.dimension) for g in goals.list_goals(session, tenant_id)}
        lacking = [_shown_ref(*ref) for ref in refs if ref not in have]
        if lacking:
            names = " and ".join(
                [", ".join(lacking[:-1]), lacking[-1]] if len(lacking) > 1 else lacking
            )
            verb = "has" if len(lacking) == 1 else "have"
            raise InvalidInput(
                f"Compared with goals, but {names} {verb} no goal: set one with "
                "`writevue goal set`, or compare with previous or last_year."
            )
    pairs = _recipients(emails, webhooks)
    if _count(session, Scorecard, tenant_id) >= MAX_SCORECARDS:
        raise InvalidInput(f"A tenant has at most {MAX_SCORECARDS} scorecards; remove one first.")
    due = schedule.next_due(
        cadence,
        weekday=weekday,
        day_of_month=day_of_month,
        send_at=send_at,
        timezone=tenant_timezone(session, tenant_id),
        after=now or utcnow(),
    )
    row = Scorecard(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        name=name,
        metrics=[_shown_ref(*ref) for ref in refs],
        period=period,
        comparison=comparison,
        cadence=cadence,
        weekday=weekday,
        day_of_month=day_of_month,
        send_at=send_at,
        next_due_at=due,
    )
    session.add(row)
    session.flush()
    _add_recipients(session, keys, tenant_id, pairs, scorecard_id=row.id)
    session.flush()
    return row.id


def _recipient_counts(session: Session, column, ids: Sequence[str]) -> dict[str, _Counts]:
    if not ids:
        return {}
    # owner -> channel -> state -> count; a suppression's reason decides the state (an
    # address added again after it bounced starts out unsubscribed, but it bounced)
    found: dict[str, dict[str, dict[str, int]]] = {}
    stopped = NotificationRecipient.unsubscribed_at.is_not(None)
    rows = session.execute(
        select(
            column,
            NotificationRecipient.channel,
            stopped,
            NotificationSuppression.reason,
            func.count(),
        )
        .select_from(NotificationRecipient)
        .outerjoin(
            NotificationSuppression,
            (NotificationSuppression.tenant_id == NotificationRecipient.tenant_id)
            & (NotificationSuppression.channel == NotificationRecipient.channel)
            & (NotificationSuppression.address_sha256 == NotificationRecipient.address_sha256),
        )
        .where(column.in_(list(ids)))
        .group_by(column, NotificationRecipient.channel, stopped, NotificationSuppression.reason)
    )
    for owner, channel, unsubscribed, reason, count in rows:
        state = reason or ("unsubscribed" if unsubscribed else "active")
        by_state = found.setdefault(owner, {}).setdefault(channel, {})
        by_state[state] = by_state.get(state, 0) + count
    return {
        owner: _Counts(
            ChannelCounts(**channels.get("email", {})),
            ChannelCounts(**channels.get("webhook", {})),
        )
        for owner, channels in found.items()
    }


def suppressed_count(
    session: Session, *, scorecard_id: str | None = None, alert_id: str | None = None
) -> int:
    """How many of a scorecard's or an alert's recipients the tenant's messages no longer
    go to because the address unsubscribed or bounced earlier (``suppression``): for a
    command to say after adding them, never naming them."""
    if (scorecard_id is None) == (alert_id is None):
        raise ValueError("give one of scorecard_id and alert_id")
    column = (
        NotificationRecipient.scorecard_id
        if scorecard_id is not None
        else NotificationRecipient.alert_id
    )
    return session.scalar(
        select(func.count())
        .select_from(NotificationRecipient)
        .join(
            NotificationSuppression,
            (NotificationSuppression.tenant_id == NotificationRecipient.tenant_id)
            & (NotificationSuppression.channel == NotificationRecipient.channel)
            & (NotificationSuppression.address_sha256 == NotificationRecipient.address_sha256),
        )
        .where(column == (scorecard_id or alert_id))
    )


def _scorecard_info(row: Scorecard, counts: _Counts, timezone: str) -> ScorecardInfo:
    return ScorecardInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        metrics=tuple(row.metrics or ()),
        period=row.period,
        comparison=row.comparison,
        cadence=row.cadence,
        weekday=row.weekday,
        day_of_month=row.day_of_month,
        send_at=row.send_at,
        timezone=timezone,
        next_due_at=row.next_due_at,
        paused=row.paused_at is not None,
        emails=counts.emails,
        webhooks=counts.webhooks,
        unsubscribed=counts.unsubscribed,
        created_at=row.created_at,
        bounced=counts.bounced,
        email_counts=counts.email,
        webhook_counts=counts.webhook,
    )


def list_scorecards(session: Session, tenant_id: str) -> list[ScorecardInfo]:
    """The tenant's scorecards, oldest first."""
    tenant_id = registry.require_tenant(session, tenant_id)
    rows = session.scalars(
        select(Scorecard)
        .where(Scorecard.tenant_id == tenant_id)
        .order_by(Scorecard.created_at, Scorecard.id)
    ).all()
    counts = _recipient_counts(session, NotificationRecipient.scorecard_id, [r.id for r in rows])
    timezone = tenant_timezone(session, tenant_id)
    return [_scorecard_info(row, counts.get(row.id, _Counts()), timezone) for row in rows]


def _scorecard_row(session: Session, scorecard_id: str) -> Scorecard:
    row = session.get(Scorecard, registry.parse_uuid(scorecard_id, "Scorecard"))
    if row is None:
        raise NotFound(
            f"No scorecard with id {scorecard_id}; `writevue scorecard list TENANT_ID` shows them."
        )
    return row


def get_scorecard(session: Session, scorecard_id: str) -> ScorecardInfo:
    row = _scorecard_row(session, scorecard_id)
    counts = _recipient_counts(session, NotificationRecipient.scorecard_id, [row.id])
    return _scorecard_info(
        row, counts.get(row.id, _Counts()), tenant_timezone(session, row.tenant_id)
    )


def _cancel_unsent(session: Session, subject_id: str) -> None:
    session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.subject_id == subject_id,
            NotificationDelivery.status.in_(UNSENT),
        )
        .values(status="cancelled", message_ct=None, next_attempt_at=None)
    )


def remove_scorecard(session: Session, scorecard_id: str) -> ScorecardInfo:
    """Remove a scorecard and its recipients, cancelling what it still had to send; what
    it was."""
    info = get_scorecard(session, scorecard_id)
    _cancel_unsent(session, info.id)
    for recipient in session.scalars(
        select(NotificationRecipient).where(NotificationRecipient.scorecard_id == info.id)
    ):
        session.delete(recipient)
    session.flush()
    session.delete(session.get(Scorecard, info.id))
    session.flush()
    return info


def advance_scorecard(session: Session, scorecard_id: str, *, after: dt.datetime) -> dt.datetime:
    """Set the scorecard's next send time to the first after ``after``; that time."""
    row = _scorecard_row(session, scorecard_id)
    row.next_due_at = next_due_of(row, tenant_timezone(session, row.tenant_id), after)
    session.flush()
    return row.next_due_at


def next_due_of(row: Scorecard, timezone: str, after: dt.datetime) -> dt.datetime:
    """The scorecard's first send time after ``after`` in the tenant's ``timezone``."""
    return schedule.next_due(
        row.cadence,
        weekday=row.weekday,
        day_of_month=row.day_of_month,
        send_at=row.send_at,
        timezone=timezone,
        after=after,
    )


def due_scorecards(session: Session, now: dt.datetime) -> list[tuple[str, str, dt.datetime]]:
    """(scorecard id, tenant id, scheduled for) of every unpaused scorecard due by ``now``,
    the longest due first."""
    rows = session.execute(
        select(Scorecard.id, Scorecard.tenant_id, Scorecard.next_due_at)
        .where(Scorecard.paused_at.is_(None), Scorecard.next_due_at <= now)
        .order_by(Scorecard.next_due_at, Scorecard.id)
    )
    return [(sid, tid, due) for sid, tid, due in rows]


# -- alerts --------------------------------------------------------------------------------


def _threshold(condition: str, threshold: Any) -> float:
    if condition == "anomaly" and threshold is None:
        return DEFAULT_SENSITIVITY
    if threshold is None:
        if condition == "change":
            raise InvalidInput("A change alert needs a positive percentage (--change 20).")
        raise InvalidInput(f"An {condition} alert needs a threshold (--{condition} X).")
    try:
        value = float(threshold)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput("The threshold is not a number.") from None
    if not math.isfinite(value):
        raise InvalidInput("The threshold must be a finite number.")
    if condition == "change" and value <= 0:
        raise InvalidInput("A change alert needs a positive percentage (--change 20 for ±20%).")
    if condition == "anomaly":
        low, high = SENSITIVITY_RANGE
        if not low <= value <= high:
            raise InvalidInput(
                f"The sensitivity is a robust z-score between {low:g} and {high:g} "
                f"(default {DEFAULT_SENSITIVITY}; lower flags more days)."
            )
    return value


def add_alert(
    session: Session,
    keys: KeyRing,
    tenant_id: str,
    *,
    metric: str,
    condition: str,
    threshold: float | None = None,
    window_days: int = 1,
    emails: Iterable[str] = (),
    webhooks: Iterable[str] = (),
) -> str:
    """A new alert rule of the tenant; its id.

    above / below: ``threshold`` is the value; change: a positive percentage (20 fires
    on a change of more than ±20% against the window before); anomaly: the robust
    z-score (default 3.5). ``window_days``: the value judged is the last whole day (1)
    or the last 7 whole days (7; not for anomalies, which judge single days against the
    same weekday's history).
    """
    tenant_id = registry.require_tenant(session, tenant_id)
    if condition not in CONDITIONS:
        raise InvalidInput(
            f'condition "{str(condition)[:20]}" is not one of {", ".join(CONDITIONS)}.'
        )
    metric, dimension = _ref(session, tenant_id, metric)
    if not dimension and _money_in_currencies(session, tenant_id, metric):
        raise InvalidInput(
            f"{metric} is money in each currency, and an alert would add up different "
            f"currencies: name one, as {metric}[usd] or {metric}[eur]."
        )
    value = _threshold(condition, threshold)
    if window_days not in WINDOWS:
        raise InvalidInput("The window is 1 or 7 days (--window 1|7).")
    if condition == "anomaly" and window_days != 1:
        raise InvalidInput(
            "An anomaly alert judges single days against the same weekday's history (--window 1)."
        )
    pairs = _recipients(emails, webhooks)
    same = session.scalar(
        select(AlertRule.id).where(
            AlertRule.tenant_id == tenant_id,
            AlertRule.metric == metric,
            AlertRule.dimension == dimension,
            AlertRule.condition == condition,
            AlertRule.threshold == value,
            AlertRule.window_days == window_days,
        )
    )
    if same is not None:
        raise InvalidInput(
            f"The tenant has the same alert already ({same}); add recipients to it with "
            "`writevue alert recipients`."
        )
    if _count(session, AlertRule, tenant_id) >= MAX_ALERTS:
        raise InvalidInput(f"A tenant has at most {MAX_ALERTS} alerts; remove one first.")
    row = AlertRule(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        metric=metric,
        dimension=dimension,
        condition=condition,
        threshold=value,
        window_days=window_days,
        state="ok",
    )
    session.add(row)
    session.flush()
    _add_recipients(session, keys, tenant_id, pairs, alert_id=row.id)
    session.flush()
    return row.id


def _money_in_currencies(session: Session, tenant_id: str, metric: str) -> bool:
    """Whether a stored metric is money without a currency of its own: its facts carry
    the currency as their dimension (Stripe's gross volume; a REST spec's money metric),
    so its total adds up USD and EUR."""
    source, _, name = metric.partition(".")
    if source == "rest":
        rest = SOURCES["rest"]
        for connection in registry.list_connections(session, tenant_id=tenant_id, source="rest"):
            meta = rest.metric_meta(connection).get(name)
            if meta is not None and meta.unit == "money":
                return True
        return False
    found = SOURCES.get(source)
    return found is not None and found.metric_units.get(name) == "money"


def _alert_info(row: AlertRule, counts: _Counts) -> AlertInfo:
    return AlertInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        metric=row.metric,
        dimension=row.dimension or "",
        condition=row.condition,
        threshold=row.threshold,
        window_days=row.window_days,
        state=row.state,
        firing_since=row.firing_since,
        last_day=row.last_day,
        paused=row.paused_at is not None,
        emails=counts.emails,
        webhooks=counts.webhooks,
        unsubscribed=counts.unsubscribed,
        created_at=row.created_at,
        bounced=counts.bounced,
        email_counts=counts.email,
        webhook_counts=counts.webhook,
    )


def list_alerts(session: Session, tenant_id: str) -> list[AlertInfo]:
    """The tenant's alert rules, oldest first."""
    tenant_id = registry.require_tenant(session, tenant_id)
    rows = session.scalars(
        select(AlertRule)
        .where(AlertRule.tenant_id == tenant_id)
        .order_by(AlertRule.created_at, AlertRule.id)
    ).all()
    counts = _recipient_counts(session, NotificationRecipient.alert_id, [r.id for r in rows])
    return [_alert_info(row, counts.get(row.id, _Counts())) for row in rows]


def get_alert(session: Session, alert_id: str) -> AlertInfo:
    row = _alert_row(session, alert_id)
    counts = _recipient_counts(session, NotificationRecipient.alert_id, [row.id])
    return _alert_info(row, counts.get(row.id, _Counts()))


def remove_alert(session: Session, alert_id: str) -> AlertInfo:
    """Remove an alert rule and its recipients, cancelling what it still had to send."""
    info = get_alert(session, alert_id)
    _cancel_unsent(session, info.id)
    for recipient in session.scalars(
        select(NotificationRecipient).where(NotificationRecipient.alert_id == info.id)
    ):
        session.delete(recipient)
    session.flush()
    session.delete(session.get(AlertRule, info.id))
    session.flush()
    return info


# -- pausing, resuming, changing recipients -----------------------------------------------


def _alert_row(session: Session, alert_id: str) -> AlertRule:
    row = session.get(AlertRule, registry.parse_uuid(alert_id, "Alert"))
    if row is None:
        raise NotFound(f"No alert with id {alert_id}; `writevue alert list TENANT_ID` shows them.")
    return row


def pause_scorecard(
    session: Session, scorecard_id: str, *, now: dt.datetime | None = None
) -> ScorecardInfo:
    """Stop sending a scorecard until it is resumed (pausing a paused one changes nothing)."""
    row = _scorecard_row(session, scorecard_id)
    if row.paused_at is None:
        row.paused_at = now or utcnow()
        session.flush()
    return get_scorecard(session, row.id)


def resume_scorecard(
    session: Session, scorecard_id: str, *, now: dt.datetime | None = None
) -> ScorecardInfo:
    """Send a paused scorecard again, from its first send time after ``now``: the sends it
    missed while paused are not made up."""
    row = _scorecard_row(session, scorecard_id)
    if row.paused_at is not None:
        row.paused_at = None
        advance_scorecard(session, row.id, after=now or utcnow())
    return get_scorecard(session, row.id)


def pause_alert(session: Session, alert_id: str, *, now: dt.datetime | None = None) -> AlertInfo:
    """Stop judging an alert rule until it is resumed."""
    row = _alert_row(session, alert_id)
    if row.paused_at is None:
        row.paused_at = now or utcnow()
        session.flush()
    return get_alert(session, row.id)


def resume_alert(session: Session, alert_id: str) -> AlertInfo:
    """Judge a paused alert rule again, from the next evaluation."""
    row = _alert_row(session, alert_id)
    if row.paused_at is not None:
        row.paused_at = None
        session.flush()
    return get_alert(session, row.id)


@dataclass(frozen=True)
class RecipientChange:
    """What ``change_recipients`` did, in counts (never an address)."""

    added: int
    #: given to add but a recipient already (one that unsubscribed stays unsubscribed)
    already: int
    removed: int


def _address_key(channel: str, address: str) -> tuple[str, str]:
    return (channel, address.strip().lower() if channel == "email" else address.strip())


def _checked_addresses(
    emails: Iterable[str], webhooks: Iterable[str], *, flag: str, what: str
) -> list[tuple[str, str, str, int]]:
    """(channel, address, key, position) of each address checked, repeats dropped."""
    found: list[tuple[str, str, str, int]] = []
    seen: set[tuple[str, str]] = set()
    given = [("email", a, n) for n, a in enumerate(emails or (), 1)]
    given += [("webhook", u, n) for n, u in enumerate(webhooks or (), 1)]
    for channel, address, position in given:
        address = address.strip() if isinstance(address, str) else address
        if channel == "email":
            address = check_email(address, position, flag)
        else:
            address = check_webhook_url(address, position, what)
        key = _address_key(channel, address)
        if key not in seen:
            seen.add(key)
            found.append((channel, address, key[1], position))
    return found


def change_recipients(
    session: Session,
    keys: KeyRing,
    *,
    scorecard_id: str | None = None,
    alert_id: str | None = None,
    add_emails: Iterable[str] = (),
    add_webhooks: Iterable[str] = (),
    remove_emails: Iterable[str] = (),
    remove_webhooks: Iterable[str] = (),
) -> RecipientChange:
    """Add recipients to a scorecard or an alert, or remove some by their address (an
    email in any case). A removed recipient's messages not sent yet are cancelled. An
    address already there is left as it is: one that unsubscribed stays unsubscribed.
    Everything is checked before anything changes; a message names an address by its
    place, never by its text."""
    if (scorecard_id is None) == (alert_id is None):
        raise ValueError("give one of scorecard_id and alert_id")
    if scorecard_id is not None:
        owner: Scorecard | AlertRule = _scorecard_row(session, scorecard_id)
        column, word = NotificationRecipient.scorecard_id, "scorecard"
    else:
        owner = _alert_row(session, alert_id)
        column, word = NotificationRecipient.alert_id, "alert"
    adds = _checked_addresses(add_emails, add_webhooks, flag="--add-to", what="")
    removes = _checked_addresses(
        remove_emails, remove_webhooks, flag="--remove-to", what=" to remove"
    )
    if not adds and not removes:
        raise InvalidInput(
            "Give an address to add or remove: --add-to, --remove-to, --add-webhook-file "
            "or --remove-webhook-file."
        )
    if {(c, k) for c, _, k, _ in adds} & {(c, k) for c, _, k, _ in removes}:
        raise InvalidInput("An address is both added and removed; give it once.")
    rows = session.scalars(select(NotificationRecipient).where(column == owner.id)).all()
    current = {
        _address_key(
            row.channel, keys.decrypt_text(row.address_ct, recipient_binding(row.tenant_id, row.id))
        ): row
        for row in rows
    }
    gone: list[NotificationRecipient] = []
    for channel, _, key, position in removes:
        row = current.get((channel, key))
        if row is None:
            where = (
                f"--remove-to {position}"
                if channel == "email"
                else f"webhook URL {position} to remove"
            )
            raise InvalidInput(f"{where} is not a recipient of this {word}.")
        gone.append(row)
    new = [(channel, address) for channel, address, key, _ in adds if (channel, key) not in current]
    remaining = len(rows) - len(gone) + len(new)
    if remaining < 1:
        raise InvalidInput(
            f"A {word} keeps at least one recipient; to stop it, pause or remove the {word} "
            f"(`writevue {word} pause|remove`)."
        )
    if remaining > MAX_RECIPIENTS:
        raise InvalidInput(
            f"A {word} has at most {MAX_RECIPIENTS} recipients; this makes {remaining}."
        )
    if gone:
        session.execute(
            update(NotificationDelivery)
            .where(
                NotificationDelivery.recipient_id.in_([row.id for row in gone]),
                NotificationDelivery.status.in_(UNSENT),
            )
            .values(status="cancelled", message_ct=None, next_attempt_at=None)
        )
        for row in gone:
            session.delete(row)
        session.flush()
    _add_recipients(
        session,
        keys,
        owner.tenant_id,
        new,
        scorecard_id=owner.id if word == "scorecard" else None,
        alert_id=owner.id if word == "alert" else None,
    )
    session.flush()
    return RecipientChange(added=len(new), already=len(adds) - len(new), removed=len(gone))


def subject_names(
    session: Session, subjects: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """(kind, subject id) -> what a delivery was about, for a listing: the scorecard's
    name, the alert's description ("test: …" for a test message), "(removed)" when gone."""
    wanted = set(subjects)
    cards = sorted({sid for kind, sid in wanted if kind == "scorecard"})
    rules = sorted({sid for kind, sid in wanted if kind != "scorecard"})
    names: dict[str, str] = {}
    for start in range(0, len(cards), 500):
        names.update(
            session.execute(
                select(Scorecard.id, Scorecard.name).where(
                    Scorecard.id.in_(cards[start : start + 500])
                )
            ).all()
        )
    for start in range(0, len(rules), 500):
        for row in session.scalars(
            select(AlertRule).where(AlertRule.id.in_(rules[start : start + 500]))
        ):
            names[row.id] = _alert_info(row, _Counts()).describe()
    found = {}
    for kind, sid in wanted:
        name = names.get(sid)
        if name is None:
            found[(kind, sid)] = "(removed)"
        else:
            found[(kind, sid)] = f"test: {name}" if kind == "test" else name
    return found


# -- recipients, time zone, link -----------------------------------------------------------


def active_recipients(
    session: Session,
    keys: KeyRing,
    *,
    scorecard_id: str | None = None,
    alert_id: str | None = None,
) -> list[Recipient]:
    """The scorecard's or the alert's recipients that have not unsubscribed and whose
    address the tenant has not suppressed (unsubscribed or bounced), decrypted."""
    if (scorecard_id is None) == (alert_id is None):
        raise ValueError("give one of scorecard_id and alert_id")
    column = (
        NotificationRecipient.scorecard_id
        if scorecard_id is not None
        else NotificationRecipient.alert_id
    )
    rows = session.scalars(
        select(NotificationRecipient)
        .where(
            column == (scorecard_id or alert_id),
            NotificationRecipient.unsubscribed_at.is_(None),
        )
        .order_by(NotificationRecipient.created_at, NotificationRecipient.id)
    ).all()
    stopped = suppression.suppressed(session, rows[0].tenant_id) if rows else {}
    found = []
    for row in rows:
        address = keys.decrypt_text(row.address_ct, recipient_binding(row.tenant_id, row.id))
        # hashed from the address: a row made before migration 0012 has no hash of its own
        digest = suppression.address_hash(row.tenant_id, row.channel, address)
        if (row.channel, digest) not in stopped:
            found.append(Recipient(row.id, row.channel, address))
    return found


def tenant_timezone(session: Session, tenant_id: str) -> str:
    """The tenant's IANA time zone (UTC unless set)."""
    row = session.get(TenantSettings, tenant_id)
    name = (row.timezone if row is not None else None) or "UTC"
    try:
        return schedule.check_timezone(name)
    except InvalidInput:
        return "UTC"


#: what stands for the dashboard link's token in a preview: a preview is a file, and a
#: file is copied and attached more carelessly than a message is forwarded
PREVIEW_LINK = "<dashboard-link>"


def preview_link_url(session: Session, keys: KeyRing, tenant_id: str, settings) -> str | None:
    """What a preview shows where a message would carry the dashboard link: the address
    with a placeholder for its token; None when the messages carry no link."""
    if message_link_url(session, keys, tenant_id, settings) is None:
        return None
    return settings.dashboard_url(PREVIEW_LINK)


def message_link_url(session: Session, keys: KeyRing, tenant_id: str, settings) -> str | None:
    """The dashboard URL to put into the tenant's messages: only when the operator opted
    in (``writevue tenant set --link-in-messages on``) and that link is still live."""
    row = session.get(TenantSettings, tenant_id)
    if row is None or row.message_link_ct is None:
        return None
    try:
        token = keys.decrypt_text(row.message_link_ct, Binding(tenant_id, None, "message_link"))
    except VaultError:
        return None  # no link rather than a wrong one
    if not links.live_token_hashes(session, [links.hash_token(token)]):
        return None
    return settings.dashboard_url(token)


__all__ = [
    "CONDITIONS",
    "MAX_ALERTS",
    "MAX_METRICS",
    "MAX_SCORECARDS",
    "PREVIEW_LINK",
    "AlertInfo",
    "ChannelCounts",
    "Recipient",
    "RecipientChange",
    "ScorecardInfo",
    "active_recipients",
    "add_alert",
    "add_scorecard",
    "advance_scorecard",
    "change_recipients",
    "check_email",
    "check_webhook_url",
    "due_scorecards",
    "get_alert",
    "get_scorecard",
    "list_alerts",
    "list_scorecards",
    "message_link_url",
    "next_due_of",
    "pause_alert",
    "pause_scorecard",
    "preview_link_url",
    "recipient_binding",
    "remove_alert",
    "remove_scorecard",
    "resume_alert",
    "resume_scorecard",
    "subject_names",
    "suppressed_count",
    "tenant_timezone",
]
