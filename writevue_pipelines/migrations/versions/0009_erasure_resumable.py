"""erasure requests are done only once verified: what is left for the operator, the
identifiers to search for while an erasure runs, and grants whose revocation failed

Requests left ``done`` without a passed verification (an erasure killed between its
delete and its verification, before this revision) are reopened as ``failed``, so the
erasure sensor or a rerun finishes them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("actions", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("scope_ct", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("retry_ct", sa.LargeBinary(), nullable=True))
    requests = sa.table(
        "deletion_requests",
        sa.column("status", sa.String),
        sa.column("verified", sa.Boolean),
        sa.column("error", sa.String),
        sa.column("actions", sa.JSON),
    )
    op.execute(requests.update().values(actions=[]))
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.alter_column("actions", existing_type=sa.JSON(), nullable=False)
    op.execute(
        requests.update()
        .where(
            requests.c.status == "done",
            sa.or_(requests.c.verified.is_(None), requests.c.verified.is_(sa.false())),
        )
        .values(status="failed", error="not verified")
    )


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.drop_column("retry_ct")
        batch_op.drop_column("scope_ct")
        batch_op.drop_column("actions")
        batch_op.drop_column("verified_at")
