"""Erasure of one client on request: revoke its grants, delete everything, prove it.

In the order it happens (``run_erasure``); every step can be interrupted (a kill, a
crash) and the same request run again finishes it:

1. ``marked``: the request runs and the tenant's connections turn ``erasing``, in
   their own commit, with every identifier to search for later (connection, link and
   invite ids, the contact fields' plaintext, its notification recipients' addresses
   and webhook URLs) stored encrypted in the request. From
   then on a refresh of the tenant writes nothing (``registry.writable_connections``).
2. ``revoked``: each OAuth2 grant is revoked at the provider's revocation endpoint.
   A failure does not stop the erasure: the grant's tokens are kept, encrypted, in
   the request alone, for ``writevue tenant revoke-grants`` to retry.
3. ``deleted``: one transaction deletes the tenant's rows from every table that can
   hold them (worked out from the schema, see ``scope``), dependants first, and its
   staging folders (removed before the commit, so a kill cannot leave them behind).
4. ``logs``: its dashboard links' lines leave the access logs; leftover staging of
   erased connections goes.
5. ``bytes``: the database lets go of the deleted bytes (SQLite: secure_delete and a
   WAL checkpoint, VACUUM if anything lingers; PostgreSQL: VACUUM of touched tables).
6. ``verified``: ``verification`` searches every table, file, log, raw database byte
   and Dagster's storage for every identifier; what it cannot check fails it.

Only then is the request ``done``; its identifiers are dropped, and it is the one
record kept: tenant id, when requested and done, rows removed per table, what each
grant's revocation did, and what is left for the operator (by source, no ids). A
verification that fails leaves the request ``failed``: running it again repeats
steps 1-6 (each finds nothing left to do but what remains) and proves it.

The Dagster side deletes the connections' dynamic partitions: ``run_erasure`` calls
``delete_partitions(source, keys)`` before the request is marked done.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from .. import registry
from ..errors import InvalidInput, NotFound, SourceError, WriteVueError
from ..models import (
    AuditEvent,
    ConnectInvite,
    Connection,
    DashboardLink,
    DeletionRequest,
    NotificationRecipient,
    Tenant,
    utcnow,
)
from ..runtime import Runtime
from ..vault import Binding, VaultError
from . import verification
from .scope import owned_tables, tenant_clause
from .trends import forget_links

log = logging.getLogger(__name__)

#: requests not yet carried out to the end: the sensor and a rerun finish them
OPEN = ("pending", "running", "deleted", "failed")
_DELETE_ATTEMPTS = 3
#: the steps, in order; ``step_hooks`` are called after each (crash tests kill there)
STEPS = ("marked", "revoked", "deleting", "deleted", "logs", "bytes", "verified")
step_hooks: list[Callable[[str], None]] = []

DeletePartitions = Callable[[str, list[str]], None]
#: what a kept staff-audit event of an erased tenant says instead of its reason
ERASED_REASON = "(removed at erasure)"

#: what a client should do at the provider when WriteVue cannot revoke the credential
_AT_PROVIDER = {
    "api_key": "revoke the API key it gave us at the provider",
    "basic": "change the password it gave us at the provider",
    "oauth2": "remove WriteVue's access in the provider's account settings",
}


class ErasureFailed(WriteVueError):
    pass


def _step(name: str) -> None:
    for hook in list(step_hooks):
        hook(name)


@dataclass(frozen=True)
class PendingRequest:
    id: str
    tenant_id: str
    requested_at: dt.datetime
    status: str


@dataclass(frozen=True)
class GrantOutcome:
    """What revoking one connection's credential did; by source and kind, no ids."""

    source: str
    auth_kind: str
    #: revoked | failed | unsupported (no revocation endpoint) | not_revocable (a key or
    #: password: only the client can revoke it at the provider)
    outcome: str
    reason: str = ""
    #: the day the connection was added: tells two keys of one source apart
    added: str = ""


@dataclass
class ErasureReport:
    request_id: str
    tenant_id: str
    requested_at: dt.datetime
    completed_at: dt.datetime | None = None
    #: table -> rows removed, and "staging_files", "access_log_lines"
    removed: dict[str, int] = field(default_factory=dict)
    #: counts: attempted, revoked, failed, unsupported
    revocations: dict[str, int] = field(default_factory=dict)
    grants: list[GrantOutcome] = field(default_factory=list)
    #: what is left for the operator (see ``actions``)
    actions: list[dict[str, str]] = field(default_factory=list)
    #: source -> connection ids: the dynamic partitions the Dagster side must delete
    partitions: dict[str, list[str]] = field(default_factory=dict)
    verification: verification.VerificationReport | None = None

    @property
    def ok(self) -> bool:
        """Erased and verified: nothing of the tenant is left."""
        return self.verification is not None and self.verification.ok

    @property
    def needs_action(self) -> bool:
        return bool(self.actions)

    @property
    def outcome(self) -> str:
        if not self.ok:
            return "not verified: tenant data remains or could not be checked"
        if self.needs_action:
            return "erased and verified; needs operator action"
        return "erased and verified"

    def lines(self) -> list[str]:
        rows = sum(
            v for k, v in self.removed.items() if k not in ("staging_files", "access_log_lines")
        )
        lines = [f"erased tenant {self.tenant_id} (request {self.request_id}): {self.outcome}"]
        lines += [f"  {table}: {count} removed" for table, count in sorted(self.removed.items())]
        lines.append(f"  {rows} rows in all")
        r = self.revocations
        lines.append(
            f"  OAuth grants: {r.get('revoked', 0)} revoked, {r.get('failed', 0)} failed, "
            f"{r.get('unsupported', 0)} without a revocation endpoint"
        )
        keys = sum(len(v) for v in self.partitions.values())
        if keys:
            lines.append(f"  Dagster partitions of its connections: {keys}")
        if self.verification is not None:
            lines += self.verification.lines()
        if self.actions:
            lines.append("needs operator action:")
            lines += [f"  - {action_line(a)}" for a in self.actions]
        return lines


def action_line(action: dict[str, str]) -> str:
    what = f"{action['source']} ({action['auth_kind']}): {action['what']}"
    if action.get("command"):
        what += f"; retry: {action['command']}"
    return what


# -- requests -------------------------------------------------------------------------------


def request_erasure(runtime: Runtime, tenant_id: str, actor: str) -> str:
    """Record a client's erasure request for the erasure sensor; returns the request id.

    Asking again while a request is open returns that request.
    """
    with runtime.db.locked_session() as session:
        tenant_id = registry.require_tenant(session, tenant_id)
        existing = _open_request(session, tenant_id)
        if existing is not None:
            return existing.id
        return _new_request(session, tenant_id, actor).id


def _new_request(session, tenant_id: str, actor: str) -> DeletionRequest:
    request = DeletionRequest(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        requested_by=actor,
        requested_at=utcnow(),
        status="pending",
        removed={},
        revocations={},
        actions=[],
    )
    session.add(request)
    return request


def pending_requests(runtime: Runtime) -> list[PendingRequest]:
    """Requests not yet carried out to the end, oldest first."""
    with runtime.db.session() as session:
        rows = session.scalars(
            select(DeletionRequest)
            .where(DeletionRequest.status.in_(OPEN))
            .order_by(DeletionRequest.requested_at, DeletionRequest.id)
        )
        return [PendingRequest(r.id, r.tenant_id, r.requested_at, r.status) for r in rows]


def _open_request(session, tenant_id: str) -> DeletionRequest | None:
    return session.scalars(
        select(DeletionRequest)
        .where(DeletionRequest.tenant_id == tenant_id, DeletionRequest.status.in_(OPEN))
        .order_by(DeletionRequest.requested_at)
    ).first()


def _not_found(session, tenant_id: str) -> NotFound:
    done = session.scalars(
        select(DeletionRequest)
        .where(DeletionRequest.tenant_id == tenant_id, DeletionRequest.status == "done")
        .order_by(DeletionRequest.completed_at.desc())
    ).first()
    if done is not None and done.completed_at is not None:
        pending = [a for a in done.actions or [] if a.get("command")]
        more = (
            f" {len(pending)} grant revocation(s) still to retry: {pending[0]['command']}"
            if pending
            else ""
        )
        return NotFound(
            f"Tenant {tenant_id} was already erased on {done.completed_at:%Y-%m-%d %H:%M} "
            f"UTC, and verified (request {done.id}).{more}"
        )
    return NotFound(f"No tenant with id {tenant_id}; `writevue tenant list` shows them.")


def check_erasable(runtime: Runtime, tenant_id: str) -> str:
    """The tenant's id if it can be erased (or its erasure finished); else NotFound."""
    tenant_id = registry.parse_uuid(tenant_id, "Tenant")
    with runtime.db.session() as session:
        if session.get(Tenant, tenant_id) is None and _open_request(session, tenant_id) is None:
            raise _not_found(session, tenant_id)
    return tenant_id


def _resolve(runtime: Runtime, request_or_tenant_id: str, actor: str) -> DeletionRequest:
    """The open request this id names (a request id, or a tenant id), made if need be."""
    ident = registry.parse_uuid(request_or_tenant_id, "Tenant or request")
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, ident)
        if request is not None:
            if request.status == "done":
                raise _not_found(session, request.tenant_id)
            session.expunge(request)
            return request
        request = _open_request(session, ident)
        if request is None:
            if session.get(Tenant, ident) is None:
                raise _not_found(session, ident)
            request = _new_request(session, ident, actor)
            session.flush()
        session.expunge(request)
        return request


# -- what an erasure must find: kept encrypted in the request while it runs -----------------


def _binding(request: DeletionRequest, what: str) -> Binding:
    return Binding(request.tenant_id, None, f"erasure.{what}")


def _read_blob(runtime: Runtime, request: DeletionRequest, what: str, blob) -> Any:
    if blob is None:
        return None
    return json.loads(runtime.keys.decrypt_text(blob, _binding(request, what)))


def _write_blob(runtime: Runtime, request: DeletionRequest, what: str, value) -> bytes | None:
    if not value:
        return None
    return runtime.keys.encrypt(json.dumps(value), _binding(request, what))


@dataclass
class _Scope:
    #: id -> (source, auth kind, the day it was added)
    connections: dict[str, tuple[str, ...]] = field(default_factory=dict)
    links: set[str] = field(default_factory=set)
    invites: set[str] = field(default_factory=set)
    contact: set[str] = field(default_factory=set)
    #: connection ids whose grant needs no more revoking (revoked, or nothing to revoke)
    settled: set[str] = field(default_factory=set)
    #: connection id -> the outcome of its revocation
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    #: the stored identifiers could not be decrypted: the verification cannot be complete
    unreadable: bool = False
    #: the tenant's name or email could not be decrypted: they cannot be searched for
    contact_unreadable: bool = False
    #: the plaintext of its notification recipients: email addresses and webhook URLs
    recipients: set[str] = field(default_factory=set)
    #: a recipient's address could not be decrypted: it cannot be searched for
    recipients_unreadable: bool = False

    def as_json(self) -> dict:
        return {
            "connections": {k: list(v) for k, v in self.connections.items()},
            "links": sorted(self.links),
            "invites": sorted(self.invites),
            "contact": sorted(self.contact),
            "settled": sorted(self.settled),
            "outcomes": self.outcomes,
            "contact_unreadable": self.contact_unreadable,
            "recipients": sorted(self.recipients),
            "recipients_unreadable": self.recipients_unreadable,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> _Scope:
        data = data or {}
        return cls(
            {k: tuple(v) for k, v in data.get("connections", {}).items()},
            set(data.get("links", ())),
            set(data.get("invites", ())),
            set(data.get("contact", ())),
            set(data.get("settled", ())),
            dict(data.get("outcomes", {})),
            contact_unreadable=bool(data.get("contact_unreadable", False)),
            recipients=set(data.get("recipients", ())),
            recipients_unreadable=bool(data.get("recipients_unreadable", False)),
        )

    def identifiers(self, tenant_id: str) -> verification.Identifiers:
        return verification.Identifiers(
            tenant_id,
            tuple(sorted(self.connections)),
            tuple(sorted(self.links)),
            tuple(sorted(self.invites)),
            # searched like the contact fields: personal data in clear, reported by kind
            tuple(sorted(self.contact | self.recipients)),
        )


def _load_scope(runtime: Runtime, request: DeletionRequest) -> _Scope:
    try:
        return _Scope.from_json(_read_blob(runtime, request, "scope", request.scope_ct))
    except (VaultError, ValueError):
        return _Scope(unreadable=True)


def _gather(session, runtime: Runtime, tenant_id: str, scope: _Scope) -> None:
    """Add what the database still holds of the tenant to the scope."""
    for cid, source, kind, added in session.execute(
        select(Connection.id, Connection.source, Connection.auth_kind, Connection.created_at).where(
            Connection.tenant_id == tenant_id
        )
    ):
        scope.connections[cid] = (source, kind, added.date().isoformat() if added else "")
    scope.links |= set(
        session.scalars(select(DashboardLink.id).where(DashboardLink.tenant_id == tenant_id))
    )
    scope.invites |= set(
        session.scalars(select(ConnectInvite.id).where(ConnectInvite.tenant_id == tenant_id))
    )
    tenant = session.get(Tenant, tenant_id)
    if tenant is not None:
        found, complete = _contact(runtime, tenant)
        scope.contact |= set(found)
        scope.contact_unreadable |= not complete
    found, complete = _recipient_addresses(session, runtime, tenant_id)
    scope.recipients |= set(found)
    scope.recipients_unreadable |= not complete


def _recipient_addresses(session, runtime: Runtime, tenant_id: str) -> tuple[list[str], bool]:
    """The plaintext of the tenant's notification recipients (email addresses and webhook
    URLs), to search for; and whether every one decrypted."""
    found, complete = [], True
    for recipient_id, blob in session.execute(
        select(NotificationRecipient.id, NotificationRecipient.address_ct).where(
            NotificationRecipient.tenant_id == tenant_id
        )
    ):
        try:
            found.append(
                runtime.keys.decrypt_text(
                    blob, Binding(tenant_id, None, f"recipient.{recipient_id}")
                )
            )
        except (VaultError, UnicodeDecodeError):
            complete = False
    return found, complete


def _contact(runtime: Runtime, tenant: Tenant) -> tuple[list[str], bool]:
    """The tenant's name and email in clear, to search for; and whether both decrypted
    (one that does not cannot be searched for, which the verification must say)."""
    found, complete = [], True
    for field_name, blob in (("tenant.name", tenant.name_ct), ("tenant.email", tenant.email_ct)):
        try:
            found.append(runtime.keys.decrypt_text(blob, Binding(tenant.id, None, field_name)))
        except VaultError:
            complete = False
    return found, complete


# -- the erasure ----------------------------------------------------------------------------


def mark_erasing(runtime: Runtime, request_id: str) -> _Scope:
    """Step 1, in its own commit: the request runs, the tenant's refreshes stop writing,
    and every identifier to search for later is kept (encrypted) with the request.

    On PostgreSQL the status update waits for any refresh still writing this tenant
    (it holds its connection FOR SHARE), so what that refresh wrote is deleted too.
    """
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        request.status, request.error = "running", None
        request.started_at = request.started_at or utcnow()
        scope = _load_scope(runtime, request)
        _gather(session, runtime, request.tenant_id, scope)
        # The tenant's rows locked in the order of their ids, as a refresh's load locks
        # the connections it writes: two transactions that both want several of them
        # then queue for them instead of each holding one the other waits for.
        session.execute(
            select(Connection.id)
            .where(Connection.tenant_id == request.tenant_id)
            .order_by(Connection.id)
            .with_for_update()
        ).all()
        session.execute(
            update(Connection)
            .where(Connection.tenant_id == request.tenant_id)
            .values(status=registry.ERASING)
        )
        if not scope.unreadable:
            request.scope_ct = _write_blob(runtime, request, "scope", scope.as_json())
    _step("marked")
    return scope


def _save_scope(runtime: Runtime, request_id: str, scope: _Scope) -> None:
    if scope.unreadable:
        return
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        request.scope_ct = _write_blob(runtime, request, "scope", scope.as_json())


def revoke_grants(runtime: Runtime, scope: _Scope) -> None:
    """Step 2: revoke each OAuth2 grant still stored at its provider; the outcome of each
    goes into the scope (a failure is recorded, not raised)."""
    from ..oauth.revocation import revoke_grant

    for connection_id, (_source, auth_kind, *_added) in sorted(scope.connections.items()):
        if connection_id in scope.settled:
            continue
        if auth_kind != "oauth2":
            scope.outcomes[connection_id] = ["not_revocable", ""]
            scope.settled.add(connection_id)
            continue
        try:
            revoked = revoke_grant(runtime, connection_id)
        except NotFound:
            continue  # its row went in an earlier run; what happened then is recorded
        except Exception as exc:
            scope.outcomes[connection_id] = ["failed", _reason(exc)]
            # Logged by kind: the message may name the provider's host.
            log.warning("erasure: revoking one grant failed (%s)", type(exc).__name__)
            continue
        scope.outcomes[connection_id] = ["revoked" if revoked else "unsupported", ""]
        scope.settled.add(connection_id)


def _reason(exc: BaseException) -> str:
    """Why a revocation failed, in words that name no host, id or token."""
    from ..oauth.endpoints import NoOAuthClient

    if isinstance(exc, NoOAuthClient):  # names the variables to set, nothing more
        return str(exc).rstrip(".")
    status = getattr(exc, "status", None)
    if isinstance(exc, SourceError) and status:
        return f"the provider answered HTTP {status}"
    if isinstance(exc, SourceError) and "could not be reached" in str(exc):
        return "the provider could not be reached"
    return type(exc).__name__


def _outcomes(scope: _Scope) -> list[GrantOutcome]:
    found = []
    for cid, (source, kind, *added) in sorted(
        scope.connections.items(), key=lambda i: (i[1], i[0])
    ):
        outcome, reason = scope.outcomes.get(cid, ["unsupported", ""])
        found.append(GrantOutcome(source, kind, outcome, reason, added[0] if added else ""))
    return found


def _counts(outcomes: list[GrantOutcome]) -> dict[str, int]:
    counts = {"attempted": 0, "revoked": 0, "failed": 0, "unsupported": 0}
    for grant in outcomes:
        if grant.auth_kind != "oauth2":
            continue
        counts["attempted"] += 1
        counts[grant.outcome if grant.outcome in counts else "unsupported"] += 1
    return counts


def actions_for(
    request_id: str, outcomes: list[GrantOutcome], retry: list[dict]
) -> list[dict[str, str]]:
    """What is left for the operator, by source and kind (no ids, no hosts)."""
    actions = []
    for grant in outcomes:
        if grant.outcome == "failed":
            continue  # listed below from what is kept to retry
        if grant.outcome in ("not_revocable", "unsupported"):
            added = f" (connected on {grant.added})" if grant.added else ""
            actions.append(
                {
                    "kind": "client_should_revoke",
                    "source": grant.source,
                    "auth_kind": grant.auth_kind,
                    "what": "ask the client to "
                    + _AT_PROVIDER.get(grant.auth_kind, _AT_PROVIDER["api_key"])
                    + added,
                }
            )
    for item in retry:
        actions.append(
            {
                "kind": "revocation_failed",
                "source": item["source"],
                "auth_kind": "oauth2",
                "what": f"revoking the grant failed ({item.get('reason') or 'unknown'})",
                "command": f"writevue tenant revoke-grants {request_id}",
            }
        )
    return actions


def _delete_rows(runtime: Runtime, request_id: str, scope: _Scope) -> dict[str, int]:
    """Step 3, one transaction: delete the tenant everywhere, its staging with it, and keep
    what a failed revocation needs to be retried (encrypted, in the request alone)."""
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        tenant_id = request.tenant_id
        # Read again inside the transaction: a connection made since step 1 goes too.
        _gather(session, runtime, tenant_id, scope)
        retry = _read_blob(runtime, request, "retry", request.retry_ct) or []
        for cid, (outcome, reason) in sorted(scope.outcomes.items()):
            if outcome != "failed" or cid in scope.settled:
                continue
            connection = session.get(Connection, cid)
            if connection is None:
                continue
            info = registry.get_connection(session, cid)
            retry.append(
                {
                    "source": info.source,
                    "options": dict(info.options or {}),
                    "secrets": registry.get_secrets(session, runtime.keys, info),
                    "reason": reason,
                }
            )
            scope.settled.add(cid)  # kept for the retry command; not revoked again here
        connection_ids = sorted(scope.connections)
        # Who looked at the tenant's data, and when, is kept (accountability); what they
        # wrote (the reason) and the details, which may name its data, go.
        session.execute(
            update(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id)
            .values(details={}, reason=ERASED_REASON)
        )
        removed: dict[str, int] = {}
        for table in owned_tables():
            clause = tenant_clause(table, tenant_id, connection_ids)
            if clause is None:
                continue
            count = session.execute(delete(table).where(clause)).rowcount or 0
            if count:
                removed[table.name] = count
        staged = _remove_staging(runtime, connection_ids)
        request.status = "deleted"
        request.removed = _add(request.removed, removed | {"staging_files": staged})
        request.retry_ct = _write_blob(runtime, request, "retry", retry)
        outcomes = _outcomes(scope)
        request.revocations = _counts(outcomes)
        request.actions = actions_for(request_id, outcomes, retry)
        if not scope.unreadable:
            request.scope_ct = _write_blob(runtime, request, "scope", scope.as_json())
        _step("deleting")  # a kill here rolls the whole step back, staging aside
    _step("deleted")
    return removed


def _add(before: dict | None, more: dict[str, int]) -> dict[str, int]:
    total = dict(before or {})
    for key, count in more.items():
        total[key] = total.get(key, 0) + count
    return total


def _remove_staging(runtime: Runtime, connection_ids: list[str]) -> int:
    """Remove these connections' staging folders; raises OSError if one cannot be."""
    files = 0
    for connection_id in connection_ids:
        folder = runtime.settings.staging_dir / connection_id
        if folder.exists():
            files += sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
    return files


def _remove_orphan_staging(runtime: Runtime) -> int:
    """Remove staging folders of connections that no longer exist (an erasure from
    before erasures removed staging in their delete step); returns files removed."""
    root = runtime.settings.staging_dir
    if not root.exists():
        return 0
    folders = [p for p in root.iterdir() if p.is_dir() and _is_uuid(p.name)]
    if not folders:
        return 0
    with runtime.db.session() as session:
        live = set(
            session.scalars(
                select(Connection.id).where(Connection.id.in_([p.name for p in folders]))
            )
        )
    return _remove_staging(runtime, [p.name for p in folders if p.name not in live])


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _drop_deleted_bytes(runtime: Runtime, tables: list[str], *, full: bool = False) -> None:
    """Make the database let go of deleted rows (see docs/privacy.md for what remains)."""
    engine = runtime.db.engine
    if runtime.db.is_sqlite:
        if full:
            verification.sqlite_outside_transaction(runtime, "VACUUM")
        verification.checkpoint(runtime)
        return
    if engine.dialect.name == "postgresql" and tables:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in tables:
                quoted = engine.dialect.identifier_preparer.quote(name)
                conn.exec_driver_sql(f"VACUUM {'FULL ' if full else ''}{quoted}")


def _touched_tables() -> list[str]:
    return [t.name for t in owned_tables()] + ["deletion_requests"]


def run_erasure(
    runtime: Runtime,
    request_or_tenant_id: str,
    *,
    actor: str = "erasure",
    delete_partitions: DeletePartitions | None = None,
    dagster: verification.DagsterStorage | None = None,
) -> ErasureReport:
    """Carry out an erasure request (by its id), or erase a tenant (by its id) at once.

    Safe to rerun from any point: an interrupted, failed or unverified erasure is
    finished, and the request is ``done`` only once verification has passed.
    """
    request = _resolve(runtime, request_or_tenant_id, actor)
    request_id, tenant_id = request.id, request.tenant_id
    report = ErasureReport(request_id, tenant_id, request.requested_at)

    scope = mark_erasing(runtime, request_id)
    revoke_grants(runtime, scope)
    _save_scope(runtime, request_id, scope)
    _step("revoked")
    for attempt in range(1, _DELETE_ATTEMPTS + 1):
        try:
            removed = _delete_rows(runtime, request_id, scope)
            break
        except (IntegrityError, DBAPIError, OSError) as exc:
            # A row added for the tenant meanwhile (a connection completing its OAuth
            # flow) fails a foreign key or a lock: read again and retry.
            if attempt == _DELETE_ATTEMPTS:
                _record_failure(runtime, request_id, exc)
                raise ErasureFailed(
                    f"Erasure of tenant {tenant_id} failed ({type(exc).__name__}); its "
                    "refreshes stay stopped. Rerun `writevue tenant erase "
                    f"{tenant_id}` to finish it."
                ) from None
            time.sleep(0.2 * attempt)

    # Staging a refresh racing the erasure wrote after the delete, and any orphan.
    leftover, unremovable = 0, []
    try:
        leftover = _remove_staging(runtime, sorted(scope.connections))
        leftover += _remove_orphan_staging(runtime)
    except OSError as exc:
        unremovable.append(f"a staging folder could not be removed ({type(exc).__name__})")
    lines, unreadable_logs = forget_links(runtime, scope.links)
    _step("logs")
    _drop_deleted_bytes(runtime, list(removed) or _touched_tables())
    _step("bytes")
    ids = scope.identifiers(tenant_id)
    result = verification.verify_erasure(runtime, ids, dagster=dagster)
    if result.database_bytes and not result.rows:
        # secure_delete zeroes deleted cells; a VACUUM rewrites whatever still lingers.
        _drop_deleted_bytes(runtime, _touched_tables(), full=True)
        result = verification.verify_erasure(runtime, ids, dagster=dagster)
    result.unchecked = unremovable + unreadable_logs + result.unchecked
    if scope.unreadable:
        result.unchecked.append(
            "the identifiers recorded when this erasure began (they could not be decrypted)"
        )
    if scope.contact_unreadable:
        result.unchecked.append(
            "the tenant's name or email (they could not be decrypted, so cannot be searched for)"
        )
    if scope.recipients_unreadable:
        result.unchecked.append(
            "a notification recipient's address (it could not be decrypted, so cannot be "
            "searched for)"
        )
    report.verification = result
    _step("verified")

    for cid, (source, *_rest) in sorted(scope.connections.items()):
        report.partitions.setdefault(source, []).append(cid)
    if result.ok and delete_partitions is not None:
        for source, keys in sorted(report.partitions.items()):
            delete_partitions(source, sorted(keys))

    with runtime.db.locked_session() as session:
        record = session.get(DeletionRequest, request_id)
        record.removed = _add(
            record.removed, {"staging_files": leftover, "access_log_lines": lines}
        )
        record.verified = result.ok
        if result.ok:
            record.status, record.error = "done", None
            record.completed_at = record.verified_at = utcnow()
            record.scope_ct = None  # nothing left to search for; the ids go too
        else:
            record.status, record.error = "failed", "verification found tenant data left"
        report.removed = dict(record.removed)
        report.revocations = dict(record.revocations or {})
        report.actions = list(record.actions or [])
        report.completed_at = record.completed_at
    report.grants = _outcomes(scope)
    if not result.ok:
        log.error("erasure %s: verification found tenant data left", request_id)
    return report


def _record_failure(runtime: Runtime, request_id: str, exc: BaseException) -> None:
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        if request is not None and request.status != "done":
            request.status, request.error = "failed", type(exc).__name__


# -- after the erasure: grants whose revocation failed --------------------------------------


@dataclass
class RetryReport:
    request_id: str
    revoked: list[str] = field(default_factory=list)  # sources
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    forgotten: list[str] = field(default_factory=list)  # sources

    def lines(self) -> list[str]:
        lines = [f"erasure request {self.request_id}: grant revocations"]
        lines += [f"  {source}: revoked" for source in self.revoked]
        lines += [
            f"  {source}: the operator confirmed the client revoked it; tokens deleted"
            for source in self.forgotten
        ]
        lines += [f"  {source}: failed again ({reason})" for source, reason in self.failed]
        if not (self.revoked or self.failed or self.forgotten):
            lines.append("  none left to retry")
        return lines


def retry_revocations(runtime: Runtime, request_id: str, *, forget: bool = False) -> RetryReport:
    """Retry the revocations an erasure could not make, from the tokens it kept for that.

    With ``forget``, the operator confirms the client revoked the access at the
    provider itself: the kept tokens are deleted without another attempt.
    """
    from ..oauth.revocation import revoke_tokens

    request_id = registry.parse_uuid(request_id, "Erasure request")
    with runtime.db.session() as session:
        request = session.get(DeletionRequest, request_id)
        if request is None:
            raise NotFound(f"No erasure request {request_id}; `writevue audit list` shows them.")
        if request.status != "done":
            raise InvalidInput(
                f"Erasure request {request_id} is not finished ({request.status}): run "
                f"`writevue tenant erase {request.tenant_id}` first."
            )
        session.expunge(request)
    report = RetryReport(request_id)
    kept = _read_blob(runtime, request, "retry", request.retry_ct) or []
    if not kept:
        return report
    remaining = []
    for item in kept:
        if forget:
            report.forgotten.append(item["source"])
            continue
        connection = registry.ConnectionInfo(
            id=f"(erased, request {request_id})",
            tenant_id=request.tenant_id,
            source=item["source"],
            auth_kind="oauth2",
            options=item.get("options") or {},
            status="erased",
            last_error=None,
            last_refreshed_at=None,
        )
        try:
            revoke_tokens(runtime, connection, item["secrets"])
        except Exception as exc:
            item["reason"] = _reason(exc)
            report.failed.append((item["source"], item["reason"]))
            remaining.append(item)
            continue
        report.revoked.append(item["source"])
    with runtime.db.locked_session() as session:
        record = session.get(DeletionRequest, request_id)
        record.retry_ct = _write_blob(runtime, record, "retry", remaining)
        actions = [a for a in record.actions or [] if a.get("kind") != "revocation_failed"]
        record.actions = actions + actions_for(request_id, [], remaining)
        counts = dict(record.revocations or {})
        counts["revoked"] = counts.get("revoked", 0) + len(report.revoked)
        counts["failed"] = len(remaining)
        if report.forgotten:
            counts["confirmed_by_operator"] = counts.get("confirmed_by_operator", 0) + len(
                report.forgotten
            )
        record.revocations = counts
    if not remaining:
        verification.checkpoint(runtime)
    return report


__all__ = [
    "OPEN",
    "STEPS",
    "ErasureFailed",
    "ErasureReport",
    "GrantOutcome",
    "PendingRequest",
    "RetryReport",
    "action_line",
    "check_erasable",
    "mark_erasing",
    "pending_requests",
    "request_erasure",
    "retry_revocations",
    "revoke_grants",
    "run_erasure",
    "step_hooks",
]
