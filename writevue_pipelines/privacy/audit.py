"""Staff audit: who read which tenant's data, and when.

Every operator command that reads a tenant's data records an event: the actor
(``--actor`` or the OS user), the action, the tenant id and the time. Events hold
ids and counts only. Erasure records (``deletion_requests``) are shown alongside,
since an erasure removes the tenant's other events with the rest of its rows.
"""

from __future__ import annotations

import datetime as dt
import getpass
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from .. import registry
from ..errors import InvalidInput
from ..models import DeletionRequest
from ..runtime import Runtime

_MAX_ACTOR = 200


@dataclass(frozen=True)
class AuditEntry:
    at: dt.datetime
    actor: str
    action: str
    tenant_id: str | None
    details: dict[str, Any]

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


def record_access(
    runtime: Runtime, actor: str, action: str, tenant_id: str, **details: Any
) -> None:
    """Record, in its own commit, that ``actor`` read this tenant's data."""
    with runtime.db.session() as session:
        registry.audit(session, actor, action, tenant_id, **details)


def list_events(runtime: Runtime, tenant_id: str | None = None) -> list[AuditEntry]:
    """Audit events and erasure records, oldest first, of one tenant or of all."""
    if tenant_id is not None:
        tenant_id = registry.parse_uuid(tenant_id, "Tenant")
    with runtime.db.session() as session:
        entries = [
            AuditEntry(e.at, e.actor, e.action, e.tenant_id, dict(e.details or {}))
            for e in registry.list_audit(session, tenant_id)
        ]
        query = select(DeletionRequest)
        if tenant_id is not None:
            query = query.where(DeletionRequest.tenant_id == tenant_id)
        for request in session.scalars(query):
            entries.append(
                AuditEntry(
                    request.requested_at,
                    request.requested_by,
                    "tenant.erasure.requested",
                    request.tenant_id,
                    {"request": request.id},
                )
            )
            if request.completed_at is not None:
                entries.append(
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
                        },
                    )
                )
    entries.sort(key=lambda e: e.at)
    return entries
