"""Unsubscribe links: a one-time token per message that stops its address's deliveries.

Every message carries ``/unsubscribe/<token>``: 32 random bytes, URL-safe, of which only
the SHA-256 is stored (on the delivery row), like a dashboard link's. Spending it stops
the recipient the message went to and every other recipient row of the same tenant with
the same address (the person asked to stop hearing from this client, not from one of
its scorecards), and cancels their messages still queued. It also suppresses the address
at the tenant (``suppression``, reason ``unsubscribed``): the delivery row keeps the
address's hash, so a token spent after its scorecard was removed still stops the address,
and a recipient added again with it starts out unsubscribed. Another tenant's messages to
the same address are that tenant's business and go on. A spent token, an unknown one
and a malformed one all answer False, after the same lookup.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..links import hash_token
from ..models import NotificationDelivery, NotificationRecipient, utcnow
from ..vault import Binding, KeyRing, VaultError
from . import suppression
from .delivery import OPEN


def unsubscribe(
    session: Session, keys: KeyRing, token: str, *, now: dt.datetime | None = None
) -> bool:
    """Spend ``token``: True when it was live (its address is now unsubscribed at this
    tenant), False for a spent, unknown or malformed token."""
    return spend(session, keys, token, now=now) is not None


def spend(
    session: Session, keys: KeyRing, token: str, *, now: dt.datetime | None = None
) -> str | None:
    """``unsubscribe``, saying whose messages stopped: the tenant's id, or None."""
    now = now or utcnow()
    token_hash = hash_token(token or "")
    row = session.scalars(
        select(NotificationDelivery)
        .where(
            NotificationDelivery.unsubscribe_sha256 == token_hash,
            NotificationDelivery.unsubscribe_used_at.is_(None),
        )
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    spent = session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.id == row.id,
            NotificationDelivery.unsubscribe_used_at.is_(None),
        )
        .values(unsubscribe_used_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # spent meanwhile by another request
        return None
    recipient = session.get(NotificationRecipient, row.recipient_id)
    address = _address(keys, recipient) if recipient is not None else None
    # the hash the delivery was queued with; a row queued before migration 0012 has none,
    # and then its recipient's address (when it is still there) gives it
    digest = row.address_sha256 or (
        suppression.address_hash(row.tenant_id, row.channel, address) if address else None
    )
    stopped = [recipient.id] if recipient is not None else []
    if digest is not None:
        suppression.suppress(session, row.tenant_id, row.channel, digest, "unsubscribed", now=now)
        others = session.scalars(
            select(NotificationRecipient).where(
                NotificationRecipient.tenant_id == row.tenant_id,
                NotificationRecipient.channel == row.channel,
                NotificationRecipient.address_sha256.is_(None)
                | (NotificationRecipient.address_sha256 == digest),
            )
        )
        stopped += [o.id for o in others if o.id not in stopped and _same(keys, o, digest)]
    if not stopped:  # neither hash nor recipient: nothing left to stop
        return row.tenant_id
    session.execute(
        update(NotificationRecipient)
        .where(
            NotificationRecipient.id.in_(stopped),
            NotificationRecipient.unsubscribed_at.is_(None),
        )
        .values(unsubscribed_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.recipient_id.in_(stopped),
            NotificationDelivery.status.in_(OPEN),
        )
        .values(status="cancelled", message_ct=None, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    return row.tenant_id


def _address(keys: KeyRing, recipient: NotificationRecipient) -> str | None:
    try:
        return keys.decrypt(
            recipient.address_ct,
            Binding(recipient.tenant_id, None, f"recipient.{recipient.id}"),
        ).decode()
    except (VaultError, UnicodeDecodeError):
        return None


def _same(keys: KeyRing, other: NotificationRecipient, digest: str) -> bool:
    """Whether a recipient row has the address with this hash: by its own hash, or (a row
    made before migration 0012) by its decrypted address."""
    if other.address_sha256 is not None:
        return other.address_sha256 == digest
    address = _address(keys, other)
    return address is not None and (
        suppression.address_hash(other.tenant_id, other.channel, address) == digest
    )
