"""Removal of one connection: revoke its grant, delete its data, prove nothing of it is left.

A tenant's erasure, for one connection of a tenant that stays (`writevue connection
remove`), built from the erasure's own parts (``erasure``, ``scope``, ``verification``).
In the order it happens; an interrupted removal is finished by running it again:

1. ``marked``: the connection turns ``erasing`` in its own commit. From then on no
   refresh writes for it (``registry.writable_connection``).
2. ``revoked``: an OAuth2 grant is revoked at the provider (``erasure.revoke_grants``).
   If that fails nothing is deleted: the connection stays ``erasing`` (refreshes
   stopped, credential kept for the retry) and running the removal again retries;
   ``confirm_revoked`` (the client removed the access at the provider) goes on without.
3. ``deleted``: one transaction deletes the connection's rows from every table that can
   hold them, worked out from the schema (``scope.connection_clause``: the connection,
   its credentials, cursor, facts, pending OAuth states, the invite it came from), drops
   the tenant's anomaly marks on its source's metrics (derived from its facts; the next
   evaluation recomputes them from what is left), takes its id out of the staff audit's
   details, and removes its staging folder before the commit.
4. ``bytes``: the database lets go of the deleted bytes, as an erasure does.
5. ``verified``: ``verification`` searches every table, file, raw database byte and
   Dagster's storage for its id and for the plaintext of its stored secrets.

Nothing of the tenant's other connections is touched. The record kept is the staff
audit event the command writes (source, auth kind, counts, outcomes, by tenant id),
never the connection's id, which verification would find. Its Dagster partition goes
with the next tick of the source's partitions sensor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sqlalchemy import String, cast, delete, select, update

from .. import registry
from ..errors import InvalidInput, NotFound, WriteVueError
from ..models import AuditEvent, Connection, MetricAnomaly
from ..runtime import Runtime
from ..vault import VaultError
from . import verification
from .erasure import (
    GrantOutcome,
    _drop_deleted_bytes,
    _outcomes,
    _remove_staging,
    _Scope,
    _touched_tables,
    action_line,
    actions_for,
    revoke_grants,
)
from .scope import connection_clause, owned_tables

log = logging.getLogger(__name__)

#: the stored fields that are secrets, searched for in clear after the removal
SECRET_FIELDS = ("api_key", "password", "access_token", "refresh_token")
#: what a staff-audit reason naming the removed connection says instead of its id
REMOVED = "(removed connection)"


class RevocationFailed(WriteVueError):
    """The grant could not be revoked: nothing was deleted; the removal can be retried."""


@dataclass
class RemovalReport:
    connection_id: str
    tenant_id: str
    source: str
    auth_kind: str
    #: table -> rows removed, and "staging_files"
    removed: dict[str, int] = field(default_factory=dict)
    grant: GrantOutcome | None = None
    #: what is left for the operator (``erasure.actions_for``)
    actions: list[dict[str, str]] = field(default_factory=list)
    verification: verification.VerificationReport | None = None
    #: another connection of the tenant holds the same key or password (added twice)
    shared_credential: bool = False

    @property
    def ok(self) -> bool:
        return self.verification is not None and self.verification.ok

    @property
    def outcome(self) -> str:
        if not self.ok:
            return "not verified: connection data remains or could not be checked"
        return "removed and verified" + ("; needs operator action" if self.actions else "")

    def audit_details(self) -> dict:
        """What the staff audit keeps of it: no connection id, no host, no secret."""
        return {
            "source": self.source,
            "auth_kind": self.auth_kind,
            "removed": dict(self.removed),
            "grant": self.grant.outcome if self.grant else "none",
            "verified": self.ok,
        }

    def lines(self) -> list[str]:
        rows = sum(v for k, v in self.removed.items() if k != "staging_files")
        lines = [
            f"{self.source} connection {self.connection_id} of tenant {self.tenant_id}: "
            f"{self.outcome}"
        ]
        lines += [f"  {table}: {count} removed" for table, count in sorted(self.removed.items())]
        lines.append(f"  {rows} rows in all")
        if self.grant is not None and self.grant.auth_kind == "oauth2":
            said = {"revoked": "revoked at the provider", "unsupported": "no revocation endpoint"}
            lines.append(f"  OAuth grant: {said.get(self.grant.outcome, self.grant.outcome)}")
        if self.shared_credential:
            lines.append(
                "  note: another connection of the tenant uses the same credential; "
                "it stays valid (do not ask the client to revoke it)"
            )
        if self.verification is not None:
            lines += self.verification.lines("connection")
        if self.actions:
            lines.append("needs operator action:")
            lines += [f"  - {action_line(a)}" for a in self.actions]
        return lines


def remove_connection(
    runtime: Runtime,
    connection_id: str,
    *,
    confirm_revoked: bool = False,
    dagster: verification.DagsterStorage | None = None,
) -> RemovalReport:
    """Remove one connection and everything of it, revoke its grant, and verify it.

    Raises ``RevocationFailed`` (nothing deleted, the connection stays ``erasing``)
    when its OAuth2 grant cannot be revoked and ``confirm_revoked`` is not given.
    """
    info, secrets, shared = _mark(runtime, connection_id)
    report = RemovalReport(info.id, info.tenant_id, info.source, info.auth_kind)
    report.shared_credential = shared
    added = info.created_at.date().isoformat() if info.created_at else ""
    scope = _Scope(connections={info.id: (info.source, info.auth_kind, added)})
    revoke_grants(runtime, scope)
    outcome, reason = scope.outcomes.get(info.id, ["unsupported", ""])
    if outcome == "failed":
        if not confirm_revoked:
            raise RevocationFailed(
                f"Revoking the {info.source} grant of connection {info.id} failed ({reason}); "
                "nothing was deleted and it no longer refreshes. Run this again to retry, or "
                "pass --confirm-revoked once the client has removed WriteVue's access at "
                "the provider."
            )
        scope.outcomes[info.id] = ["confirmed_by_operator", ""]
    (report.grant,) = _outcomes(scope)
    # a key another connection still uses must not be revoked at the provider
    report.actions = [] if shared else actions_for("", [report.grant], [])
    report.removed = _delete(runtime, info)
    _drop_deleted_bytes(runtime, list(report.removed) or _touched_tables())
    ids = verification.Identifiers("", (info.id,), credentials=tuple(secrets))
    result = verification.verify_erasure(runtime, ids, dagster=dagster)
    if result.database_bytes and not result.rows:
        # secure_delete zeroes deleted cells; a VACUUM rewrites whatever still lingers.
        _drop_deleted_bytes(runtime, _touched_tables(), full=True)
        result = verification.verify_erasure(runtime, ids, dagster=dagster)
    report.verification = result
    if not result.ok:
        log.error("connection removal: verification found connection data left")
    return report


@dataclass(frozen=True)
class _Marked:
    id: str
    tenant_id: str
    source: str
    auth_kind: str
    created_at: object


def _mark(runtime: Runtime, connection_id: str) -> tuple[_Marked, list[str], bool]:
    """Step 1, its own commit: refreshes stop writing. Returns the connection, its
    stored secrets in clear (to search for once they are deleted; never stored), and
    whether another connection of the tenant holds one of them too."""
    connection_id = registry.parse_uuid(connection_id, "Connection")
    with runtime.db.locked_session() as session:
        row = session.get(Connection, connection_id)
        if row is None:
            raise NotFound(f"No connection with id {connection_id}.")
        info = registry.get_connection(session, connection_id)
        try:
            stored = registry.get_secrets(session, runtime.keys, info)
        except (VaultError, UnicodeDecodeError):  # cannot be searched for; its row still goes
            stored = {}
        secrets = [v for k, v in stored.items() if k in SECRET_FIELDS and v]
        shared = _shared(session, runtime, info, set(secrets))
        row.status = registry.ERASING
        marked = _Marked(row.id, row.tenant_id, row.source, row.auth_kind, row.created_at)
    return marked, secrets, shared


def _shared(session, runtime: Runtime, info: registry.ConnectionInfo, secrets: set[str]) -> bool:
    """Whether another connection of the tenant holds one of these secrets."""
    if not secrets:
        return False
    for other in registry.list_connections(session, tenant_id=info.tenant_id):
        if other.id == info.id or other.status == registry.ERASING:
            continue
        try:
            theirs = registry.get_secrets(session, runtime.keys, other)
        except (VaultError, UnicodeDecodeError):  # unreadable: cannot be compared
            continue
        if secrets & {v for k, v in theirs.items() if k in SECRET_FIELDS}:
            return True
    return False


def _delete(runtime: Runtime, info: _Marked) -> dict[str, int]:
    """Step 3, one transaction: the connection's rows everywhere, its staging with them."""
    ids = [info.id]
    removed: dict[str, int] = {}
    with runtime.db.locked_session() as session:
        if session.get(Connection, info.id) is None:
            raise NotFound(f"No connection with id {info.id}.")
        for table in owned_tables():
            clause = connection_clause(table, ids)
            if clause is None:
                continue
            count = session.execute(delete(table).where(clause)).rowcount or 0
            if count:
                removed[table.name] = count
        marks = session.execute(
            delete(MetricAnomaly).where(
                MetricAnomaly.tenant_id == info.tenant_id,
                MetricAnomaly.metric.startswith(f"{info.source}.", autoescape=True),
            )
        ).rowcount
        if marks:
            removed[MetricAnomaly.__tablename__] = marks
        _forget_in_audit(session, info)
        staged = _remove_staging(runtime, ids)
        if staged:
            removed["staging_files"] = staged
    return removed


def _forget_in_audit(session, info: _Marked) -> None:
    """Take the connection's id out of the staff audit: who did what to the tenant, and
    when, is kept (accountability); the details naming the connection go."""
    mentions = session.scalars(
        select(AuditEvent).where(
            cast(AuditEvent.details, String).contains(info.id, autoescape=True)
            | AuditEvent.reason.contains(info.id, autoescape=True)
        )
    )
    for event in mentions:
        details = {
            key: value
            for key, value in dict(event.details or {}).items()
            if info.id not in json.dumps(value)
        }
        reason = event.reason.replace(info.id, REMOVED) if event.reason else event.reason
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.id == event.id)
            .values(details=details, reason=reason)
        )


def check_removable(runtime: Runtime, connection_id: str) -> registry.ConnectionInfo:
    """The connection, if it exists; else the usual NotFound."""
    with runtime.db.session() as session:
        info = registry.get_connection(session, connection_id)
    if info.status == registry.ERASING and _tenant_erasing(runtime, info.tenant_id):
        raise InvalidInput(
            f"Connection {info.id}'s tenant is being erased; finish that with "
            f"`writevue tenant erase {info.tenant_id}`."
        )
    return info


def _tenant_erasing(runtime: Runtime, tenant_id: str) -> bool:
    from .erasure import _open_request

    with runtime.db.session() as session:
        return _open_request(session, tenant_id) is not None


__all__ = ["RemovalReport", "RevocationFailed", "check_removable", "remove_connection"]
