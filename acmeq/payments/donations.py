"""Completing a donation: status, campaign totals, corporate match, milestones, audit trail.

:func:`complete_donation` does all of it in one database transaction that starts with the
conditional ``UPDATE donations SET status = 'completed' ... WHERE id = :id AND status =
'pending'``: the row count says whether this call completed it. A redelivered job, a duplicate
webhook or a concurrent worker gets 0 and changes nothing; a worker killed halfway leaves nothing
(the transaction never commits) and the retry completes it. The statement also takes the
donation's row lock (PostgreSQL) or the write lock (SQLite) before anything is read, so the
reads that follow cannot be stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.errors import DonationNotFound as DonationNotFound
from acmeq.payments.sqlutil import (
    CAMPAIGNS,
    COMPANIES,
    DONATIONS,
    MATCH_TOTALS,
    MILESTONES,
    USERS,
    audit,
    insert_ignore,
)
from acmeq.storage.models import DonationStatus, utcnow

MILESTONE_PERCENTS = (25, 50, 75, 100)
COUNTED = [s.value for s in DonationStatus if s.counts_towards_total]


@dataclass(frozen=True)
class Completion:
    donation_id: int
    completed: bool  # False: it was not pending (done before, failed or refunded)
    status: str
    amount_minor: int = 0
    matched_minor: int = 0
    milestones: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class MatchRule:
    company_id: int
    ratio_bp: int
    cap_per_donation: int | None
    cap_per_employee_year: int | None
    currency: str


def compute_match(rule: MatchRule, amount_minor: int, used_this_year: int) -> int:
    """The company's match of one donation: ratio, then the per-donation cap, then what is left
    of the employee's yearly cap (pure; rounds down to whole minor units)."""
    matched = amount_minor * max(rule.ratio_bp, 0) // 10000
    if rule.cap_per_donation is not None:
        matched = min(matched, rule.cap_per_donation)
    if rule.cap_per_employee_year is not None:
        matched = min(matched, max(rule.cap_per_employee_year - used_this_year, 0))
    return max(matched, 0)


def crossed_milestones(before: int, after: int, goal: int) -> list[int]:
    """The percents of ``goal`` that a total moving from ``before`` to ``after`` reaches."""
    if goal <= 0:
        return []
    return [p for p in MILESTONE_PERCENTS if before * 100 < p * goal <= after * 100]


def complete_donation(
    engine: Engine, donation_id: int, transaction_id: str | None = None, actor: str = "acmeq"
) -> Completion:
    """Complete a pending donation exactly once, with everything that follows from it."""
    now = utcnow()
    with engine.begin() as conn:
        values: dict[str, object] = {
            "status": DonationStatus.COMPLETED.value,
            "completed_at": now,
            "updated_at": now,
        }
        if transaction_id:
            values["gateway_transaction_id"] = sa.func.coalesce(
                DONATIONS.c.gateway_transaction_id, transaction_id
            )
        pending = (DONATIONS.c.id == donation_id) & (
            DONATIONS.c.status == DonationStatus.PENDING.value
        )
        if conn.execute(sa.update(DONATIONS).where(pending).values(**values)).rowcount != 1:
            status = conn.execute(
                sa.select(DONATIONS.c.status).where(DONATIONS.c.id == donation_id)
            ).scalar()
            if status is None:
                raise DonationNotFound(donation_id)
            return Completion(donation_id, False, str(status))
        d = conn.execute(
            sa.select(
                DONATIONS.c.campaign_id,
                DONATIONS.c.donor_id,
                DONATIONS.c.amount_minor,
                DONATIONS.c.currency,
            ).where(DONATIONS.c.id == donation_id)
        ).one()
        matched = _apply_match(conn, d.donor_id, d.amount_minor, d.currency, now)
        if matched:
            conn.execute(
                sa.update(DONATIONS)
                .where(DONATIONS.c.id == donation_id)
                .values(matched_minor=matched)
            )
        campaign = conn.execute(
            sa.update(CAMPAIGNS)
            .where(CAMPAIGNS.c.id == d.campaign_id)
            .values(
                raised_minor=CAMPAIGNS.c.raised_minor + d.amount_minor,
                matched_minor=CAMPAIGNS.c.matched_minor + matched,
                donation_count=CAMPAIGNS.c.donation_count + 1,
                updated_at=now,
            )
            .returning(CAMPAIGNS.c.raised_minor, CAMPAIGNS.c.goal_minor)
        ).one()
        reached = _record_milestones(
            conn,
            d.campaign_id,
            donation_id,
            campaign.raised_minor - d.amount_minor,
            campaign.raised_minor,
            campaign.goal_minor,
            now,
        )
        entries: list[tuple[str, str, int | str, dict[str, object]]] = [
            (
                "donation.completed",
                "donation",
                donation_id,
                {
                    "amount_minor": d.amount_minor,
                    "currency": d.currency,
                    "transaction_id": transaction_id,
                    "campaign_id": d.campaign_id,
                },
            )
        ]
        if matched:
            entries.append(("match.applied", "donation", donation_id, {"matched_minor": matched}))
        entries += [
            (
                "campaign.milestone",
                "campaign",
                d.campaign_id,
                {"percent": p, "raised_minor": campaign.raised_minor, "donation_id": donation_id},
            )
            for p in reached
        ]
        audit(conn, now, actor, entries)
    return Completion(
        donation_id, True, DonationStatus.COMPLETED.value, d.amount_minor, matched, tuple(reached)
    )


def _match_rule(conn: sa.Connection, donor_id: int | None) -> MatchRule | None:
    if donor_id is None:
        return None
    row = conn.execute(
        sa.select(
            COMPANIES.c.id,
            COMPANIES.c.match_ratio_bp,
            COMPANIES.c.match_cap_per_donation_minor,
            COMPANIES.c.match_cap_per_employee_year_minor,
            COMPANIES.c.currency,
        )
        .select_from(USERS.join(COMPANIES, USERS.c.company_id == COMPANIES.c.id))
        .where(USERS.c.id == donor_id)
    ).first()
    if row is None or row.match_ratio_bp <= 0:
        return None
    return MatchRule(row[0], row[1], row[2], row[3], row[4])


def _apply_match(
    conn: sa.Connection, donor_id: int | None, amount: int, currency: str, now: datetime
) -> int:
    rule = _match_rule(conn, donor_id)
    # A company matches in its own currency only; converting would need a rate source.
    if rule is None or donor_id is None or rule.currency.upper() != currency.upper():
        return 0
    key = {"company_id": rule.company_id, "user_id": donor_id, "year": now.year}
    # The first match of the year starts from what the employee's donations of this year were
    # matched before the ledger existed (imported or seeded data); later ones use the ledger.
    start = datetime(now.year, 1, 1, tzinfo=UTC)
    before = (
        sa.select(sa.func.coalesce(sa.func.sum(DONATIONS.c.matched_minor), 0))
        .where(
            (DONATIONS.c.donor_id == donor_id)
            & (DONATIONS.c.completed_at >= start)
            & (DONATIONS.c.completed_at < start.replace(year=now.year + 1))
            & DONATIONS.c.status.in_(COUNTED)
        )
        .scalar_subquery()
    )
    insert_ignore(
        conn, MATCH_TOTALS, {**key, "matched_minor": before, "updated_at": now}, list(key)
    )
    where = (
        (MATCH_TOTALS.c.company_id == rule.company_id)
        & (MATCH_TOTALS.c.user_id == donor_id)
        & (MATCH_TOTALS.c.year == now.year)
    )
    # FOR UPDATE (PostgreSQL): two donations of one employee match one after the other, so the
    # yearly cap holds under concurrent workers. SQLite already serialises writers.
    used = conn.execute(
        sa.select(MATCH_TOTALS.c.matched_minor).where(where).with_for_update()
    ).scalar_one()
    matched = compute_match(rule, amount, int(used))
    if matched:
        conn.execute(
            sa.update(MATCH_TOTALS)
            .where(where)
            .values(matched_minor=MATCH_TOTALS.c.matched_minor + matched, updated_at=now)
        )
    return matched


def _record_milestones(
    conn: sa.Connection,
    campaign_id: int,
    donation_id: int,
    before: int,
    after: int,
    goal: int,
    now: datetime,
) -> list[int]:
    reached = []
    for percent in crossed_milestones(before, after, goal):
        values = {
            "campaign_id": campaign_id,
            "percent": percent,
            "raised_minor": after,
            "donation_id": donation_id,
            "reached_at": now,
        }
        # UNIQUE(campaign_id, percent): a total that dips (refund) and rises again records once.
        if insert_ignore(conn, MILESTONES, values, ["campaign_id", "percent"]):
            reached.append(percent)
    return reached


def fail_donation(engine: Engine, donation_id: int, reason: str, actor: str = "acmeq") -> bool:
    """Mark a pending donation failed; False when it was not pending (nothing changes)."""
    now = utcnow()
    with engine.begin() as conn:
        pending = (DONATIONS.c.id == donation_id) & (
            DONATIONS.c.status == DonationStatus.PENDING.value
        )
        done = conn.execute(
            sa.update(DONATIONS)
            .where(pending)
            .values(status=DonationStatus.FAILED.value, updated_at=now)
        ).rowcount
        if done == 1:
            audit(
                conn, now, actor, [("donation.failed", "donation", donation_id, {"reason": reason})]
            )
        elif (
            conn.execute(sa.select(DONATIONS.c.id).where(DONATIONS.c.id == donation_id)).first()
            is None
        ):
            raise DonationNotFound(donation_id)
    return done == 1
