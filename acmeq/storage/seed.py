"""Realistic demo data, fast: companies with matching rules, users, campaigns and donations.

Everything is written with Core ``executemany`` inserts in chunks inside one transaction, so
100,000 donations take seconds on SQLite. The data is drawn from ``random.Random(seed)``; only a
short run token (in e-mail addresses and transaction ids) differs between runs, so seeding the
same database twice adds a second batch instead of tripping a unique key.

The invariants the rest of acmeq relies on hold for seeded data as for real data: a campaign's
``raised_minor``/``matched_minor``/``donation_count`` equal the sums over its donations that count
(:attr:`acmeq.storage.models.DonationStatus.counts_towards_total`), and matching follows the donor's
company rules (ratio, cap per donation, cap per employee per calendar year).
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from acmeq.errors import UsageError
from acmeq.storage.models import (
    AuditLog,
    Campaign,
    CampaignStatus,
    Company,
    Donation,
    DonationStatus,
    Gateway,
    User,
    UserRole,
)
from acmeq.storage.sql import require_schema

CHUNK = 10_000

COMPANIES: tuple[tuple[str, str, int, int | None, int | None], ...] = (
    # name, currency, match ratio (bp), cap per donation, cap per employee and year (minor)
    ("Acme Corporation", "EUR", 10_000, 500_00, 2_000_00),
    ("Globex Nederland B.V.", "EUR", 20_000, 250_00, 5_000_00),
    ("Initech GmbH", "EUR", 10_000, 100_00, None),
    ("Northwind Traders Inc.", "USD", 5_000, None, 1_000_00),
    ("Umbrella Foods Ltd", "GBP", 10_000, None, None),
)

LOCALES = ("en", "nl", "de", "fr")
LOCALE_WEIGHTS = (45, 25, 20, 10)
NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        ("Emma", "Olivia", "James", "Liam", "Sophie", "Noah", "Grace", "Oliver", "Priya", "Amir"),
        ("Smith", "Johnson", "Brown", "Taylor", "Walker", "Patel", "Clarke", "Evans", "Hughes"),
    ),
    "nl": (
        ("Sanne", "Daan", "Lotte", "Sem", "Fleur", "Bram", "Anouk", "Jesse", "Femke", "Thijs"),
        ("de Vries", "Jansen", "van den Berg", "Bakker", "Visser", "Smit", "Meijer", "de Boer"),
    ),
    "de": (
        ("Lukas", "Anna", "Felix", "Marie", "Jonas", "Lea", "Paul", "Hannah", "Leon", "Sophia"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Schäfer"),
    ),
    "fr": (
        ("Camille", "Louis", "Léa", "Hugo", "Chloé", "Lucas", "Manon", "Théo", "Inès", "Jules"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Petit", "Durand", "Moreau"),
    ),
}

TITLES = (
    "Clean Water for {place}",
    "School Books for {place}",
    "Solar Lamps for {place}",
    "Mobile Clinic for {place}",
    "Girls' Coding Club {place}",
    "Food Bank {place}",
    "Winter Coats for {place}",
    "Flood Relief {place}",
    "Tree Planting around {place}",
    "Animal Shelter {place}",
)
PLACES = (
    "Kisumu", "Arusha", "Gulu", "Kigali", "Lilongwe", "Cusco", "Rotterdam-Zuid", "Leipzig",
    "Marseille", "Bradford", "Dhaka", "Oaxaca", "Sarajevo", "Beira", "Mzuzu",
)  # fmt: skip
GOALS_MAJOR = (1_000, 2_500, 5_000, 10_000, 15_000, 25_000, 50_000, 100_000)
CURRENCIES = ("EUR", "USD", "GBP")
CURRENCY_WEIGHTS = (60, 25, 15)

CAMPAIGN_STATUSES = (
    CampaignStatus.ACTIVE,
    CampaignStatus.COMPLETED,
    CampaignStatus.DRAFT,
    CampaignStatus.CANCELLED,
)
CAMPAIGN_STATUS_WEIGHTS = (75, 12, 8, 5)
DONATION_STATUSES = (
    DonationStatus.COMPLETED,
    DonationStatus.PENDING,
    DonationStatus.FAILED,
    DonationStatus.REFUNDED,
    DonationStatus.PARTIALLY_REFUNDED,
)
DONATION_STATUS_CUM = tuple(itertools.accumulate((90, 3, 4, 2, 1)))
# Amounts people pick from a donation form, in major units; the rest are free amounts.
PRESET_AMOUNTS = (5, 10, 10, 15, 20, 25, 25, 50, 50, 75, 100, 250, 500)
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
UPPER_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class SeedResult:
    """Rows created by one :func:`seed_demo` run and how long it took."""

    companies: int
    users: int
    campaigns: int
    donations: int
    seconds: float


@dataclass
class _Donor:
    id: int | None
    locale: str
    company: int | None  # index into the run's companies


@dataclass
class _CampaignPlan:
    id: int
    currency: str
    window_start: float  # POSIX seconds: donations arrive between start and end
    window: float
    status: CampaignStatus
    raised: int = 0
    matched: int = 0
    count: int = 0


def seed_demo(engine: Engine, campaigns: int, donations: int, *, seed: int = 42) -> SeedResult:
    """Add demo companies, users, ``campaigns`` campaigns and ``donations`` donations.

    Companies are found by name or created (so a second run reuses them); users are scaled to
    the requested volume. All rows are written in one transaction.
    """
    if campaigns < 0 or donations < 0:
        raise UsageError("campaigns and donations must be >= 0")
    if donations and not campaigns:
        raise UsageError("donations need at least one campaign")
    require_schema(engine)
    started = time.perf_counter()
    gen = _Generator(random.Random(seed), secrets.token_hex(4), datetime.now(UTC))
    with engine.begin() as conn:
        created_companies = gen.companies(conn)
        users = gen.users(conn, campaigns, donations)
        plans = gen.campaigns(conn, campaigns, donations)
        written = gen.donations(conn, plans, donations)
        gen.totals(conn, plans)
        conn.execute(
            sa.insert(AuditLog),
            {
                "at": gen.now,
                "actor": "acmeq seed",
                "action": "demo.seeded",
                "entity_type": "database",
                "entity_id": gen.token,
                "data": {"seed": seed, "users": users, "campaigns": campaigns,
                         "donations": written},
            },
        )  # fmt: skip
    return SeedResult(created_companies, users, campaigns, written, time.perf_counter() - started)


class _Generator:
    def __init__(self, rng: random.Random, token: str, now: datetime) -> None:
        self.rng = rng
        self.token = token
        self.now = now
        self.company_ids: list[int] = []
        self.company_rules: list[tuple[str, int, int | None, int | None]] = []
        self.organizers: list[_Donor] = []
        self.employees: list[_Donor] = []

    # -- companies and people -------------------------------------------------------------------
    def companies(self, conn: Connection) -> int:
        table = _table(Company)
        names = [c[0] for c in COMPANIES]
        query = sa.select(table.c.name, table.c.id).where(table.c.name.in_(names))
        existing: dict[str, int] = dict(conn.execute(query).all())
        missing: list[dict[str, Any]] = [
            {"name": name, "currency": cur, "match_ratio_bp": bp, "created_at": self.now,
             "match_cap_per_donation_minor": per_donation,
             "match_cap_per_employee_year_minor": per_year}
            for name, cur, bp, per_donation, per_year in COMPANIES if name not in existing
        ]  # fmt: skip
        if missing:
            ids = _insert_ids(conn, table, missing)
            existing.update(zip([m["name"] for m in missing], ids, strict=True))
        self.company_ids = [existing[name] for name in names]
        self.company_rules = [(cur, bp, d, y) for _, cur, bp, d, y in COMPANIES]
        return len(missing)

    def users(self, conn: Connection, campaigns: int, donations: int) -> int:
        rng = self.rng
        n_organizers = max(2, min(500, campaigns // 3 + 1))
        n_employees = max(20, min(20_000, donations // 10))
        roles = [UserRole.ADMIN] + [UserRole.ORGANIZER] * n_organizers
        roles += [UserRole.EMPLOYEE] * n_employees
        rows: list[dict[str, Any]] = []
        people: list[_Donor] = []
        locales = rng.choices(LOCALES, LOCALE_WEIGHTS, k=len(roles))
        for i, (role, locale) in enumerate(zip(roles, locales, strict=True)):
            first_names, last_names = NAMES[locale]
            first, last = rng.choice(first_names), rng.choice(last_names)
            company = None if role is UserRole.ADMIN or rng.random() < 0.2 else rng.randrange(5)
            rows.append({
                "email": f"{_slug(first)}.{_slug(last)}+{self.token}{i}@example.com",
                "name": f"{first} {last}",
                "role": role,
                "company_id": None if company is None else self.company_ids[company],
                "locale": locale,
                "created_at": self.now - timedelta(days=rng.uniform(30, 900)),
            })  # fmt: skip
            people.append(_Donor(None, locale, company))
        for person, user_id in zip(people, _insert_ids(conn, _table(User), rows), strict=True):
            person.id = user_id
        self.organizers = [p for p, r in zip(people, roles, strict=True) if r is UserRole.ORGANIZER]
        self.employees = [p for p, r in zip(people, roles, strict=True) if r is UserRole.EMPLOYEE]
        return len(rows)

    # -- campaigns ------------------------------------------------------------------------------
    def campaigns(self, conn: Connection, count: int, donations: int) -> list[_CampaignPlan]:
        rng, now = self.rng, self.now
        statuses = rng.choices(CAMPAIGN_STATUSES, CAMPAIGN_STATUS_WEIGHTS, k=count)
        if donations and all(s is CampaignStatus.DRAFT for s in statuses):
            statuses[0] = CampaignStatus.ACTIVE  # drafts take no donations
        rows: list[dict[str, Any]] = []
        for status in statuses:
            organizer = rng.choice(self.organizers)
            company = organizer.company
            if company is not None and rng.random() < 0.8:
                currency = self.company_rules[company][0]
            else:
                company = None
                currency = rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0]
            starts_at, end = self._campaign_dates(status)
            place = rng.choice(PLACES)
            rows.append({
                "title": rng.choice(TITLES).format(place=place),
                "description": f"Every gift goes straight to our partners in {place}; "
                               "progress updates are posted monthly.",
                "goal_minor": rng.choice(GOALS_MAJOR) * 100,
                "currency": currency,
                "raised_minor": 0,
                "matched_minor": 0,
                "donation_count": 0,
                "status": status,
                "starts_at": starts_at,
                "end_date": end.date(),
                "organizer_id": organizer.id,
                "company_id": None if company is None else self.company_ids[company],
                "created_at": min(starts_at, now) - timedelta(days=rng.uniform(1, 14)),
                "updated_at": now,
            })  # fmt: skip
        ids = _insert_ids(conn, _table(Campaign), rows)
        plans: list[_CampaignPlan] = []
        for row, campaign_id in zip(rows, ids, strict=True):
            if row["status"] is CampaignStatus.DRAFT:
                continue
            # Donations arrive between the start and the end date, never in the future.
            stop = min(now.timestamp(), _end_of(row["end_date"]))
            start = min(row["starts_at"].timestamp(), stop - 60)
            plans.append(
                _CampaignPlan(campaign_id, row["currency"], start, stop - start, row["status"])
            )
        return plans

    def _campaign_dates(self, status: CampaignStatus) -> tuple[datetime, datetime]:
        rng, now = self.rng, self.now
        if status is CampaignStatus.DRAFT:
            starts = now + timedelta(days=rng.uniform(3, 60))
            return starts, starts + timedelta(days=rng.uniform(30, 90))
        if status is CampaignStatus.COMPLETED:
            end = now - timedelta(days=rng.uniform(1, 300))
            return end - timedelta(days=rng.uniform(30, 120)), end
        if status is CampaignStatus.CANCELLED:
            starts = now - timedelta(days=rng.uniform(20, 200))
            return starts, starts + timedelta(days=rng.uniform(30, 120))
        return now - timedelta(days=rng.uniform(1, 120)), now + timedelta(days=rng.uniform(7, 120))

    # -- donations ------------------------------------------------------------------------------
    def donations(self, conn: Connection, plans: Sequence[_CampaignPlan], count: int) -> int:
        if not count:
            return 0
        # Popularity is heavy-tailed: a few campaigns collect most donations.
        cum = list(itertools.accumulate(self.rng.paretovariate(1.2) for _ in plans))
        table = _table(Donation)
        written = 0
        year_used: dict[tuple[int, int], int] = {}  # (donor id, year) -> matched so far
        for start in range(0, count, CHUNK):
            size = min(CHUNK, count - start)
            picks = self.rng.choices(plans, cum_weights=cum, k=size)
            rows = [self._donation(start + i, plan, year_used) for i, plan in enumerate(picks)]
            conn.execute(sa.insert(table), rows)
            written += size
        return written

    def _donation(
        self, index: int, plan: _CampaignPlan, year_used: dict[tuple[int, int], int]
    ) -> dict[str, Any]:
        rng = self.rng
        donor = rng.choice(self.employees) if rng.random() < 0.8 else None
        locale = donor.locale if donor else rng.choices(LOCALES, LOCALE_WEIGHTS)[0]
        amount = _amount(rng) * 100
        status = DONATION_STATUSES[_pick(rng.random() * DONATION_STATUS_CUM[-1])]
        gateway = _gateway(rng, locale)
        created = datetime.fromtimestamp(plan.window_start + rng.random() * plan.window, UTC)
        completed = refunded_at = None
        refunded = matched = 0
        updated = min(created + timedelta(seconds=rng.uniform(2, 90)), max(created, self.now))
        if status not in (DonationStatus.PENDING, DonationStatus.FAILED):
            completed = updated
        if status is DonationStatus.REFUNDED:
            refunded = amount
        elif status is DonationStatus.PARTIALLY_REFUNDED:
            refunded = 100 * rng.randint(1, amount // 100 - 1)
        if refunded:
            refunded_at = min(updated + timedelta(days=rng.uniform(1, 20)), self.now)
            updated = refunded_at
        if status.counts_towards_total:
            if donor is not None and donor.company is not None and donor.id is not None:
                matched = self._match(donor.id, donor.company, plan.currency, amount, refunded,
                                      created.year, year_used)  # fmt: skip
            plan.raised += amount - refunded
            plan.matched += matched
            plan.count += 1
        return {
            "campaign_id": plan.id,
            "donor_id": donor.id if donor else None,
            "amount_minor": amount,
            "currency": plan.currency,
            "status": status,
            "gateway": gateway,
            "gateway_transaction_id": self._transaction_id(gateway, index),
            "anonymous": rng.random() < 0.1,
            "donor_locale": locale,
            "matched_minor": matched,
            "refunded_minor": refunded,
            "created_at": created,
            "completed_at": completed,
            "refunded_at": refunded_at,
            "updated_at": updated,
        }

    def _match(
        self,
        donor: int,
        company: int,
        currency: str,
        amount: int,
        refunded: int,
        year: int,
        year_used: dict[tuple[int, int], int],
    ) -> int:
        company_currency, ratio_bp, per_donation, per_year = self.company_rules[company]
        if currency != company_currency:  # caps are in the company's currency; no FX in demos
            return 0
        match = amount * ratio_bp // 10_000
        if per_donation is not None:
            match = min(match, per_donation)
        # A partial refund takes back the same share of the match.
        match = match * (amount - refunded) // amount
        if per_year is not None:
            used = year_used.get((donor, year), 0)
            match = max(0, min(match, per_year - used))
            year_used[(donor, year)] = used + match
        return match

    def _transaction_id(self, gateway: Gateway, index: int) -> str:
        # The run token and the row index make the id unique; random characters make it look
        # like the providers' own ids.
        unique = f"{self.token}{_base36(index)}"
        if gateway is Gateway.STRIPE:
            return "pi_3" + unique + "".join(self.rng.choices(ALNUM, k=max(4, 23 - len(unique))))
        if gateway is Gateway.MOLLIE:
            return "tr_" + unique + "".join(self.rng.choices(ALNUM, k=4))
        tail = "".join(self.rng.choices(UPPER_ALNUM, k=max(4, 24 - len(unique))))
        return "PAYID-" + unique.upper() + tail

    def _goal(self, plan: _CampaignPlan) -> int:
        # Goals are set from what the campaign raised so progress bars look plausible: most
        # campaigns part-way, completed ones mostly at or past their goal.
        if plan.status is CampaignStatus.COMPLETED:
            progress = self.rng.uniform(0.9, 1.4)
        else:
            progress = self.rng.uniform(0.3, 1.1)
        step = 500_00  # goals are round numbers
        return max(step * 2, math.ceil(plan.raised / progress / step) * step)

    def totals(self, conn: Connection, plans: Sequence[_CampaignPlan]) -> None:
        """Write each campaign's totals (summed while its donations were generated) and goal."""
        table = _table(Campaign)
        rows = [
            {"b_id": p.id, "b_raised": p.raised, "b_matched": p.matched, "b_count": p.count,
             "b_goal": self._goal(p)}
            for p in plans
            if p.count
        ]  # fmt: skip
        if rows:
            conn.execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("b_id"))
                .values(
                    goal_minor=sa.bindparam("b_goal"),
                    raised_minor=sa.bindparam("b_raised"),
                    matched_minor=sa.bindparam("b_matched"),
                    donation_count=sa.bindparam("b_count"),
                ),
                rows,
            )


# ---------------------------------------------------------------------------------------------
# Small helpers


def _table(model: type[Any]) -> sa.Table:
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table


def _insert_ids(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` and return their new ids in the same order (INSERT ... RETURNING)."""
    ids: list[int] = []
    for chunk in _chunks(rows):
        result = conn.execute(
            sa.insert(table).returning(table.c.id, sort_by_parameter_order=True), chunk
        )
        ids.extend(result.scalars().all())
    return ids


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def _pick(value: float) -> int:
    for i, bound in enumerate(DONATION_STATUS_CUM):
        if value < bound:
            return i
    return len(DONATION_STATUS_CUM) - 1


def _amount(rng: random.Random) -> int:
    """A donation in major units, 5-500: form presets or a log-normal free amount."""
    if rng.random() < 0.6:
        return rng.choice(PRESET_AMOUNTS)
    return max(5, min(500, round(math.exp(rng.gauss(3.3, 0.9)))))


def _gateway(rng: random.Random, locale: str) -> Gateway:
    # Dutch donors pay with iDEAL, which the platform takes through Mollie.
    r = rng.random()
    if locale == "nl":
        return Gateway.MOLLIE if r < 0.6 else Gateway.STRIPE if r < 0.85 else Gateway.PAYPAL
    return Gateway.STRIPE if r < 0.65 else Gateway.MOLLIE if r < 0.8 else Gateway.PAYPAL


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in ascii_text.lower() if ch.isalnum())


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def _end_of(day: date) -> float:
    """POSIX time of the last second of ``day`` (UTC): end dates are inclusive."""
    return datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=UTC).timestamp()
