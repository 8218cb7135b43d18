"""guess failures: the dashboard tier's guessing limiter, shared by every process

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guess_failures",
        sa.Column("surface", sa.String(length=16), nullable=False),
        sa.Column("key_hmac", sa.String(length=32), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("previous_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("surface", "key_hmac", "slot", name=op.f("pk_guess_failures")),
    )
    with op.batch_alter_table("guess_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_guess_failures_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("guess_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_guess_failures_at"))
    op.drop_table("guess_failures")
