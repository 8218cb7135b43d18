"""facts: one primary key (tenant, connection, day, metric, dimension), no surrogate id

The fact table had a surrogate id, a unique key on (connection, metric, dimension,
day), an index on (tenant, metric, day) and two foreign keys: every row was stored
three times and, on PostgreSQL, checked by two triggers. Now the identity is the
primary key: a tenant's rows lie together, each connection's days in order within them,
so a refresh or a check of one connection and a tenant's view (one range per
connection) each read ranges of the key; on SQLite the table is clustered on it
(WITHOUT ROWID). Existing rows are copied across.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEY = ["tenant_id", "connection_id", "day", "metric", "dimension"]


def _columns() -> list[sa.Column]:
    return [
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("dimension", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _is_postgres():
        # Constraint and index names are schema-wide there: free the old table's pk name.
        op.drop_constraint("pk_facts", "facts", type_="primary")
    op.rename_table("facts", "facts_0005")
    op.create_table(
        "facts",
        *_columns(),
        sa.PrimaryKeyConstraint(*KEY, name=op.f("pk_facts")),
        sqlite_with_rowid=False,
    )
    # In key order, so the new key is built by appending.
    op.execute(
        "INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, updated_at) "
        "SELECT tenant_id, connection_id, day, metric, dimension, value, updated_at "
        "FROM facts_0005 ORDER BY tenant_id, connection_id, day, metric, dimension"
    )
    op.drop_table("facts_0005")


def downgrade() -> None:
    if _is_postgres():
        op.drop_constraint("pk_facts", "facts", type_="primary")
    op.rename_table("facts", "facts_0006")
    op.create_table(
        "facts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("dimension", sa.String(length=128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"], ["connections.id"], name=op.f("fk_facts_connection_id_connections")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_facts_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facts")),
        sa.UniqueConstraint(
            "connection_id",
            "metric",
            "dimension",
            "day",
            name=op.f("uq_facts_connection_id_metric_dimension_day"),
        ),
    )
    op.create_index(op.f("ix_facts_tenant_id_metric_day"), "facts", ["tenant_id", "metric", "day"])
    op.execute(
        "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, updated_at) "
        "SELECT tenant_id, connection_id, metric, dimension, day, value, updated_at "
        "FROM facts_0006 ORDER BY connection_id, metric, dimension, day"
    )
    op.drop_table("facts_0006")
