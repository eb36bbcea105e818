"""Payments: webhook event processing, donation completion, corporate matches, milestones, refunds.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: rowid alias


def _at(name: str, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _money(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "refunds",
        sa.Column("id", BIGINT_ID, nullable=False),
        sa.Column("donation_id", sa.BigInteger(), nullable=False),
        _money("amount_minor"),
        sa.Column("currency", sa.String(length=3), nullable=False),
        _money("matched_reversed_minor"),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("gateway_refund_id", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _at("created_at"),
        _at("completed_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["donation_id"], ["donations.id"], name=op.f("fk_refunds_donation_id_donations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_refunds_idempotency_key")),
    )
    op.create_index(op.f("ix_refunds_donation_id"), "refunds", ["donation_id"])
    op.create_table(
        "campaign_milestones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        _money("raised_minor"),
        sa.Column("donation_id", sa.BigInteger(), nullable=True),
        _at("reached_at"),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_milestones_campaign_id_campaigns"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_milestones")),
        sa.UniqueConstraint(
            "campaign_id", "percent", name=op.f("uq_campaign_milestones_campaign_id_percent")
        ),
    )
    op.create_table(
        "employee_match_totals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("company_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        _money("matched_minor"),
        _at("updated_at"),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
            name=op.f("fk_employee_match_totals_company_id_companies"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_employee_match_totals_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_employee_match_totals")),
        sa.UniqueConstraint(
            "company_id",
            "user_id",
            "year",
            name=op.f("uq_employee_match_totals_company_id_user_id_year"),
        ),
    )
    # `acmeq webhook events --status` and the reconcile scan of recorded-but-unprocessed events.
    op.create_index(
        op.f("ix_webhook_events_status_received_at"), "webhook_events", ["status", "received_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_events_status_received_at"), table_name="webhook_events")
    op.drop_table("employee_match_totals")
    op.drop_table("campaign_milestones")
    op.drop_index(op.f("ix_refunds_donation_id"), table_name="refunds")
    op.drop_table("refunds")
