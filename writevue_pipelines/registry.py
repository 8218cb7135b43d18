"""Tenants, connections, their encrypted credentials, sync cursors and audit events."""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.orm import Session

from .errors import InvalidInput, NotFound, SourceError
from .models import AuditEvent, Connection, Credential, SyncCursor, Tenant, utcnow
from .vault import Binding, KeyRing

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

#: a connection the operator paused: kept and shown as of its pause, never refreshed
PAUSED = "paused"
#: a connection saved with ``--no-verify``: refreshed; its first refresh decides
UNVERIFIED = "unverified"
#: the status an erasure gives a tenant's connections, in its own commit, before it deletes
ERASING = "erasing"
#: statuses whose connections no schedule, sensor or `writevue refresh` refreshes
NOT_REFRESHED = ("disabled", PAUSED, ERASING)
#: where a paused connection keeps the status it had, in its (non-secret) options
PAUSED_FROM = "paused_from"


def hidden_statuses(*, with_paused: bool) -> list[str]:
    """The statuses ``list_connections(active_only=True)`` leaves out: every one not
    refreshed, but ``paused`` when ``with_paused`` (a client's dashboard shows a paused
    connection's figures, as of its pause)."""
    return [s for s in NOT_REFRESHED if not (with_paused and s == PAUSED)]


#: the fewest characters of an id that name it by prefix (as git does)
MIN_ID_PREFIX = 4


@dataclass(frozen=True)
class TenantInfo:
    id: str
    name: str
    email: str
    created_at: dt.datetime


@dataclass(frozen=True)
class ConnectionInfo:
    id: str
    tenant_id: str
    source: str
    auth_kind: str
    options: dict[str, Any]
    status: str
    last_error: str | None
    last_refreshed_at: dt.datetime | None


def parse_uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidInput(
            f"{what} {value!r} is not a valid id; ids look like {uuid.uuid4()}."
        ) from None


# -- tenants ----------------------------------------------------------------


def add_tenant(session: Session, keys: KeyRing, name: str, email: str) -> str:
    name = (name or "").strip()
    email = (email or "").strip()
    if not name:
        raise InvalidInput("The tenant name is empty; give the client's name.")
    if len(name) > 200:
        raise InvalidInput("The tenant name is longer than 200 characters.")
    if not _EMAIL.match(email):
        raise InvalidInput(f"{email!r} is not an email address.")
    tenant_id = str(uuid.uuid4())
    session.add(
        Tenant(
            id=tenant_id,
            name_ct=keys.encrypt(name, Binding(tenant_id, None, "tenant.name")),
            email_ct=keys.encrypt(email, Binding(tenant_id, None, "tenant.email")),
        )
    )
    session.flush()
    return tenant_id


def _tenant_info(row: Tenant, keys: KeyRing) -> TenantInfo:
    return TenantInfo(
        id=row.id,
        name=keys.decrypt_text(row.name_ct, Binding(row.id, None, "tenant.name")),
        email=keys.decrypt_text(row.email_ct, Binding(row.id, None, "tenant.email")),
        created_at=row.created_at,
    )


def get_tenant(session: Session, keys: KeyRing, tenant_id: str) -> TenantInfo:
    row = session.get(Tenant, parse_uuid(tenant_id, "Tenant"))
    if row is None:
        raise NotFound(f"No tenant with id {tenant_id}; `writevue tenant list` shows them.")
    return _tenant_info(row, keys)


def require_tenant(session: Session, tenant_id: str) -> str:
    tenant_id = parse_uuid(tenant_id, "Tenant")
    if session.get(Tenant, tenant_id) is None:
        raise NotFound(f"No tenant with id {tenant_id}; `writevue tenant list` shows them.")
    return tenant_id


def list_tenants(session: Session, keys: KeyRing) -> list[TenantInfo]:
    rows = session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))
    return [_tenant_info(row, keys) for row in rows]


# -- connections and credentials --------------------------------------------


def add_connection(
    session: Session,
    keys: KeyRing,
    tenant_id: str,
    source: str,
    auth_kind: str,
    options: dict[str, Any],
    secrets: dict[str, str],
    *,
    status: str = "active",
) -> str:
    tenant_id = require_tenant(session, tenant_id)
    connection_id = str(uuid.uuid4())
    session.add(
        Connection(
            id=connection_id,
            tenant_id=tenant_id,
            source=source,
            auth_kind=auth_kind,
            options=options,
            status=status,
        )
    )
    session.flush()
    for field, value in secrets.items():
        put_secret(session, keys, tenant_id, connection_id, field, value)
    return connection_id


def put_secret(
    session: Session, keys: KeyRing, tenant_id: str, connection_id: str, field: str, value: str
) -> None:
    blob = keys.encrypt(value, Binding(tenant_id, connection_id, field))
    row = session.get(Credential, (connection_id, field))
    if row is None:
        session.add(
            Credential(
                connection_id=connection_id,
                field=field,
                tenant_id=tenant_id,
                ciphertext=blob,
                key_version=keys.primary,
            )
        )
    else:
        row.ciphertext, row.key_version, row.updated_at = blob, keys.primary, utcnow()


def get_secrets(session: Session, keys: KeyRing, connection: ConnectionInfo) -> dict[str, str]:
    rows = session.scalars(select(Credential).where(Credential.connection_id == connection.id))
    return {
        row.field: keys.decrypt_text(
            row.ciphertext, Binding(row.tenant_id, row.connection_id, row.field)
        )
        for row in rows
    }


def _connection_info(row: Connection) -> ConnectionInfo:
    return ConnectionInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        source=row.source,
        auth_kind=row.auth_kind,
        # what a paused connection keeps for its resume is no option of its source
        options={k: v for k, v in (row.options or {}).items() if k != PAUSED_FROM},
        status=row.status,
        last_error=row.last_error,
        last_refreshed_at=row.last_refreshed_at,
    )


def get_connection(session: Session, connection_id: str) -> ConnectionInfo:
    row = session.get(Connection, parse_uuid(connection_id, "Connection"))
    if row is None:
        raise NotFound(f"No connection with id {connection_id}.")
    return _connection_info(row)


def list_connections(
    session: Session,
    *,
    tenant_id: str | None = None,
    source: str | None = None,
    active_only: bool = False,
    status: str | None = None,
    with_paused: bool = False,
) -> list[ConnectionInfo]:
    """Connections, oldest first.

    ``active_only``: the connections that are refreshed (what the schedules' partitions,
    the failing-connections retries and `writevue refresh` read): not disabled, not
    paused. ``with_paused`` keeps paused ones too: what a client's dashboard shows (a
    paused connection's figures stay, as of its pause).
    """
    query = select(Connection).order_by(Connection.created_at, Connection.id)
    if status is not None:
        query = query.where(Connection.status == status)
    if tenant_id is not None:
        query = query.where(Connection.tenant_id == tenant_id)
    if source is not None:
        query = query.where(Connection.source == source)
    if active_only:
        query = query.where(Connection.status.not_in(hidden_statuses(with_paused=with_paused)))
    return [_connection_info(row) for row in session.scalars(query)]


#: statuses a refresh that read its source turns back to active: it proves the credential
#: works again (a key re-entered); an OAuth2 connection that needs re-authorising never
#: gets that far
RECOVERED_BY_A_REFRESH = ("failing", "needs_reauth", UNVERIFIED)


def record_refresh_result(
    session: Session, connection_id: str, *, error: str | None, at: dt.datetime | None = None
) -> None:
    row = session.get(Connection, connection_id)
    if row is None:
        return
    if error is None:
        row.last_refreshed_at = at or utcnow()
        row.last_error = None
        if row.status in RECOVERED_BY_A_REFRESH:
            row.status = "active"
    else:
        row.last_error = error[:500]
        # A paused connection stays paused (a refresh that began before the pause).
        if row.status in ("active", UNVERIFIED):
            row.status = "failing"


def set_paused(session: Session, connection_id: str, paused: bool) -> tuple[ConnectionInfo, bool]:
    """Pause or resume a connection: (the connection now, whether it changed).

    A resumed connection gets back the status it had when it was paused (kept in its
    options while paused: no column for it), so a connection that needed
    reconnecting, or whose first refresh is still to decide, says so again. One paused
    before that was kept is ``active``, or ``failing`` if its last refresh failed. A
    disabled connection, or one being erased, is refused.
    """
    row = session.get(Connection, parse_uuid(connection_id, "Connection"))
    if row is None:
        raise NotFound(f"No connection with id {connection_id}.")
    if row.status == ERASING:
        raise InvalidInput(f"Connection {row.id} is being erased; it cannot be paused or resumed.")
    if row.status == "disabled":
        raise InvalidInput(
            f"Connection {row.id} is disabled; it is not refreshed, nothing to pause."
        )
    changed = (row.status == PAUSED) != paused
    if changed:
        options = dict(row.options or {})
        if paused:
            options[PAUSED_FROM] = row.status
            row.status = PAUSED
        else:
            before = options.pop(PAUSED_FROM, None)
            row.status = before or ("failing" if row.last_error else "active")
        row.options = options  # a new dict: the JSON column sees the change
        session.flush()
    return _connection_info(row), changed


# -- ids by prefix --------------------------------------------------------------


def ids_with_prefix(session: Session, prefix: str, columns, *, limit: int = 1000) -> list[str]:
    """The distinct values of these id columns that begin with ``prefix``, sorted."""
    found: set[str] = set()
    for column in columns:
        query = select(column).where(column.startswith(prefix, autoescape=True)).distinct()
        found.update(v for v in session.scalars(query.limit(limit)) if v)
    return sorted(found)


# -- sync cursors -------------------------------------------------------------


def get_cursor(session: Session, connection_id: str, stream: str) -> str | None:
    row = session.get(SyncCursor, (connection_id, stream))
    return None if row is None else row.value


def record_loads(
    session: Session, loads: list[tuple[ConnectionInfo, tuple[str, str] | None]]
) -> None:
    """Loads' bookkeeping, in their transaction, two statements for all of them: each
    connection's cursor (stream, value) moved where its fetch found one, and each one's
    refresh recorded as successful (``record_refresh_result(error=None)``), built once
    and without the ORM (the load's session holds no object of the connections, which
    would not see the update)."""
    if not loads:
        return
    upsert_cursor = _load_statements(session.get_bind().dialect.name)[0]
    now = utcnow()
    cursors = [
        {
            "connection_id": connection.id,
            "stream": cursor[0],
            "tenant_id": connection.tenant_id,
            "value": cursor[1],
            "updated_at": now,
        }
        for connection, cursor in loads
        if cursor is not None
    ]
    if cursors:
        session.execute(upsert_cursor, cursors)
    session.execute(
        _refreshed_many(),
        {"ids": [connection.id for connection, _ in loads], "at": now},
    )


def set_cursor(session: Session, connection: ConnectionInfo, stream: str, value: str) -> None:
    """Move a connection's cursor for ``stream`` to ``value``: one upsert built once,
    without the ORM (a ``SyncCursor`` the session holds would not see it)."""
    session.execute(
        _load_statements(session.get_bind().dialect.name)[0],
        {
            "connection_id": connection.id,
            "stream": stream,
            "tenant_id": connection.tenant_id,
            "value": value,
            "updated_at": utcnow(),
        },
    )


@functools.cache
def _load_statements(dialect: str) -> tuple[Any, Any]:
    """(the cursor's upsert, the successful refresh's update of the connection)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    cursors, connections = SyncCursor.__table__, Connection.__table__
    inserted = insert(cursors)
    upsert_cursor = inserted.on_conflict_do_update(
        index_elements=[cursors.c.connection_id, cursors.c.stream],
        set_={"value": inserted.excluded.value, "updated_at": inserted.excluded.updated_at},
    )
    refreshed = _refreshed(connections.c.id == bindparam("connection"))
    return upsert_cursor, refreshed


@functools.cache
def _refreshed_many():
    """The successful refresh's update of the connections ``ids``, built once."""
    return _refreshed(Connection.__table__.c.id.in_(bindparam("ids", expanding=True)))


def _refreshed(which):
    connections = Connection.__table__
    return (
        update(connections)
        .where(which)
        .values(
            last_refreshed_at=bindparam("at"),
            last_error=None,
            status=case(
                (connections.c.status.in_(RECOVERED_BY_A_REFRESH), "active"),
                else_=connections.c.status,
            ),
        )
    )


# -- audit ------------------------------------------------------------------


def audit(
    session: Session,
    actor: str,
    action: str,
    tenant_id: str | None = None,
    *,
    reason: str | None = None,
    **details: Any,
) -> None:
    session.add(
        AuditEvent(actor=actor, action=action, tenant_id=tenant_id, details=details, reason=reason)
    )


def list_audit(
    session: Session,
    tenant_id: str | None = None,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[AuditEvent]:
    """Audit events, oldest first; ``action`` ending in ``.`` matches every action it begins."""
    query = select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id)
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if action is not None:
        if action.endswith("."):
            query = query.where(AuditEvent.action.startswith(action, autoescape=True))
        else:
            query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    return list(session.scalars(query))


# -- erasure guard ------------------------------------------------------------


class ConnectionErased(SourceError):
    """The connection is gone or being erased: a late refresh must write nothing."""


def writable_connections(
    session: Session, connection_ids: list[str]
) -> dict[str, ConnectionInfo | ConnectionErased]:
    """The connections, locked against a concurrent erasure until the transaction ends:
    each one's row, or the ``ConnectionErased`` to raise for it.

    A connection that is gone or being erased is refused, so a refresh that fetched
    before an erasure cannot write its results back afterwards. On PostgreSQL the rows
    are locked FOR SHARE, in the order of their ids, as the erasure locks a tenant's (its
    status update waits for this transaction, then deletes what it wrote; neither waits
    for the other for ever); on SQLite the caller's BEGIN IMMEDIATE serialises.
    """
    query = _writable_query(session.get_bind().dialect.name)
    rows = {row.id: row for row in session.execute(query, {"ids": connection_ids})}
    found: dict[str, ConnectionInfo | ConnectionErased] = {}
    for connection_id in connection_ids:
        row = rows.get(connection_id)
        if row is None or row.status == ERASING:
            found[connection_id] = ConnectionErased(
                f"connection {connection_id} has been erased (or is being erased); "
                "its refresh wrote nothing",
                connection_id=connection_id,
            )
        else:
            found[connection_id] = _connection_info(row)
    return found


@functools.cache
def _writable_query(dialect: str):
    """The connections' rows, read fresh (a Core statement: no stale ORM object), built
    once; on PostgreSQL locked FOR SHARE in the order of their ids."""
    table = Connection.__table__
    ids = bindparam("ids", expanding=True)
    query = select(table).where(table.c.id.in_(ids)).order_by(table.c.id)
    return query.with_for_update(read=True) if dialect == "postgresql" else query
