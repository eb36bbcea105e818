"""SQL tables of the payments domain (beside :mod:`acmeq.storage.models`).

Every money effect has a unique key that decides whether it already happened:

* a donation completes once: ``UPDATE donations ... WHERE status = 'pending'`` (rowcount);
* a milestone is recorded once: UNIQUE(campaign_id, percent);
* a refund is applied once: UNIQUE(idempotency_key) and ``UPDATE refunds ... WHERE status =
  'pending'``;
* an employee's matched total per company and year is one row: UNIQUE(company_id, user_id, year),
  locked while a match is computed, so two concurrent donations cannot both use the last of a cap.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from acmeq.storage.models import BigIntId, _at, _enum, _money


class RefundStatus(StrEnum):
    PENDING = "pending"  # requested, the gateway has not confirmed it yet
    SUCCEEDED = "succeeded"  # money returned and the totals adjusted
    FAILED = "failed"  # the gateway refused it for good


class RefundSource(StrEnum):
    REQUEST = "request"  # asked for here (`acmeq donation refund`): acmeq calls the gateway
    PROVIDER = "provider"  # reported by the provider's webhook (refunded in its dashboard)


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    donation_id: int = Field(
        foreign_key="donations.id", sa_type=sa.BigInteger, nullable=False, index=True
    )
    amount_minor: int = _money()
    currency: str = Field(max_length=3)
    matched_reversed_minor: int = _money()
    reason: str = Field(default="", max_length=500)
    status: RefundStatus = Field(
        default=RefundStatus.PENDING, sa_type=_enum(RefundStatus), nullable=False
    )
    source: RefundSource = Field(
        default=RefundSource.REQUEST, sa_type=_enum(RefundSource), nullable=False
    )
    idempotency_key: str = Field(max_length=255, unique=True)
    gateway_refund_id: str | None = Field(default=None, max_length=255, nullable=True)
    error: str | None = Field(default=None, sa_type=sa.Text, nullable=True)
    created_at: datetime = _at()
    completed_at: datetime | None = _at(nullable=True)


class CampaignMilestone(SQLModel, table=True):
    """25/50/75/100 % of a campaign's goal, recorded the first time its total reaches it."""

    __tablename__ = "campaign_milestones"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "percent"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaigns.id", nullable=False)
    percent: int = Field(nullable=False)
    raised_minor: int = _money()
    donation_id: int | None = Field(default=None, sa_type=sa.BigInteger, nullable=True)
    reached_at: datetime = _at()


class EmployeeMatchTotal(SQLModel, table=True):
    """What a company has matched for one employee in one calendar year (the yearly cap)."""

    __tablename__ = "employee_match_totals"
    __table_args__ = (sa.UniqueConstraint("company_id", "user_id", "year"),)

    id: int | None = Field(default=None, primary_key=True)
    company_id: int = Field(foreign_key="companies.id", nullable=False)
    user_id: int = Field(foreign_key="users.id", nullable=False)
    year: int = Field(nullable=False)
    matched_minor: int = _money()
    updated_at: datetime = _at()


__all__ = [
    "BigIntId",
    "CampaignMilestone",
    "EmployeeMatchTotal",
    "Refund",
    "RefundSource",
    "RefundStatus",
]
