"""notification suppressions: addresses that unsubscribed or bounced, per tenant

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "notification_suppressions",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address_sha256", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notification_suppressions_tenant_id_tenants"),
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "channel", "address_sha256", name=op.f("pk_notification_suppressions")
        ),
    )
    # rows queued or added before this revision keep None: the code then hashes the
    # decrypted address when it needs to (a migration has no keys to decrypt with)
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_notification_deliveries_address_sha256"),
            ["address_sha256"],
            unique=False,
        )
    with op.batch_alter_table("notification_recipients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("address_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table("notification_recipients", schema=None) as batch_op:
        batch_op.drop_column("address_sha256")
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_deliveries_address_sha256"))
        batch_op.drop_column("address_sha256")
    op.drop_table("notification_suppressions")
