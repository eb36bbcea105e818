"""Refunds: requested here (the gateway is called) or reported by the provider (webhook).

A refund is a row with a unique idempotency key. Applying it is one transaction that flips the
row from ``pending`` to ``succeeded`` (row count decides: exactly once) and, in the same
transaction, raises the donation's refunded amount (guarded: never above what was paid),
reverses the corporate match in proportion, lowers the campaign's totals and the employee's
yearly matched total, and writes the audit trail.

Match reversal: with ``m`` matched on the ``r`` still counted of a donation, refunding ``x``
leaves ``floor(m * (r - x) / r)`` matched; a full refund reverses the whole match, and partial
refunds that add up to the whole also end at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.errors import PermanentGatewayError, RefundError
from acmeq.errors import RefundInFlight as RefundInFlight
from acmeq.payments.amounts import fmt
from acmeq.payments.donations import DonationNotFound
from acmeq.payments.gateways import Gateway, with_retries
from acmeq.payments.sqlutil import (
    CAMPAIGNS,
    DONATIONS,
    MATCH_TOTALS,
    REFUNDS,
    USERS,
    audit,
    insert_ignore,
)
from acmeq.storage.models import DonationStatus, utcnow
from acmeq.storage.models_payments import RefundSource, RefundStatus

REFUNDABLE = (DonationStatus.COMPLETED.value, DonationStatus.PARTIALLY_REFUNDED.value)


@dataclass(frozen=True)
class RefundRequest:
    refund_id: int
    created: bool  # False: a refund with this idempotency key existed (a no-op)
    amount_minor: int
    currency: str
    status: str


@dataclass(frozen=True)
class RefundOutcome:
    refund_id: int
    status: str
    applied: bool  # True: this call applied it (False: done before, or failed)
    amount_minor: int = 0
    matched_reversed_minor: int = 0
    error: str | None = None


def reversed_match(matched: int, remaining: int, refund: int) -> int:
    """How much of the match ``matched`` on ``remaining`` counted goes with a refund (pure)."""
    if remaining <= 0 or matched <= 0:
        return 0
    refund = min(refund, remaining)
    return matched - matched * (remaining - refund) // remaining


def _lock_donation(conn: sa.Connection, donation_id: int) -> Any:
    # A no-op UPDATE first: the row lock (PostgreSQL) or write lock (SQLite) is held before the
    # donation is read, so two refunds of one donation cannot both see the same balance.
    now = utcnow()
    conn.execute(sa.update(DONATIONS).where(DONATIONS.c.id == donation_id).values(updated_at=now))
    row = conn.execute(sa.select(DONATIONS).where(DONATIONS.c.id == donation_id)).first()
    if row is None:
        raise DonationNotFound(donation_id)
    return row


def request_refund(
    engine: Engine,
    donation_id: int,
    amount_minor: int | None = None,
    reason: str = "",
    key: str | None = None,
    actor: str = "acmeq",
) -> RefundRequest:
    """Record a refund request (pending); the same ``key`` twice returns the first one."""
    with engine.begin() as conn:
        if key is not None:
            existing = conn.execute(
                sa.select(REFUNDS).where(REFUNDS.c.idempotency_key == key)
            ).first()
            if existing is not None:
                return _request_of(existing, created=False)
        d = _lock_donation(conn, donation_id)
        if d.status not in REFUNDABLE:
            raise RefundError(f"donation {donation_id} is {d.status}; only completed ones refund")
        pending = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(REFUNDS.c.amount_minor), 0)).where(
                (REFUNDS.c.donation_id == donation_id)
                & (REFUNDS.c.status == RefundStatus.PENDING.value)
            )
        ).scalar_one()
        left = d.amount_minor - d.refunded_minor - int(pending)
        amount = left if amount_minor is None else amount_minor
        if amount <= 0 or amount > left:
            raise RefundError(
                f"cannot refund {fmt(amount, d.currency)} of donation {donation_id}: "
                f"{fmt(max(left, 0), d.currency)} is left to refund"
            )
        if key is None:
            # Same request while the first is still pending -> same key -> no-op.
            key = f"refund-{donation_id}-{amount}-{d.refunded_minor}-{int(pending)}"
            existing = conn.execute(
                sa.select(REFUNDS).where(REFUNDS.c.idempotency_key == key)
            ).first()
            if existing is not None:
                return _request_of(existing, created=False)
        now = utcnow()
        values = {
            "donation_id": donation_id,
            "amount_minor": amount,
            "currency": d.currency,
            "matched_reversed_minor": 0,
            "reason": reason[:500],
            "status": RefundStatus.PENDING.value,
            "source": RefundSource.REQUEST.value,
            "idempotency_key": key,
            "created_at": now,
        }
        insert_ignore(conn, REFUNDS, values, ["idempotency_key"])
        row = conn.execute(sa.select(REFUNDS).where(REFUNDS.c.idempotency_key == key)).one()
        audit(
            conn,
            now,
            actor,
            [
                (
                    "refund.requested",
                    "donation",
                    donation_id,
                    {"refund_id": row.id, "amount_minor": amount, "reason": reason},
                )
            ],
        )
        return _request_of(row, created=True)


def _request_of(row: Any, created: bool) -> RefundRequest:
    return RefundRequest(
        int(row.id), created, int(row.amount_minor), str(row.currency), str(row.status)
    )


def process_refund(
    engine: Engine,
    refund_id: int,
    gateway_for: Callable[[str], Gateway],
    tries: int = 4,
    actor: str = "acmeq",
) -> RefundOutcome:
    """Send a pending refund to its gateway (retrying transient errors) and apply it.

    A refund that is not pending is left alone (a redelivered job is a no-op). A permanent
    gateway error marks it failed; a transient one that outlasts the retries propagates, so the
    job is retried later (the idempotency key keeps the provider from refunding twice).
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(REFUNDS, DONATIONS.c.gateway, DONATIONS.c.gateway_transaction_id)
            .select_from(REFUNDS.join(DONATIONS, REFUNDS.c.donation_id == DONATIONS.c.id))
            .where(REFUNDS.c.id == refund_id)
        ).first()
    if row is None:
        raise RefundError(f"no refund with id {refund_id}")
    if row.status != RefundStatus.PENDING.value:
        return RefundOutcome(refund_id, str(row.status), False, int(row.amount_minor))
    try:
        if not row.gateway_transaction_id:
            raise PermanentGatewayError(str(row.gateway), "donation has no transaction id")
        gateway = gateway_for(str(row.gateway))
        result = with_retries(
            lambda: gateway.refund(
                row.gateway_transaction_id,
                row.amount_minor,
                row.currency,
                row.idempotency_key,
                row.reason,
            ),
            tries,
        )
    except PermanentGatewayError as exc:
        _mark_failed(engine, refund_id, row.donation_id, str(exc), actor)
        return RefundOutcome(refund_id, RefundStatus.FAILED.value, False, error=str(exc))
    return apply_refund(engine, refund_id, result.refund_id or None, actor)


def _mark_failed(engine: Engine, refund_id: int, donation_id: int, error: str, actor: str) -> None:
    now = utcnow()
    with engine.begin() as conn:
        done = conn.execute(
            sa.update(REFUNDS)
            .where((REFUNDS.c.id == refund_id) & (REFUNDS.c.status == RefundStatus.PENDING.value))
            .values(status=RefundStatus.FAILED.value, error=error, completed_at=now)
        ).rowcount
        if done:
            audit(
                conn,
                now,
                actor,
                [
                    (
                        "refund.failed",
                        "donation",
                        donation_id,
                        {"refund_id": refund_id, "error": error},
                    )
                ],
            )


def apply_refund(
    engine: Engine, refund_id: int, gateway_refund_id: str | None, actor: str = "acmeq"
) -> RefundOutcome:
    """Apply a pending refund to the donation, match, campaign and yearly totals, once."""
    with engine.begin() as conn:
        donation_id = conn.execute(
            sa.select(REFUNDS.c.donation_id).where(REFUNDS.c.id == refund_id)
        ).scalar()
        if donation_id is None:
            raise RefundError(f"no refund with id {refund_id}")
        return _apply(conn, int(donation_id), refund_id, gateway_refund_id, actor)


def _apply(
    conn: sa.Connection, donation_id: int, refund_id: int, gateway_refund_id: str | None, actor: str
) -> RefundOutcome:
    d = _lock_donation(conn, donation_id)
    now = utcnow()
    flipped = conn.execute(
        sa.update(REFUNDS)
        .where((REFUNDS.c.id == refund_id) & (REFUNDS.c.status == RefundStatus.PENDING.value))
        .values(
            status=RefundStatus.SUCCEEDED.value,
            gateway_refund_id=gateway_refund_id,
            completed_at=now,
        )
    ).rowcount
    refund = conn.execute(sa.select(REFUNDS).where(REFUNDS.c.id == refund_id)).one()
    if flipped != 1:
        return RefundOutcome(
            refund_id,
            str(refund.status),
            False,
            int(refund.amount_minor),
            int(refund.matched_reversed_minor),
        )
    remaining = d.amount_minor - d.refunded_minor
    amount = min(int(refund.amount_minor), remaining)  # never more than was paid
    reversed_ = reversed_match(d.matched_minor, remaining, amount)
    full = amount == remaining
    status = DonationStatus.REFUNDED if full else DonationStatus.PARTIALLY_REFUNDED
    counted = d.status in REFUNDABLE
    guard = (DONATIONS.c.id == donation_id) & (
        DONATIONS.c.refunded_minor + amount <= DONATIONS.c.amount_minor
    )
    conn.execute(
        sa.update(DONATIONS)
        .where(guard)
        .values(
            refunded_minor=DONATIONS.c.refunded_minor + amount,
            matched_minor=DONATIONS.c.matched_minor - reversed_,
            status=status.value,
            refunded_at=now,
            updated_at=now,
        )
    )
    if counted:
        conn.execute(
            sa.update(CAMPAIGNS)
            .where(CAMPAIGNS.c.id == d.campaign_id)
            .values(
                raised_minor=CAMPAIGNS.c.raised_minor - amount,
                matched_minor=CAMPAIGNS.c.matched_minor - reversed_,
                donation_count=CAMPAIGNS.c.donation_count - (1 if full else 0),
                updated_at=now,
            )
        )
    if reversed_ and d.donor_id is not None and d.completed_at is not None:
        _release_yearly_match(conn, d.donor_id, d.completed_at, reversed_, now)
    conn.execute(
        sa.update(REFUNDS)
        .where(REFUNDS.c.id == refund_id)
        .values(amount_minor=amount, matched_reversed_minor=reversed_)
    )
    audit(
        conn,
        now,
        actor,
        [
            (
                "refund.processed",
                "donation",
                donation_id,
                {
                    "refund_id": refund_id,
                    "amount_minor": amount,
                    "matched_reversed_minor": reversed_,
                    "status": status.value,
                    "gateway_refund_id": gateway_refund_id,
                },
            )
        ],
    )
    return RefundOutcome(refund_id, RefundStatus.SUCCEEDED.value, True, amount, reversed_)


def _release_yearly_match(
    conn: sa.Connection, donor_id: int, completed_at: datetime, amount: int, now: datetime
) -> None:
    company_id = conn.execute(sa.select(USERS.c.company_id).where(USERS.c.id == donor_id)).scalar()
    if company_id is None:
        return
    conn.execute(
        sa.update(MATCH_TOTALS)
        .where(
            (MATCH_TOTALS.c.company_id == company_id)
            & (MATCH_TOTALS.c.user_id == donor_id)
            & (MATCH_TOTALS.c.year == completed_at.year)
        )
        .values(matched_minor=MATCH_TOTALS.c.matched_minor - amount, updated_at=now)
    )


def provider_refund(
    engine: Engine,
    donation_id: int,
    key: str,
    *,
    total_refunded_minor: int | None = None,
    amount_minor: int | None = None,
    gateway_refund_id: str | None = None,
    actor: str = "acmeq",
) -> RefundOutcome | None:
    """Record and apply a refund the provider reports (webhook); None when nothing is new.

    Stripe and Mollie report the cumulative refunded amount (``total_refunded_minor``): only the
    difference to what is applied here is new. PayPal reports each refund (``amount_minor`` and
    its id); one whose id is already known (a refund acmeq requested) is not applied again.
    """
    with engine.begin() as conn:
        d = _lock_donation(conn, donation_id)
        if d.status not in REFUNDABLE and d.status != DonationStatus.REFUNDED.value:
            raise RefundError(f"donation {donation_id} is {d.status}; a refund cannot apply")
        own_pending = conn.execute(
            sa.select(REFUNDS.c.id).where(
                (REFUNDS.c.donation_id == donation_id)
                & (REFUNDS.c.status == RefundStatus.PENDING.value)
            )
        ).first()
        if own_pending is not None:
            raise RefundInFlight(f"refund {own_pending.id} of donation {donation_id} is in flight")
        if gateway_refund_id is not None:
            known = conn.execute(
                sa.select(REFUNDS.c.id).where(REFUNDS.c.gateway_refund_id == gateway_refund_id)
            ).first()
            if known is not None:
                return None
        if total_refunded_minor is not None:
            amount = total_refunded_minor - d.refunded_minor
        else:
            amount = amount_minor or 0
        amount = min(amount, d.amount_minor - d.refunded_minor)
        if amount <= 0:
            return None
        values = {
            "donation_id": donation_id,
            "amount_minor": amount,
            "currency": d.currency,
            "matched_reversed_minor": 0,
            "reason": "refunded at the provider",
            "status": RefundStatus.PENDING.value,
            "source": RefundSource.PROVIDER.value,
            "idempotency_key": key,
            "created_at": utcnow(),
        }
        if not insert_ignore(conn, REFUNDS, values, ["idempotency_key"]):
            return None
        refund_id = conn.execute(
            sa.select(REFUNDS.c.id).where(REFUNDS.c.idempotency_key == key)
        ).scalar_one()
        return _apply(conn, donation_id, int(refund_id), gateway_refund_id, actor)
