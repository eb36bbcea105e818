"""Demo data: `seed_demo` writes realistic, internally consistent data quickly."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from acmeq.errors import UsageError
from acmeq.storage import sql as db
from acmeq.storage.models import Campaign, CampaignStatus, Company, Donation, DonationStatus, User
from acmeq.storage.seed import seed_demo

PREFIXES = {"stripe": "pi_", "mollie": "tr_", "paypal": "PAYID-"}


def count(engine: Engine, model: type[object]) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def campaign_totals_mismatches(engine: Engine) -> list[str]:
    """Campaigns whose stored totals differ from the sums over their counted donations."""
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    with Session(engine) as session:
        for d in session.exec(select(Donation)):
            if d.status.counts_towards_total:
                totals = expected[d.campaign_id]
                totals[0] += d.amount_minor - d.refunded_minor
                totals[1] += d.matched_minor
                totals[2] += 1
        mismatches = []
        for c in session.exec(select(Campaign)):
            stored = [c.raised_minor, c.matched_minor, c.donation_count]
            if stored != expected[c.id or 0]:
                mismatches.append(
                    f"campaign {c.id}: stored {stored}, donations say {expected[c.id or 0]}"
                )
        return mismatches


def test_seed_creates_the_requested_counts_with_consistent_totals(engine: Engine) -> None:
    # When 12 campaigns and 3,000 donations are seeded
    result = seed_demo(engine, campaigns=12, donations=3_000)

    # Then exactly that many rows exist, with five matching companies and their people
    assert (result.companies, result.campaigns, result.donations) == (5, 12, 3_000)
    assert count(engine, Company) == 5
    assert count(engine, Campaign) == 12
    assert count(engine, Donation) == 3_000
    assert count(engine, User) == result.users > 20
    # And every campaign's raised/matched/count equals the sums over its counted donations
    assert campaign_totals_mismatches(engine) == []


def test_seeded_donations_look_like_real_ones(engine: Engine) -> None:
    # Given a seeded database
    seed_demo(engine, campaigns=20, donations=4_000, seed=7)
    now = datetime.now(UTC)
    with Session(engine) as session:
        donations = session.exec(select(Donation)).all()
        campaigns = {c.id: c for c in session.exec(select(Campaign))}
        users = {u.id: u for u in session.exec(select(User))}
        companies = {c.id: c for c in session.exec(select(Company))}

    statuses = Counter(d.status for d in donations)
    # Then most donations completed, a few are pending, failed or refunded
    assert 0.86 < statuses[DonationStatus.COMPLETED] / len(donations) < 0.94
    assert {DonationStatus.PENDING, DonationStatus.FAILED, DonationStatus.REFUNDED} <= set(statuses)
    # About one in ten is anonymous
    assert 0.06 < sum(d.anonymous for d in donations) / len(donations) < 0.14
    for d in donations:
        campaign = campaigns[d.campaign_id]
        # Amounts are 5-500 in whole units, in the campaign's currency
        assert 500 <= d.amount_minor <= 50_000 and d.amount_minor % 100 == 0
        assert d.currency == campaign.currency
        # Draft campaigns take no donations, and nothing happens in the future
        assert campaign.status is not CampaignStatus.DRAFT
        assert d.created_at <= d.updated_at <= now
        # Transaction ids look like the gateway's own
        assert d.gateway_transaction_id is not None
        assert d.gateway_transaction_id.startswith(PREFIXES[d.gateway.value])
        # Money only moves for donations that went through
        if d.status in (DonationStatus.PENDING, DonationStatus.FAILED):
            assert d.completed_at is None and d.matched_minor == d.refunded_minor == 0
        if d.status is DonationStatus.REFUNDED:
            assert d.refunded_minor == d.amount_minor and d.matched_minor == 0
        # Matching never exceeds the donor's company's ratio and per-donation cap
        if d.matched_minor:
            donor = users[d.donor_id]
            assert donor.company_id is not None
            company = companies[donor.company_id]
            assert company.currency == d.currency
            assert d.matched_minor <= d.amount_minor * company.match_ratio_bp // 10_000
            cap = company.match_cap_per_donation_minor
            assert cap is None or d.matched_minor <= cap
    assert sum(d.matched_minor for d in donations) > 0


def test_matching_respects_the_yearly_cap_per_employee(engine: Engine) -> None:
    seed_demo(engine, campaigns=5, donations=5_000, seed=3)
    with Session(engine) as session:
        rows = session.exec(
            select(
                Company.match_cap_per_employee_year_minor,
                Donation.donor_id,
                Donation.created_at,
                Donation.matched_minor,
            )
            .join(User, User.id == Donation.donor_id)  # type: ignore[arg-type]
            .join(Company, Company.id == User.company_id)  # type: ignore[arg-type]
        ).all()
    matched: Counter[tuple[int | None, int]] = Counter()
    caps: dict[tuple[int | None, int], int | None] = {}
    for cap, donor, created, amount in rows:
        matched[(donor, created.year)] += amount
        caps[(donor, created.year)] = cap
    assert all(cap is None or matched[key] <= cap for key, cap in caps.items())


def test_seeding_twice_adds_a_second_batch(engine: Engine) -> None:
    # Given a seeded database
    first = seed_demo(engine, campaigns=4, donations=500)

    # When it is seeded again with the same random seed
    second = seed_demo(engine, campaigns=4, donations=500)

    # Then the companies are reused and everything else is added, with no unique key clash
    assert (first.companies, second.companies) == (5, 0)
    assert count(engine, Company) == 5
    assert count(engine, Campaign) == 8
    assert count(engine, Donation) == 1_000
    assert count(engine, User) == first.users + second.users
    assert campaign_totals_mismatches(engine) == []


def test_the_same_seed_gives_the_same_data(tmp_path: Path) -> None:
    # Given two empty databases seeded with the same random seed
    amounts = []
    for name in ("one", "two"):
        engine = db.make_engine(f"sqlite:///{tmp_path / name}.db")
        db.upgrade(engine)
        seed_demo(engine, campaigns=3, donations=300, seed=11)
        with engine.connect() as conn:
            amounts.append(
                conn.execute(
                    sa.text("SELECT amount_minor, status, gateway FROM donations ORDER BY id")
                ).all()
            )
        engine.dispose()

    # Then the donations are the same (only the run token in ids differs)
    assert amounts[0] == amounts[1]


def test_bad_requests_are_refused(database_url: str, engine: Engine) -> None:
    with pytest.raises(UsageError, match=">= 0"):
        seed_demo(engine, campaigns=-1, donations=0)
    with pytest.raises(UsageError, match="at least one campaign"):
        seed_demo(engine, campaigns=0, donations=10)


def test_seeding_an_unmigrated_database_says_to_upgrade(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(UsageError, match="run 'acmeq db upgrade'"):
        seed_demo(engine, campaigns=1, donations=1)
    engine.dispose()


def test_twenty_thousand_donations_are_seeded_quickly(engine: Engine) -> None:
    # Timed for the record (see -rP / the captured output), not asserted: CI machines vary.
    result = seed_demo(engine, campaigns=40, donations=20_000)
    print(f"seeded {result.donations} donations on {engine.dialect.name} in {result.seconds:.2f} s")
    assert count(engine, Donation) == 20_000
    assert campaign_totals_mismatches(engine) == []
