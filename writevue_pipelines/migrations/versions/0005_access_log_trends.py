"""access-log trends: daily dashboard views by dimension, and use per day (aggregate only)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trend_views",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("dimension", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "dimension", "value", name=op.f("pk_trend_views")),
    )
    op.create_table(
        "trend_interactions",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.Column("interactions", sa.Integer(), nullable=False),
        sa.Column("exports", sa.Integer(), nullable=False),
        sa.Column("interactions_per_view", sa.Double(), nullable=False),
        sa.Column("rolled_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_trend_interactions")),
    )


def downgrade() -> None:
    op.drop_table("trend_interactions")
    op.drop_table("trend_views")
