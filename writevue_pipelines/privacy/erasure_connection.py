"""Removal of one connection: revoke its grant, delete its data, prove nothing of it is left.

A tenant's erasure, for one connection of a tenant that stays (`writevue connection
remove`), built from the erasure's own parts (``erasure``, ``scope``, ``verification``).
In the order it happens; an interrupted removal is finished by running it again:

0. ``started``: the command records the removal in the staff audit (``STARTED``), in
   its own commit,
   by a hash of the connection's id (``removal_key``; never the id, which
   verification searches for). Once the connection's row is gone, that is how a
   rerun by the same id knows it was being removed: it removes what staging a late
   fetch left and runs the verification again (``finish_removal``).

1. ``marked``: the connection turns ``erasing`` in its own commit. From then on no
   refresh writes for it (``registry.writable_connections``).
2. ``revoked``: an OAuth2 grant is revoked at the provider (``erasure.revoke_grants``).
   If that fails nothing is deleted: the connection stays ``erasing`` (refreshes
   stopped, credential kept for the retry) and running the removal again retries;
   ``confirm_revoked`` (the client removed the access at the provider) goes on without.
3. ``deleted``: one transaction deletes the connection's rows from every table that can
   hold them, worked out from the schema (``scope.connection_clause``: the connection,
   its credentials, cursor, facts, pending OAuth states, the invite it came from), drops
   the tenant's anomaly marks on its source's metrics when no other connection of the
   tenant feeds them (marks have no connection; with another connection of the source
   they stay, being about the tenant's combined figures, until the next evaluation
   replaces them), takes its id out of the staff audit's details, and removes its
   staging folder before the commit.
4. ``bytes``: the database lets go of the deleted bytes, as an erasure does.
5. ``verified``: ``verification`` searches every table, file, raw database byte and
   Dagster's storage for its id and for the plaintext of its stored secrets.

Nothing of the tenant's other connections is touched. The record kept is the staff
audit events the command writes (started; then source, auth kind, counts, outcomes,
even when it failed), by tenant id and removal key, never the connection's id, which
verification would find. Its Dagster partition goes with the next tick of the source's
partitions sensor. The tenant's pending notification deliveries are not touched.
"""

from __future__ import annotations

import hashlib
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
#: the staging-file count among ``RemovalReport.removed`` (no table)
STAGING_FILES = "staging_files"
#: the staff-audit actions of a removal: its start (its own commit), then its outcome
STARTED = "connection.remove.started"
ACTION = "connection.remove"


class RevocationFailed(WriteVueError):
    """The grant could not be revoked: nothing was deleted; the removal can be retried."""


@dataclass
class RemovalReport:
    connection_id: str
    tenant_id: str
    source: str
    auth_kind: str
    #: table -> rows removed, and ``STAGING_FILES``
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
        rows = sum(v for k, v in self.removed.items() if k != STAGING_FILES)
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
    tables = [name for name in report.removed if name != STAGING_FILES]
    _drop_deleted_bytes(runtime, tables or _touched_tables())
    ids = verification.Identifiers("", (info.id,), credentials=tuple(secrets))
    report.verification = _verify(runtime, ids, dagster)
    return report


def _verify(
    runtime: Runtime, ids: verification.Identifiers, dagster: verification.DagsterStorage | None
) -> verification.VerificationReport:
    """Step 5, and the whole of a rerun's work once the connection's rows are gone."""
    result = verification.verify_erasure(runtime, ids, dagster=dagster)
    if result.database_bytes and not result.rows:
        # secure_delete zeroes deleted cells; a VACUUM rewrites whatever still lingers.
        _drop_deleted_bytes(runtime, _touched_tables(), full=True)
        result = verification.verify_erasure(runtime, ids, dagster=dagster)
    if not result.ok:
        log.error("connection removal: verification found connection data left")
    return result


def removal_key(connection_id: str) -> str:
    """What the staff audit keeps to know a removal by its connection's id: a hash,
    since the id itself is what verification searches for."""
    digest = hashlib.sha256(f"writevue connection removal {connection_id}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Started:
    """A removal recorded as started whose connection's row is gone."""

    tenant_id: str
    source: str
    auth_kind: str


def removal_started(runtime: Runtime, connection_id: str) -> Started | None:
    """The removal of this connection recorded in the staff audit, if there was one."""
    try:
        connection_id = registry.parse_uuid(connection_id, "Connection")
    except InvalidInput:
        return None
    key = removal_key(connection_id)
    with runtime.db.session() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.action.in_((STARTED, ACTION)),
                cast(AuditEvent.details, String).contains(key, autoescape=True),
            )
            .order_by(AuditEvent.at, AuditEvent.id)
        ).all()
        for event in events:
            details = dict(event.details or {})
            if details.get("removal") == key and event.tenant_id:
                return Started(
                    event.tenant_id, details.get("source", ""), details.get("auth_kind", "")
                )
    return None


def finish_removal(
    runtime: Runtime,
    connection_id: str,
    started: Started,
    *,
    dagster: verification.DagsterStorage | None = None,
) -> RemovalReport:
    """A removal whose rows are already deleted (interrupted after its delete, or not
    verified): remove what staging is left and verify again, by its id only (its
    secrets went with its credentials)."""
    connection_id = registry.parse_uuid(connection_id, "Connection")
    report = RemovalReport(connection_id, started.tenant_id, started.source, started.auth_kind)
    staged = _remove_staging(runtime, [connection_id])
    if staged:
        report.removed[STAGING_FILES] = staged
    ids = verification.Identifiers("", (connection_id,))
    report.verification = _verify(runtime, ids, dagster)
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
        if not _other_of_source(session, info):
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
            removed[STAGING_FILES] = staged
    return removed


def _other_of_source(session, info: _Marked) -> bool:
    """Whether another connection of the tenant (not being erased) feeds the same
    source's metrics: its anomaly marks are then about figures that stay."""
    other = session.scalar(
        select(Connection.id).where(
            Connection.tenant_id == info.tenant_id,
            Connection.source == info.source,
            Connection.id != info.id,
            Connection.status != registry.ERASING,
        )
    )
    return other is not None


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


__all__ = [
    "RemovalReport",
    "RevocationFailed",
    "Started",
    "check_removable",
    "finish_removal",
    "removal_key",
    "removal_started",
    "remove_connection",
]
