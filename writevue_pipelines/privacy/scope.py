"""Which rows of each table belong to a tenant, worked out from the schema alone.

A row belongs to a tenant when its table is the tenant table and its key is the
tenant's id, when it has a ``tenant_id`` column holding it, a ``connection_id``
column holding one of its connections, or a foreign key to a row that belongs to
it. A table added later is covered without anyone remembering to list it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, MetaData, Table, or_, select

from ..models import AuditEvent, Connection, DeletionRequest, Tenant, metadata

#: Tables whose rows about a tenant outlive it on purpose, by its opaque id only: the
#: erasure record, and the staff audit (who looked at its data and when; the erasure
#: clears each event's reason and details).
KEPT_TABLES = frozenset({DeletionRequest.__tablename__, AuditEvent.__tablename__})
TENANTS = Tenant.__tablename__
CONNECTIONS = Connection.__tablename__


def tenant_clause(
    table: Table,
    tenant_id: str,
    connection_ids: list[str],
    _seen: frozenset[str] = frozenset(),
) -> ColumnElement[bool] | None:
    """The WHERE clause selecting ``table``'s rows of this tenant; None if it has none."""
    clauses: list[ColumnElement[bool]] = []
    if table.name == TENANTS:
        clauses.extend(column == tenant_id for column in table.primary_key.columns)
    if "tenant_id" in table.c:
        clauses.append(table.c.tenant_id == tenant_id)
    if "connection_id" in table.c and connection_ids:
        clauses.append(table.c.connection_id.in_(connection_ids))
    seen = _seen | {table.name}
    for fk in table.foreign_keys:
        parent = fk.column.table
        if parent.name in seen:
            continue
        parent_clause = tenant_clause(parent, tenant_id, connection_ids, seen)
        if parent_clause is not None:
            clauses.append(fk.parent.in_(select(fk.column).where(parent_clause)))
    if not clauses:
        return None
    return or_(*clauses) if len(clauses) > 1 else clauses[0]


def connection_clause(
    table: Table, connection_ids: list[str], _seen: frozenset[str] = frozenset()
) -> ColumnElement[bool] | None:
    """The WHERE clause selecting ``table``'s rows of these connections alone (a
    connection's removal): the connections themselves, rows with a ``connection_id``
    among them, and rows with a foreign key to one of those; None if it has none."""
    clauses: list[ColumnElement[bool]] = []
    if table.name == CONNECTIONS:
        clauses.extend(column.in_(connection_ids) for column in table.primary_key.columns)
    if "connection_id" in table.c:
        clauses.append(table.c.connection_id.in_(connection_ids))
    seen = _seen | {table.name}
    for fk in table.foreign_keys:
        parent = fk.column.table
        if parent.name in seen:
            continue
        parent_clause = connection_clause(parent, connection_ids, seen)
        if parent_clause is not None:
            clauses.append(fk.parent.in_(select(fk.column).where(parent_clause)))
    if not clauses:
        return None
    return or_(*clauses) if len(clauses) > 1 else clauses[0]


def owned_tables(schema: MetaData = metadata) -> list[Table]:
    """Every table that can hold a tenant's rows, dependants before what they depend on."""
    tables = []
    for table in reversed(schema.sorted_tables):
        if table.name in KEPT_TABLES:
            continue
        if tenant_clause(table, "", []) is not None or "connection_id" in table.c:
            tables.append(table)
    return tables


__all__ = [
    "CONNECTIONS",
    "KEPT_TABLES",
    "TENANTS",
    "connection_clause",
    "owned_tables",
    "tenant_clause",
]
