"""Mail: sent-message keys (idempotent sends), followed campaigns, failed e-mail bookkeeping,
unsubscribed users.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: rowid alias


def upgrade() -> None:
    op.create_table(
        "mail_sent",
        sa.Column("id", BIGINT_ID, nullable=False),
        sa.Column("message_key", sa.String(length=200), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_sent")),
        sa.UniqueConstraint(
            "message_key", "recipient", name=op.f("uq_mail_sent_message_key_recipient")
        ),
    )
    op.create_index(op.f("ix_mail_sent_created_at"), "mail_sent", ["created_at"])
    op.create_table(
        "campaign_follows",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_follows_campaign_id_campaigns"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_campaign_follows_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", "campaign_id", name=op.f("pk_campaign_follows")),
    )
    op.add_column("users", sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("failed_emails", sa.Column("message_key", sa.String(length=200), nullable=True))
    op.add_column("failed_emails", sa.Column("job_id", sa.String(length=128), nullable=True))
    op.add_column(
        "failed_emails",
        sa.Column("status", sa.String(length=32), nullable=False, server_default="failed"),
    )
    op.add_column(
        "failed_emails", sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(op.f("ix_failed_emails_status"), "failed_emails", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_failed_emails_status"), table_name="failed_emails")
    with op.batch_alter_table("failed_emails") as batch:
        for column in ("retried_at", "status", "job_id", "message_key"):
            batch.drop_column(column)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("unsubscribed_at")
    op.drop_table("campaign_follows")
    op.drop_index(op.f("ix_mail_sent_created_at"), table_name="mail_sent")
    op.drop_table("mail_sent")
