"""Staff audit: who read which tenant's data or created access to it, when, and why.

Every operator command that reveals a tenant's personal data or figures, or creates
access to them, records an event: the actor (``--actor`` or the OS user), the action,
the tenant id (none for a list of many tenants, which records how many it showed), the
time and the reason staff gave (``--reason``, ``WRITEVUE_AUDIT_REASON``, else
"unspecified" in a script; a terminal is refused without one). Events hold ids and
counts only; the reason is free text and must cite a ticket, not personal data, so one
that holds an email address is refused. Erasure records (``deletion_requests``) are
shown alongside, since an erasure removes the tenant's other events with the rest of
its rows.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from .. import registry
from ..errors import InvalidInput
from ..models import DeletionRequest
from ..runtime import Runtime

_MAX_ACTOR = 200
MAX_REASON = 500
#: recorded when a script gives no reason (a terminal is refused instead)
UNSPECIFIED = "unspecified"
_EMAIL_LIKE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class AuditEntry:
    at: dt.datetime
    actor: str
    action: str
    tenant_id: str | None
    details: dict[str, Any]
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"at": self.at.isoformat()}


def operator_name(actor: str | None = None) -> str:
    """The actor to record: the one given, else the OS user running the command."""
    if actor is not None:
        actor = actor.strip()
        if not actor or len(actor) > _MAX_ACTOR or not actor.isprintable():
            raise InvalidInput(f"--actor must be a name of 1 to {_MAX_ACTOR} printable characters.")
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment (a container)
        return "unknown"


def audit_reason(reason: str) -> str:
    """The reason to record, checked: printable, length-limited, no email address."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON or not reason.isprintable():
        raise InvalidInput(
            f"The audit reason must be 1 to {MAX_REASON} printable characters on one line."
        )
    if _EMAIL_LIKE.search(reason):
        raise InvalidInput(
            "The audit reason is kept for years: cite a ticket, not an email address."
        )
    return reason


def record_access(
    runtime: Runtime,
    actor: str,
    action: str,
    tenant_id: str | None,
    *,
    reason: str | None = None,
    **details: Any,
) -> None:
    """Record, in its own commit, that ``actor`` read this tenant's data (or, with no
    tenant id, many tenants' data: ``details`` then say how many)."""
    with runtime.db.session() as session:
        registry.audit(session, actor, action, tenant_id, reason=reason, **details)


def list_events(
    runtime: Runtime,
    tenant_id: str | None = None,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[AuditEntry]:
    """Audit events and erasure records, oldest first, of one tenant or of all.

    ``action`` is an action (``tenant.show``) or, ending in ``.``, a prefix (``tenant.``);
    ``since`` is inclusive and ``until`` exclusive. The filters apply to the erasure
    records too (``tenant.erasure.requested`` and ``tenant.erased``, by whoever asked).
    """
    if tenant_id is not None:
        tenant_id = registry.parse_uuid(tenant_id, "Tenant")
    with runtime.db.session() as session:
        entries = [
            AuditEntry(e.at, e.actor, e.action, e.tenant_id, dict(e.details or {}), e.reason)
            for e in registry.list_audit(
                session, tenant_id, actor=actor, action=action, since=since, until=until
            )
        ]
        query = select(DeletionRequest)
        if tenant_id is not None:
            query = query.where(DeletionRequest.tenant_id == tenant_id)
        if actor is not None:
            query = query.where(DeletionRequest.requested_by == actor)
        erasures: list[AuditEntry] = []
        for request in session.scalars(query):
            erasures.append(
                AuditEntry(
                    request.requested_at,
                    request.requested_by,
                    "tenant.erasure.requested",
                    request.tenant_id,
                    {"request": request.id},
                )
            )
            if request.completed_at is not None:
                erasures.append(
                    AuditEntry(
                        request.completed_at,
                        request.requested_by,
                        "tenant.erased",
                        request.tenant_id,
                        {
                            "request": request.id,
                            "removed": dict(request.removed or {}),
                            "revocations": dict(request.revocations or {}),
                            "verified": request.verified,
                            "needs_operator_action": list(request.actions or []),
                        },
                    )
                )
    entries += [e for e in erasures if _matches(e, action, since, until)]
    entries.sort(key=lambda e: e.at)
    return entries


def _matches(
    entry: AuditEntry, action: str | None, since: dt.datetime | None, until: dt.datetime | None
) -> bool:
    if action is not None and not (
        entry.action.startswith(action) if action.endswith(".") else entry.action == action
    ):
        return False
    at = entry.at if entry.at.tzinfo else entry.at.replace(tzinfo=dt.UTC)
    return (since is None or at >= since) and (until is None or at < until)
