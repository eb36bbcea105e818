"""generate_report: campaign performance, donations summary, matching -- the numbers.

A report is a few aggregate queries over one period (``--period 2026-Q3``, ``2026-07``, ``2026``
or ``--from/--to``), turned into titled tables (:class:`~acmeq.exports.spec.Section`) and bar
charts; :mod:`acmeq.exports.report_render` draws them as PDF or XLSX. Money is summed per
currency, never across currencies (there is no exchange rate in acmeq). Only donations that
count (completed, partially refunded) are raised money; a donation belongs to the period in
which it was created.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from acmeq.errors import UsageError
from acmeq.exports.queries import CAMPAIGNS, COMPANIES, COUNTING, DONATIONS, USERS
from acmeq.exports.spec import BarChart, Column, Kind, Section, parse_day

TOP = 10


class ReportName(StrEnum):
    CAMPAIGN_PERFORMANCE = "campaign-performance"
    DONATIONS_SUMMARY = "donations-summary"
    MATCHING = "matching"


@dataclass(frozen=True)
class Period:
    start: date  # inclusive
    end: date  # inclusive
    label: str

    @property
    def since(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    @property
    def until(self) -> datetime:
        day = self.end + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def as_json(self) -> dict[str, str]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "label": self.label}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Period:
        return cls(date.fromisoformat(data["from"]), date.fromisoformat(data["to"]), data["label"])


@dataclass
class Report:
    name: ReportName
    title: str
    period: Period
    sections: list[Section] = field(default_factory=list)
    charts: list[BarChart] = field(default_factory=list)


def parse_period(
    period: str | None, date_from: str | None, date_to: str | None, today: date | None = None
) -> Period:
    """``2026-Q3``, ``2026-07``, ``2026`` or ``--from``/``--to`` days; default: last 90 days."""
    if period and (date_from or date_to):
        raise UsageError("--period and --from/--to exclude each other")
    today = today or datetime.now(UTC).date()
    if period:
        return _named_period(period.strip())
    start = parse_day(date_from, "--from") if date_from else today - timedelta(days=89)
    end = parse_day(date_to, "--to") if date_to else today
    if start > end:
        raise UsageError(f"--from {start} is after --to {end}")
    return Period(start, end, f"{start.isoformat()} to {end.isoformat()}")


def _named_period(text: str) -> Period:
    if m := re.fullmatch(r"(\d{4})-[Qq]([1-4])", text):
        year, quarter = int(m[1]), int(m[2])
        start = date(year, 3 * quarter - 2, 1)
        return Period(start, _month_end(year, 3 * quarter), f"{year}-Q{quarter}")
    if m := re.fullmatch(r"(\d{4})-(\d{2})", text):
        year, month = int(m[1]), int(m[2])
        if 1 <= month <= 12:
            return Period(date(year, month, 1), _month_end(year, month), text)
    if re.fullmatch(r"\d{4}", text):
        year = int(text)
        return Period(date(year, 1, 1), date(year, 12, 31), text)
    raise UsageError(f"--period: invalid period {text!r}; use e.g. 2026-Q3, 2026-07 or 2026")


def _month_end(year: int, month: int) -> date:
    first_next = date(year + month // 12, month % 12 + 1, 1)
    return first_next - timedelta(days=1)


# ---------------------------------------------------------------------------------------------
# Building


def build_report(conn: Connection, name: ReportName, period: Period) -> Report:
    titles = {
        ReportName.CAMPAIGN_PERFORMANCE: "Campaign performance",
        ReportName.DONATIONS_SUMMARY: "Donations summary",
        ReportName.MATCHING: "Corporate matching",
    }
    report = Report(name, titles[name], period)
    in_period = [DONATIONS.c.created_at >= period.since, DONATIONS.c.created_at < period.until]
    campaigns = campaign_rows(conn, in_period)
    report.sections.append(currency_totals(conn, in_period))
    if name is ReportName.CAMPAIGN_PERFORMANCE:
        report.sections.append(campaign_section(campaigns))
    elif name is ReportName.DONATIONS_SUMMARY:
        report.sections += [
            breakdown(conn, in_period, "status"),
            breakdown(conn, in_period, "gateway"),
        ]
    else:
        companies = matching_by_company(conn, in_period)
        report.sections.append(companies)
        report.charts.append(
            BarChart(
                "Top companies by matched amount",
                [f"{r[0]} ({r[1]})" for r in companies.rows[:TOP]],
                [r[4] / 100 for r in companies.rows[:TOP]],
                "matched",
            )
        )
    report.sections.append(weekly_trend(conn, in_period))
    top = sorted(campaigns, key=lambda r: r[5], reverse=True)[:TOP]
    report.charts.insert(
        0,
        BarChart(
            "Top campaigns by raised amount (in the period)",
            [f"{r[1]} ({r[3]})" for r in top],
            [r[5] / 100 for r in top],
        ),
    )
    return report


def _sum_if(expr: Any) -> Any:
    counts = sa.type_coerce(DONATIONS.c.status, sa.String).in_(COUNTING)
    return sa.func.coalesce(sa.func.sum(sa.case((counts, expr), else_=0)), 0)


def currency_totals(conn: Connection, where: Sequence[Any]) -> Section:
    d = DONATIONS.c
    stmt = (
        sa.select(
            d.currency,
            sa.func.count(),
            _sum_if(1),
            _sum_if(d.amount_minor - d.refunded_minor),
            _sum_if(d.matched_minor),
            sa.func.count(sa.distinct(d.donor_id)),
        )
        .where(*where)
        .group_by(d.currency)
        .order_by(d.currency)
    )
    rows = [
        (cur, int(n), int(c), int(net), int(m), int(net + m), int(donors))
        for cur, n, c, net, m, donors in conn.execute(stmt)
    ]
    return Section(
        "Totals per currency",
        (
            Column("currency", "currency", Kind.CODE, 8),
            Column("donations", "donations", Kind.INT, 10),
            Column("completed", "completed", Kind.INT, 10),
            Column("raised", "raised (net)", Kind.MONEY, 14),
            Column("matched", "matched", Kind.MONEY, 14),
            Column("total", "raised + matched", Kind.MONEY, 16),
            Column("donors", "donors", Kind.INT, 8),
        ),
        rows,
    )


def campaign_rows(conn: Connection, where: Sequence[Any]) -> list[tuple[Any, ...]]:
    """(id, title, status, currency, goal, raised in period, donations in period, raised in
    all, progress against goal) of every campaign with donations in the period."""
    d, c = DONATIONS.c, CAMPAIGNS.c
    period = (
        sa.select(
            d.campaign_id.label("cid"),
            _sum_if(d.amount_minor - d.refunded_minor).label("raised"),
            _sum_if(1).label("n"),
        )
        .where(*where)
        .group_by(d.campaign_id)
        .subquery()
    )
    stmt = sa.select(
        c.id, c.title, sa.type_coerce(c.status, sa.String), c.currency, c.goal_minor,
        period.c.raised, period.c.n, c.raised_minor,
    ).join_from(CAMPAIGNS, period, period.c.cid == c.id)  # fmt: skip
    rows = [
        (int(i), t, s, cur, int(goal), int(raised), int(n), int(total),
         total / goal if goal else None)
        for i, t, s, cur, goal, raised, n, total in conn.execute(stmt)
    ]  # fmt: skip
    rows.sort(key=lambda r: (-r[5], r[0]))
    return rows


def campaign_section(rows: list[tuple[Any, ...]]) -> Section:
    return Section(
        "Campaigns: progress against goal",
        (
            Column("id", "id", Kind.INT, 6),
            Column("title", "campaign", Kind.TEXT, 32),
            Column("status", "status", Kind.CODE, 10),
            Column("currency", "currency", Kind.CODE, 8),
            Column("goal", "goal", Kind.MONEY, 12),
            Column("raised_period", "raised in period", Kind.MONEY, 16),
            Column("n", "donations", Kind.INT, 10),
            Column("raised", "raised (all time)", Kind.MONEY, 16),
            Column("progress", "of goal", Kind.PERCENT, 8),
        ),
        rows,
    )


def breakdown(conn: Connection, where: Sequence[Any], by: str) -> Section:
    d = DONATIONS.c
    key = sa.type_coerce(getattr(d, by), sa.String)
    stmt = (
        sa.select(
            key, d.currency, sa.func.count(), sa.func.coalesce(sa.func.sum(d.amount_minor), 0)
        )
        .where(*where)
        .group_by(key, d.currency)
        .order_by(key, d.currency)
    )
    rows = [(k, cur, int(n), int(amount)) for k, cur, n, amount in conn.execute(stmt)]
    return Section(
        f"Donations per {by}",
        (
            Column(by, by, Kind.CODE, 18),
            Column("currency", "currency", Kind.CODE, 8),
            Column("n", "donations", Kind.INT, 10),
            Column("amount", "amount (gross)", Kind.MONEY, 14),
        ),
        rows,
    )


def matching_by_company(conn: Connection, where: Sequence[Any]) -> Section:
    d = DONATIONS.c
    counts = sa.type_coerce(d.status, sa.String).in_(COUNTING)
    stmt = (
        sa.select(
            COMPANIES.c.name,
            d.currency,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(d.amount_minor - d.refunded_minor), 0),
            sa.func.coalesce(sa.func.sum(d.matched_minor), 0),
            sa.func.count(sa.distinct(d.donor_id)),
        )
        .join_from(DONATIONS, USERS, USERS.c.id == d.donor_id)
        .join(COMPANIES, COMPANIES.c.id == USERS.c.company_id)
        .where(*where, counts, d.matched_minor > 0)
        .group_by(COMPANIES.c.name, d.currency)
    )
    rows = [
        (name, cur, int(n), int(net), int(m), int(people))
        for name, cur, n, net, m, people in conn.execute(stmt)
    ]
    rows.sort(key=lambda r: (-r[4], r[0]))
    return Section(
        "Matching by company",
        (
            Column("company", "company", Kind.TEXT, 26),
            Column("currency", "currency", Kind.CODE, 8),
            Column("n", "matched donations", Kind.INT, 16),
            Column("donated", "donated (net)", Kind.MONEY, 14),
            Column("matched", "matched", Kind.MONEY, 14),
            Column("employees", "employees", Kind.INT, 10),
        ),
        rows,
    )


def _day(conn: Connection) -> Any:
    created = DONATIONS.c.created_at
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.func.timezone("UTC", created), sa.Date)
    return sa.func.date(created)  # SQLite keeps UTC wall times


def weekly_trend(conn: Connection, where: Sequence[Any]) -> Section:
    """Donations and raised money per ISO week (Monday), one money column per currency."""
    d = DONATIONS.c
    day = _day(conn).label("day")
    stmt = (
        sa.select(day, d.currency, _sum_if(1), _sum_if(d.amount_minor - d.refunded_minor))
        .where(*where)
        .group_by(day, d.currency)
    )
    weeks: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    currencies: set[str] = set()
    for raw_day, cur, n, net in conn.execute(stmt):
        value = raw_day if isinstance(raw_day, date) else date.fromisoformat(str(raw_day)[:10])
        monday = value - timedelta(days=value.weekday())
        weeks[monday]["#"] += int(n)
        weeks[monday][cur] += int(net)
        currencies.add(cur)
    order = sorted(currencies)
    rows = [
        (week, weeks[week]["#"], *(weeks[week][cur] for cur in order)) for week in sorted(weeks)
    ]
    columns = [
        Column("week", "week of", Kind.DATE, 11),
        Column("n", "completed", Kind.INT, 10),
        *(Column(cur, f"raised {cur}", Kind.MONEY, 14) for cur in order),
    ]
    return Section("Trend by week", columns, rows)
