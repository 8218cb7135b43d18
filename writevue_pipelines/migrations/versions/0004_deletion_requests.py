"""deletion requests: a client's erasure request, then the one record kept of the tenant

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletion_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed", sa.JSON(), nullable=False),
        sa.Column("revocations", sa.JSON(), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletion_requests")),
    )
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deletion_requests_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deletion_requests_status"))
    op.drop_table("deletion_requests")
