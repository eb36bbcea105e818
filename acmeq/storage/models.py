"""SQL tables of acmeq (SQLModel): domain data, job history, idempotency keys and audit trail.

Conventions every table follows:

* Money is an integer amount of minor units (cents) plus an ISO 4217 currency code, never a
  float; totals use BIGINT so a large campaign cannot overflow.
* States are ``str`` enums stored as their *values* in a VARCHAR (no native PostgreSQL ENUM, no
  CHECK constraint), so adding a state is a code change, not a table rebuild on SQLite.
* Times are timezone-aware UTC. SQLite keeps no offset, so :class:`UTCDateTime` re-attaches UTC
  on the way out and converts aware values to UTC on the way in.
* Constraint and index names follow :data:`NAMING_CONVENTION`, so migrations can name them.

Importing this module only declares tables; the schema is created by the alembic migrations in
``acmeq/migrations`` (``acmeq db upgrade``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# Must be set before the first table below is declared: names are given at attach time.
SQLModel.metadata.naming_convention = NAMING_CONVENTION


class UTCDateTime(sa.TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always hands back aware UTC datetimes.

    Naive datetimes are refused on the way in: guessing their zone is how off-by-an-hour bugs in
    retention jobs are born.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite stores the UTC wall time without an offset
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON everywhere; JSONB on PostgreSQL so values can be compared and indexed.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY, so big ids are BIGINT elsewhere only.
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default of every ``*_at`` column)."""
    return datetime.now(UTC)


def _enum(enum: type[Enum]) -> sa.Enum:
    # Store values ("completed"), not member names ("COMPLETED"), in a plain VARCHAR(32).
    return sa.Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def _at(*, nullable: bool = False, index: bool = False) -> Any:
    """A UTC timestamp column; required ones default to now."""
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)


def _money(*, nullable: bool = False, default: int | None = 0) -> Any:
    """An amount in minor units (BIGINT)."""
    return Field(default=default, sa_type=sa.BigInteger, nullable=nullable)


def _json(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=JSONType, nullable=nullable)


# ---------------------------------------------------------------------------------------------
# States


class UserRole(StrEnum):
    EMPLOYEE = "employee"
    ORGANIZER = "organizer"
    ADMIN = "admin"


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class DonationStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"

    @property
    def counts_towards_total(self) -> bool:
        """Whether the donation's net amount is part of its campaign's raised total."""
        return self in (DonationStatus.COMPLETED, DonationStatus.PARTIALLY_REFUNDED)


class Gateway(StrEnum):
    STRIPE = "stripe"
    MOLLIE = "mollie"
    PAYPAL = "paypal"


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class WebhookStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    FAILED = "failed"
    IGNORED = "ignored"


class ExportKind(StrEnum):
    CAMPAIGNS = "campaigns"
    DONATIONS = "donations"
    REPORT = "report"


class ExportFormat(StrEnum):
    CSV = "csv"
    XLSX = "xlsx"
    PDF = "pdf"


class ExportStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


# ---------------------------------------------------------------------------------------------
# Domain


class Company(SQLModel, table=True):
    """An employer that matches its employees' donations.

    ``match_ratio_bp`` is in basis points: 10000 = 1:1, 5000 = 50 cents per unit donated. Caps are
    in the company's currency; ``None`` means no cap.
    """

    __tablename__ = "companies"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    match_ratio_bp: int = Field(default=10000, nullable=False)
    match_cap_per_donation_minor: int | None = _money(nullable=True, default=None)
    match_cap_per_employee_year_minor: int | None = _money(nullable=True, default=None)
    currency: str = Field(max_length=3)
    created_at: datetime = _at()


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    name: str = Field(max_length=200)
    role: UserRole = Field(default=UserRole.EMPLOYEE, sa_type=_enum(UserRole), nullable=False)
    company_id: int | None = Field(default=None, foreign_key="companies.id", nullable=True)
    locale: str = Field(default="en", max_length=16)
    # Postal address (tax receipts); personal data: exported only with --include-pii.
    address: str | None = Field(default=None, sa_type=sa.Text, nullable=True)
    # Campaign mailings and digests skip users who unsubscribed (migration 0002_mail).
    unsubscribed_at: datetime | None = _at(nullable=True)
    created_at: datetime = _at()


class Campaign(SQLModel, table=True):
    """A fundraising campaign.

    Its totals are kept equal to its donations that count (:attr:`DonationStatus.
    counts_towards_total`): ``raised_minor`` = sum of ``amount_minor - refunded_minor``,
    ``matched_minor`` = sum of ``matched_minor``, ``donation_count`` = their number.
    """

    __tablename__ = "campaigns"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    description: str = Field(default="", sa_type=sa.Text)
    goal_minor: int = _money()
    currency: str = Field(max_length=3)
    raised_minor: int = _money()
    matched_minor: int = _money()
    donation_count: int = Field(default=0, nullable=False)
    status: CampaignStatus = Field(
        default=CampaignStatus.DRAFT, sa_type=_enum(CampaignStatus), nullable=False, index=True
    )
    starts_at: datetime | None = _at(nullable=True)
    # A calendar day: the campaign accepts donations through the whole of this day.
    end_date: date | None = Field(default=None, nullable=True)
    organizer_id: int = Field(foreign_key="users.id", nullable=False, index=True)
    company_id: int | None = Field(default=None, foreign_key="companies.id", nullable=True)
    created_at: datetime = _at()
    updated_at: datetime = _at()


class Donation(SQLModel, table=True):
    """One payment towards a campaign; ``gateway_transaction_id`` makes webhook effects unique."""

    __tablename__ = "donations"
    __table_args__ = (sa.Index(None, "campaign_id", "status"),)

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    # Indexed through the leading column of ix_donations_campaign_id_status.
    campaign_id: int = Field(foreign_key="campaigns.id", nullable=False)
    # SET NULL: erasing a donor (GDPR) must keep the money trail.
    donor_id: int | None = Field(
        default=None, foreign_key="users.id", ondelete="SET NULL", nullable=True, index=True
    )
    amount_minor: int = _money()
    currency: str = Field(max_length=3)
    status: DonationStatus = Field(
        default=DonationStatus.PENDING, sa_type=_enum(DonationStatus), nullable=False
    )
    gateway: Gateway = Field(sa_type=_enum(Gateway), nullable=False)
    gateway_transaction_id: str | None = Field(
        default=None, max_length=255, unique=True, nullable=True
    )
    anonymous: bool = Field(default=False, nullable=False)
    donor_locale: str = Field(default="en", max_length=16)
    matched_minor: int = _money()
    refunded_minor: int = _money()
    created_at: datetime = _at(index=True)
    completed_at: datetime | None = _at(nullable=True)
    refunded_at: datetime | None = _at(nullable=True)
    updated_at: datetime = _at()


# ---------------------------------------------------------------------------------------------
# Operations: audit, job history, idempotency, failures


class AuditLog(SQLModel, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (sa.Index(None, "entity_type", "entity_id"),)

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    at: datetime = _at(index=True)
    actor: str = Field(max_length=200)  # "user:42", "job:<id>", "acmeq seed"
    action: str = Field(max_length=100)  # "donation.completed", "refund.processed"
    entity_type: str = Field(max_length=64)
    entity_id: str = Field(max_length=128)  # a string: job ids and provider ids are not ints
    data: dict[str, Any] | None = _json()


class JobProgress(SQLModel, table=True):
    """History of one job run; the live numbers are in Redis while the job runs."""

    __tablename__ = "job_progress"
    # Retention walks rows in (updated_at, id) order, one short batch at a time (migration 0005).
    __table_args__ = (sa.Index(None, "updated_at", "id"),)

    id: str = Field(primary_key=True, max_length=128)  # the RQ job id
    job_name: str = Field(max_length=200)
    queue: str = Field(max_length=100)
    # No foreign key: job history outlives users and may name users of the main platform.
    user_id: int | None = Field(default=None, nullable=True, index=True)
    status: JobStatus = Field(
        default=JobStatus.PENDING, sa_type=_enum(JobStatus), nullable=False, index=True
    )
    total: int = Field(default=0, nullable=False)
    processed: int = Field(default=0, nullable=False)
    failed: int = Field(default=0, nullable=False)
    message: str | None = Field(default=None, sa_type=sa.Text, nullable=True)
    meta: dict[str, Any] | None = _json()
    created_at: datetime = _at()
    started_at: datetime | None = _at(nullable=True)
    updated_at: datetime = _at()
    finished_at: datetime | None = _at(nullable=True)
    eta_at: datetime | None = _at(nullable=True)


class WebhookEvent(SQLModel, table=True):
    """A received provider event; UNIQUE(provider, event_id) makes redelivery a no-op."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        sa.UniqueConstraint("provider", "event_id"),
        sa.Index(None, "status", "received_at"),  # added by migration 0003 (payments)
    )

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    provider: str = Field(max_length=32)
    event_id: str = Field(max_length=255)
    event_type: str = Field(max_length=128)
    status: WebhookStatus = Field(
        default=WebhookStatus.RECEIVED, sa_type=_enum(WebhookStatus), nullable=False
    )
    payload: dict[str, Any] | None = _json()
    received_at: datetime = _at()
    processed_at: datetime | None = _at(nullable=True)
    error: str | None = Field(default=None, sa_type=sa.Text, nullable=True)
    job_id: str | None = Field(default=None, max_length=128, nullable=True)


class FailedEmail(SQLModel, table=True):
    __tablename__ = "failed_emails"

    id: int | None = Field(default=None, primary_key=True)
    to_address: str = Field(max_length=320)
    subject: str = Field(max_length=500)
    template: str = Field(max_length=200)
    locale: str = Field(default="en", max_length=16)
    error: str = Field(default="", sa_type=sa.Text)
    attempts: int = Field(default=0, nullable=False)
    payload: dict[str, Any] | None = _json()
    created_at: datetime = _at()
    last_attempt_at: datetime = _at()
    # Added by migration 0002_mail: which send it was (idempotency key, job) and what became of it
    # (failed | uncertain | retried; see acmeq.storage.models_mail.FailedEmailStatus).
    message_key: str | None = Field(default=None, max_length=200, nullable=True)
    job_id: str | None = Field(default=None, max_length=128, nullable=True)
    status: str = Field(default="failed", max_length=32, index=True)
    retried_at: datetime | None = _at(nullable=True)


class ExportFile(SQLModel, table=True):
    __tablename__ = "export_files"

    id: int | None = Field(default=None, primary_key=True)
    kind: ExportKind = Field(sa_type=_enum(ExportKind), nullable=False)
    format: ExportFormat = Field(sa_type=_enum(ExportFormat), nullable=False)
    path: str = Field(default="", sa_type=sa.Text)
    size_bytes: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    row_count: int = Field(default=0, nullable=False)
    status: ExportStatus = Field(
        default=ExportStatus.PENDING, sa_type=_enum(ExportStatus), nullable=False
    )
    user_id: int | None = Field(default=None, nullable=True)  # no FK: see JobProgress.user_id
    job_id: str | None = Field(default=None, max_length=128, nullable=True)
    sha256: str | None = Field(default=None, max_length=64, nullable=True)
    # What was asked for (filters, options, report name), for the record and re-runs.
    spec: dict[str, Any] | None = _json()
    include_pii: bool = Field(default=False, nullable=False)
    error: str | None = Field(default=None, sa_type=sa.Text, nullable=True)
    created_at: datetime = _at()
    completed_at: datetime | None = _at(nullable=True)
    expires_at: datetime | None = _at(nullable=True)


class FailedJob(SQLModel, table=True):
    """Permanent record of a job that used up its tries (RQ's failed registry expires)."""

    __tablename__ = "failed_jobs"

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    # Not unique: a retried job that fails again gets a second record.
    job_id: str = Field(max_length=128, index=True)
    queue: str = Field(max_length=100)
    job_name: str = Field(max_length=200)
    args: dict[str, Any] | None = _json()  # {"args": [...], "kwargs": {...}}
    exception: str = Field(default="", sa_type=sa.Text)
    traceback: str = Field(default="", sa_type=sa.Text)
    attempts: int = Field(default=0, nullable=False)
    enqueued_at: datetime | None = _at(nullable=True)
    failed_at: datetime = _at(index=True)


__all__ = [
    "AuditLog",
    "Campaign",
    "CampaignStatus",
    "Company",
    "Donation",
    "DonationStatus",
    "ExportFile",
    "ExportFormat",
    "ExportKind",
    "ExportStatus",
    "FailedEmail",
    "FailedJob",
    "Gateway",
    "JobProgress",
    "JobStatus",
    "User",
    "UserRole",
    "WebhookEvent",
    "WebhookStatus",
    "utcnow",
]
