"""Erasure of one client on request: revoke its grants, delete everything, prove it.

In the order it happens (``run_erasure``):

1. The request is marked running and the tenant's connections ``erasing``, in their
   own commit. From then on a refresh of the tenant writes nothing
   (``registry.writable_connection``), so a refresh racing the erasure cannot
   write its results back after the delete.
2. Each OAuth2 grant is revoked at the provider's revocation endpoint where the
   source has one. A failure is counted, not fatal: the tokens are deleted anyway.
3. One transaction deletes the tenant's rows from every table that can hold them
   (worked out from the schema, see ``scope``), dependants first, and turns the
   request into the one record kept: tenant id, when requested and done, rows
   removed per table, revocations made.
4. Staging files go, the database drops the deleted bytes (SQLite: secure_delete and
   a WAL checkpoint, VACUUM if anything lingers; PostgreSQL: VACUUM of the touched
   tables), and ``verification`` searches every table, file and raw database byte.

The Dagster side deletes the connections' dynamic partitions: the report lists them
by source, and ``run_erasure`` calls ``delete_partitions(source, keys)`` if given.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from .. import registry
from ..errors import NotFound, WriteVueError
from ..models import Connection, DashboardLink, DeletionRequest, Tenant, utcnow
from ..runtime import Runtime
from ..vault import Binding, VaultError
from . import verification
from .scope import owned_tables, tenant_clause
from .trends import forget_links

log = logging.getLogger(__name__)

#: requests the erasure sensor should carry out (a running one was interrupted)
OPEN = ("pending", "running", "failed")
_DELETE_ATTEMPTS = 3

DeletePartitions = Callable[[str, list[str]], None]


class ErasureFailed(WriteVueError):
    pass


@dataclass(frozen=True)
class PendingRequest:
    id: str
    tenant_id: str
    requested_at: dt.datetime
    status: str


@dataclass
class ErasureReport:
    request_id: str
    tenant_id: str
    requested_at: dt.datetime
    completed_at: dt.datetime | None = None
    #: table -> rows removed, and "staging_files"
    removed: dict[str, int] = field(default_factory=dict)
    #: counts: attempted, revoked, failed, unsupported
    revocations: dict[str, int] = field(default_factory=dict)
    #: source -> connection ids: the dynamic partitions the Dagster side must delete
    partitions: dict[str, list[str]] = field(default_factory=dict)
    verification: verification.VerificationReport | None = None

    @property
    def ok(self) -> bool:
        return self.verification is not None and self.verification.ok

    def lines(self) -> list[str]:
        rows = sum(
            v for k, v in self.removed.items() if k not in ("staging_files", "access_log_lines")
        )
        lines = [f"erased tenant {self.tenant_id} (request {self.request_id})"]
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
        return lines


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
    )
    session.add(request)
    return request


def pending_requests(runtime: Runtime) -> list[PendingRequest]:
    """Requests not yet carried out, oldest first: pending, interrupted or failed."""
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
        return NotFound(
            f"Tenant {tenant_id} was already erased on {done.completed_at:%Y-%m-%d %H:%M} UTC "
            f"(request {done.id})."
        )
    return NotFound(f"No tenant with id {tenant_id}; `writevue tenant list` shows them.")


def check_erasable(runtime: Runtime, tenant_id: str) -> str:
    """The tenant's id if it can be erased; else NotFound, saying when it was erased."""
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
            return request
        request = _open_request(session, ident)
        if request is not None:
            return request
        if session.get(Tenant, ident) is None:
            raise _not_found(session, ident)
        return _new_request(session, ident, actor)


# -- the erasure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Marked:
    connections: list[tuple[str, str, str]]  # (id, source, auth_kind)
    contact: tuple[str, ...]  # the tenant's name and email, in memory only, for the byte scan


def mark_erasing(runtime: Runtime, request_id: str) -> _Marked:
    """Step 1, in its own commit: the request runs and the tenant's refreshes stop writing.

    On PostgreSQL the status update waits for any refresh still writing this tenant
    (it holds its connection FOR SHARE), so what that refresh wrote is deleted too.
    """
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        request.status, request.started_at, request.error = "running", utcnow(), None
        tenant = session.get(Tenant, request.tenant_id)
        contact: tuple[str, ...] = ()
        if tenant is not None:
            contact = tuple(_contact(runtime, tenant))
        session.execute(
            update(Connection)
            .where(Connection.tenant_id == request.tenant_id)
            .values(status=registry.ERASING)
        )
        rows = session.execute(
            select(Connection.id, Connection.source, Connection.auth_kind).where(
                Connection.tenant_id == request.tenant_id
            )
        ).all()
    return _Marked([tuple(row) for row in rows], contact)


def _contact(runtime: Runtime, tenant: Tenant) -> list[str]:
    found = []
    for field_name, blob in (("tenant.name", tenant.name_ct), ("tenant.email", tenant.email_ct)):
        try:
            found.append(runtime.keys.decrypt_text(blob, Binding(tenant.id, None, field_name)))
        except VaultError:
            continue  # not needed to erase; the byte scan just has less to look for
    return found


def revoke_grants(runtime: Runtime, connections: list[tuple[str, str, str]]) -> dict[str, int]:
    """Step 2: revoke each OAuth2 grant at its provider; failures are counted, not raised."""
    from ..oauth.revocation import revoke_grant

    counts = {"attempted": 0, "revoked": 0, "failed": 0, "unsupported": 0}
    for connection_id, _source, auth_kind in connections:
        if auth_kind != "oauth2":
            continue
        counts["attempted"] += 1
        try:
            counts["revoked" if revoke_grant(runtime, connection_id) else "unsupported"] += 1
        except Exception as exc:
            counts["failed"] += 1
            # Counted and logged by kind: the message may name the provider's host.
            log.warning("erasure: revoking one grant failed (%s)", type(exc).__name__)
    return counts


def _delete_rows(
    runtime: Runtime, request_id: str, revocations: dict[str, int]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Step 3, one transaction: delete the tenant everywhere and keep the one record."""
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        tenant_id = request.tenant_id
        # Read again inside the transaction: a connection made since step 1 goes too.
        connections = session.execute(
            select(Connection.id, Connection.source).where(Connection.tenant_id == tenant_id)
        ).all()
        connection_ids = [c.id for c in connections]
        link_ids = list(
            session.scalars(select(DashboardLink.id).where(DashboardLink.tenant_id == tenant_id))
        )
        removed: dict[str, int] = {}
        for table in owned_tables():
            clause = tenant_clause(table, tenant_id, connection_ids)
            if clause is None:
                continue
            count = session.execute(delete(table).where(clause)).rowcount or 0
            if count:
                removed[table.name] = count
        request.status, request.completed_at = "done", utcnow()
        request.removed, request.revocations = removed, revocations
    return removed, [(c.id, c.source) for c in connections], link_ids


def _remove_staging(runtime: Runtime, connection_ids: list[str]) -> int:
    files = 0
    for connection_id in connection_ids:
        folder = runtime.settings.staging_dir / connection_id
        if folder.exists():
            files += sum(1 for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
    return files


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


def run_erasure(
    runtime: Runtime,
    request_or_tenant_id: str,
    *,
    actor: str = "erasure",
    delete_partitions: DeletePartitions | None = None,
) -> ErasureReport:
    """Carry out an erasure request (by its id), or erase a tenant (by its id) at once.

    Safe to rerun: an interrupted or failed erasure continues where it stopped.
    """
    request = _resolve(runtime, request_or_tenant_id, actor)
    request_id, tenant_id = request.id, request.tenant_id
    report = ErasureReport(request_id, tenant_id, request.requested_at)

    marked = mark_erasing(runtime, request_id)
    report.revocations = revoke_grants(runtime, marked.connections)
    for attempt in range(1, _DELETE_ATTEMPTS + 1):
        try:
            removed, connections, link_ids = _delete_rows(runtime, request_id, report.revocations)
            break
        except (IntegrityError, DBAPIError) as exc:
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
    connection_ids = sorted({cid for cid, _ in connections} | {c[0] for c in marked.connections})
    for cid, source in [*connections, *((c[0], c[1]) for c in marked.connections)]:
        keys = report.partitions.setdefault(source, [])
        if cid not in keys:
            keys.append(cid)
    report.removed = dict(removed)
    report.removed["staging_files"] = _remove_staging(runtime, connection_ids)
    report.removed["access_log_lines"] = forget_links(runtime, link_ids)

    _drop_deleted_bytes(runtime, list(removed))
    result = verification.verify_erasure(runtime, tenant_id, connection_ids, secrets=marked.contact)
    if result.database_bytes and not result.rows:
        # secure_delete zeroes deleted cells; a VACUUM rewrites whatever still lingers.
        _drop_deleted_bytes(runtime, list(removed), full=True)
        result = verification.verify_erasure(
            runtime, tenant_id, connection_ids, secrets=marked.contact
        )
    report.verification = result

    with runtime.db.locked_session() as session:
        record = session.get(DeletionRequest, request_id)
        record.removed = report.removed
        record.verified = result.ok
        report.completed_at = record.completed_at
    if not result.ok:
        log.error("erasure %s: verification found tenant data left", request_id)

    if delete_partitions is not None:
        for source, keys in sorted(report.partitions.items()):
            delete_partitions(source, sorted(keys))
    return report


def _record_failure(runtime: Runtime, request_id: str, exc: BaseException) -> None:
    with runtime.db.locked_session() as session:
        request = session.get(DeletionRequest, request_id)
        if request is not None and request.status != "done":
            request.status, request.error = "failed", type(exc).__name__
