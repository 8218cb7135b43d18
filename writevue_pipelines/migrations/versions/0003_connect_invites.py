"""connect invites: one-time, expiring links to a client's connect page

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connect_invites",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("oauth_state_sha256", sa.String(length=64), nullable=True),
        sa.Column("spent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("connection_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_connect_invites_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connect_invites")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_connect_invites_token_sha256")),
    )
    with op.batch_alter_table("connect_invites", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_connect_invites_oauth_state_sha256"),
            ["oauth_state_sha256"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_connect_invites_tenant_id"), ["tenant_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("connect_invites", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_connect_invites_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_connect_invites_oauth_state_sha256"))
    op.drop_table("connect_invites")
