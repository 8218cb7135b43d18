"""Addresses a tenant's messages no longer go to (table ``notification_suppressions``).

An address is suppressed when its person spends an unsubscribe link (reason
``unsubscribed``) or when the server refuses it for good: an SMTP 5xx, a webhook's 404 or
410 (reason ``bounced``). A suppression belongs to the tenant, not to a scorecard or an
alert: it outlives their removal, a recipient added again with that address starts out
unsubscribed, and a message queued to it is cancelled instead of sent. Another tenant's
messages to the same address are that tenant's business and go on.

Only a hash is kept: sha256 of ``"<tenant id>|<channel>|<address>"`` (an email stripped and
lower-cased, a webhook URL stripped). It matches without decrypting anything, and it is
not the address; it is erased with the tenant and exported as it is.

An unsubscribe outranks a bounce: a bounced address whose person then unsubscribes is
recorded as unsubscribed (what they asked for), never the other way round.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import NotificationDelivery, NotificationSuppression, utcnow

REASONS: tuple[str, ...] = ("unsubscribed", "bounced")
#: deliveries not sent yet, which a suppression cancels (as ``delivery.OPEN``)
_QUEUED = ("pending", "retrying")


def normalise(channel: str, address: str) -> str:
    """The address as it is compared: an email stripped and lower-cased, a URL stripped."""
    address = (address or "").strip()
    return address.lower() if channel == "email" else address


def address_hash(tenant_id: str, channel: str, address: str) -> str:
    """The suppression key of ``address`` at this tenant on this channel."""
    text = f"{tenant_id}|{channel}|{normalise(channel, address)}"
    return hashlib.sha256(text.encode()).hexdigest()


def reason_of(session: Session, tenant_id: str, channel: str, digest: str | None) -> str | None:
    """Why the address with this hash is suppressed at this tenant, or None."""
    if not digest:
        return None
    return session.scalar(
        select(NotificationSuppression.reason).where(
            NotificationSuppression.tenant_id == tenant_id,
            NotificationSuppression.channel == channel,
            NotificationSuppression.address_sha256 == digest,
        )
    )


def suppressed(session: Session, tenant_id: str) -> dict[tuple[str, str], str]:
    """Every suppression of the tenant: (channel, hash) -> reason."""
    rows = session.execute(
        select(
            NotificationSuppression.channel,
            NotificationSuppression.address_sha256,
            NotificationSuppression.reason,
        ).where(NotificationSuppression.tenant_id == tenant_id)
    )
    return {(channel, digest): reason for channel, digest, reason in rows}


def suppress(
    session: Session,
    tenant_id: str,
    channel: str,
    digest: str,
    reason: str,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Record that the tenant's messages no longer go to this address (once; an
    unsubscribe replaces a bounce), and cancel its messages still queued."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    found = reason_of(session, tenant_id, channel, digest)
    if found is None:
        try:
            with session.begin_nested():  # another request recorded it meanwhile: fine
                session.add(
                    NotificationSuppression(
                        tenant_id=tenant_id,
                        channel=channel,
                        address_sha256=digest,
                        reason=reason,
                        created_at=now or utcnow(),
                    )
                )
        except IntegrityError:
            found = reason_of(session, tenant_id, channel, digest)
    if found == "bounced" and reason == "unsubscribed":
        session.execute(
            update(NotificationSuppression)
            .where(
                NotificationSuppression.tenant_id == tenant_id,
                NotificationSuppression.channel == channel,
                NotificationSuppression.address_sha256 == digest,
            )
            .values(reason=reason)
            .execution_options(synchronize_session=False)
        )
    cancel_queued(session, tenant_id, channel, digest, reason=found or reason)


def cancel_queued(
    session: Session, tenant_id: str, channel: str, digest: str, *, reason: str
) -> int:
    """Cancel the tenant's queued messages to this address; how many."""
    return session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.tenant_id == tenant_id,
            NotificationDelivery.channel == channel,
            NotificationDelivery.address_sha256 == digest,
            NotificationDelivery.status.in_(_QUEUED),
        )
        .values(
            status="cancelled",
            message_ct=None,
            next_attempt_at=None,
            error=f"suppressed: {reason}",
        )
        .execution_options(synchronize_session=False)
    ).rowcount


@dataclass(frozen=True)
class SuppressionInfo:
    channel: str
    address_sha256: str
    reason: str
    created_at: dt.datetime

    def as_json(self) -> dict:
        return {
            "channel": self.channel,
            "address_sha256": self.address_sha256,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
        }


def list_suppressions(session: Session, tenant_id: str) -> list[SuppressionInfo]:
    """The tenant's suppressions, oldest first: hashes and reasons, no address."""
    rows = session.scalars(
        select(NotificationSuppression)
        .where(NotificationSuppression.tenant_id == tenant_id)
        .order_by(NotificationSuppression.created_at, NotificationSuppression.address_sha256)
    )
    return [SuppressionInfo(r.channel, r.address_sha256, r.reason, r.created_at) for r in rows]


__all__ = [
    "REASONS",
    "SuppressionInfo",
    "address_hash",
    "cancel_queued",
    "list_suppressions",
    "normalise",
    "reason_of",
    "suppress",
    "suppressed",
]
