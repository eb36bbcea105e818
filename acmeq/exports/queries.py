"""Reading what an export contains: filtered statements, keyset pages, summaries.

Rows are read ``chunk_size`` at a time with keyset pagination (``WHERE id > :last ORDER BY id
LIMIT n``): every page costs the same however deep into the table it is, unlike ``OFFSET``, which
re-reads everything before the page, and nothing but one page is ever held in memory. The totals
of the summary come from ``GROUP BY`` queries over the same filters. On PostgreSQL all of it runs
in one ``REPEATABLE READ`` transaction, so the rows and the totals are one consistent snapshot
even while donations keep arriving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from acmeq.exports.spec import Column, ExportFilters, ExportRequest, Kind, Section
from acmeq.storage.models import (
    Campaign,
    Company,
    Donation,
    DonationStatus,
    ExportFormat,
    ExportKind,
    User,
)

DONATIONS: sa.Table = Donation.__table__  # type: ignore[attr-defined]
CAMPAIGNS: sa.Table = Campaign.__table__  # type: ignore[attr-defined]
USERS: sa.Table = User.__table__  # type: ignore[attr-defined]
COMPANIES: sa.Table = Company.__table__  # type: ignore[attr-defined]

COUNTING = tuple(s.value for s in DonationStatus if s.counts_towards_total)
ANONYMOUS = "Anonymous"

Row = tuple[Any, ...]

DONATION_COLUMNS: tuple[Column, ...] = (
    Column("id", "donation", Kind.INT, 9),
    Column("created_at", "created (UTC)", Kind.DATETIME, 19),
    Column("completed_at", "completed (UTC)", Kind.DATETIME, 19),
    Column("campaign_id", "campaign id", Kind.INT, 8),
    Column("campaign", "campaign", Kind.TEXT, 30),
    Column("status", "status", Kind.CODE, 15),
    Column("gateway", "gateway", Kind.CODE, 8),
    Column("currency", "currency", Kind.CODE, 6),
    Column("amount", "amount", Kind.MONEY, 11),
    Column("refunded", "refunded", Kind.MONEY, 11),
    Column("net", "net", Kind.MONEY, 11),
    Column("matched", "matched", Kind.MONEY, 11),
    Column("anonymous", "anonymous", Kind.BOOL, 6),
    Column("receipt_number", "receipt number", Kind.CODE, 15),
    Column("fiscal_year", "fiscal year", Kind.INT, 6),
    Column("deductible", "tax deductible", Kind.MONEY, 11),
)
DONOR_COLUMNS: tuple[Column, ...] = (
    Column("donor_name", "donor name", Kind.TEXT, 22),
    Column("donor_email", "donor email", Kind.TEXT, 28),
    Column("donor_address", "donor address", Kind.TEXT, 34),
)
CAMPAIGN_COLUMNS: tuple[Column, ...] = (
    Column("id", "campaign id", Kind.INT, 8),
    Column("title", "campaign", Kind.TEXT, 32),
    Column("status", "status", Kind.CODE, 10),
    Column("currency", "currency", Kind.CODE, 6),
    Column("goal", "goal", Kind.MONEY, 12),
    Column("raised", "raised", Kind.MONEY, 12),
    Column("matched", "matched", Kind.MONEY, 12),
    Column("donations", "donations", Kind.INT, 9),
    Column("progress", "progress", Kind.PERCENT, 9),
    Column("starts_at", "starts (UTC)", Kind.DATETIME, 19),
    Column("end_date", "ends", Kind.DATE, 11),
    Column("company", "company", Kind.TEXT, 24),
    Column("created_at", "created (UTC)", Kind.DATETIME, 19),
)
ORGANIZER_COLUMNS: tuple[Column, ...] = (
    Column("organizer_name", "organizer name", Kind.TEXT, 22),
    Column("organizer_email", "organizer email", Kind.TEXT, 28),
)


@dataclass
class Dataset:
    """One export's rows (as pages), their shape and their summary."""

    title: str
    sheet: str
    columns: Sequence[Column]
    total: int
    pages: Iterator[list[Row]]
    summary: list[Section]


def open_dataset(conn: Connection, request: ExportRequest, chunk_size: int) -> Dataset:
    """The export's dataset on ``conn`` (rows are read lazily, page by page, as it is written)."""
    if request.kind is ExportKind.CAMPAIGNS:
        return _campaigns(conn, request, chunk_size)
    return _donations(conn, request, chunk_size)


def snapshot(conn: Connection) -> Connection:
    """One consistent read of rows and totals: REPEATABLE READ where the database has it."""
    if conn.dialect.name == "postgresql":
        return conn.execution_options(isolation_level="REPEATABLE READ")
    return conn


def keyset_pages(
    conn: Connection, stmt: sa.Select[Any], key: sa.ColumnElement[Any], chunk_size: int
) -> Iterator[Sequence[sa.Row[Any]]]:
    """Pages of ``stmt`` in ``key`` order, ``chunk_size`` rows each (keyset, never OFFSET).

    ``key`` must be unique and the first column of ``stmt``.
    """
    last: Any = None
    while True:
        page = stmt.order_by(key).limit(chunk_size)
        if last is not None:
            page = page.where(key > last)
        rows = conn.execute(page).all()
        if not rows:
            return
        yield rows
        if len(rows) < chunk_size:
            return
        last = rows[-1][0]


# ---------------------------------------------------------------------------------------------
# Donations


def donation_conditions(filters: ExportFilters) -> list[sa.ColumnElement[bool]]:
    d = DONATIONS.c
    conds: list[sa.ColumnElement[bool]] = []
    if filters.campaign_ids:
        conds.append(d.campaign_id.in_(filters.campaign_ids))
    if filters.statuses:
        conds.append(sa.type_coerce(d.status, sa.String).in_(filters.statuses))
    if filters.start is not None:
        conds.append(d.created_at >= filters.start)
    if filters.end is not None:
        conds.append(d.created_at < filters.end)
    if filters.currency:
        conds.append(d.currency == filters.currency)
    return conds


def donation_statement(
    filters: ExportFilters, include_pii: bool = False, times_as_text: bool = False
) -> sa.Select[Any]:
    """The donations of an export, id first; with the donor's name, e-mail and address for PII.

    Status and gateway are read as plain strings: the enum lookup per row is wasted work here.
    ``times_as_text`` (SQLite, for CSV): the timestamps come back as their stored text, UTC
    ``YYYY-MM-DD HH:MM:SS.ffffff``, which the CSV writer rewrites to ISO 8601 by slicing; a
    datetime would be parsed from that text only to be formatted back into text. The SQL is the
    same either way.
    """
    d = DONATIONS.c
    created: sa.ColumnElement[Any] = d.created_at
    completed: sa.ColumnElement[Any] = d.completed_at
    if times_as_text:
        created = sa.type_coerce(created, sa.String)
        completed = sa.type_coerce(completed, sa.String)
    cols: list[Any] = [
        d.id,
        created,
        completed,
        d.campaign_id,
        sa.type_coerce(d.status, sa.String),
        sa.type_coerce(d.gateway, sa.String),
        d.currency,
        d.amount_minor,
        d.refunded_minor,
        d.matched_minor,
        d.anonymous,
    ]
    source: Any = DONATIONS
    if include_pii:
        cols += [USERS.c.name, USERS.c.email, USERS.c.address]
        source = DONATIONS.outerjoin(USERS, USERS.c.id == d.donor_id)
    return sa.select(*cols).select_from(source).where(*donation_conditions(filters))


def donation_row_builder(titles: dict[int, str], include_pii: bool) -> Callable[[Row], Row]:
    """Turn a row of :func:`donation_statement` into a row of the donation columns.

    Tax receipt data: a donation that counts (completed, partially refunded) gets a receipt
    ``R<fiscal year>-<donation id>``; its fiscal year is the calendar year (UTC) in which it was
    completed and its deductible amount is what the donor gave net of refunds. The employer's
    match is the employer's gift, not the donor's, so it is never deductible for the donor.
    """
    counting = frozenset(COUNTING)

    def build(r: Row) -> Row:
        ident, created, completed, campaign_id, status, gateway, currency = r[:7]
        amount, refunded, matched, anonymous = r[7:11]
        net = amount - refunded
        if status in counting:
            stamp = completed or created
            year = int(stamp[:4]) if stamp.__class__ is str else stamp.year
            receipt: str | None = f"R{year}-{ident:08d}"
            fiscal: int | None = year
            deductible: int | None = net
        else:
            receipt = fiscal = deductible = None
        row = (
            ident, created, completed, campaign_id, titles.get(campaign_id, ""), status,
            gateway, currency, amount, refunded, net, matched, bool(anonymous), receipt,
            fiscal, deductible,
        )  # fmt: skip
        if not include_pii:
            return row
        if anonymous:  # anonymous donations never expose the donor, whoever asks
            return (*row, ANONYMOUS, None, None)
        return (*row, r[11], r[12], r[13])

    return build


def campaign_titles(conn: Connection) -> dict[int, str]:
    return {int(i): str(t) for i, t in conn.execute(sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.title))}


def count(conn: Connection, table: sa.Table, conds: Sequence[sa.ColumnElement[bool]]) -> int:
    return int(
        conn.execute(sa.select(sa.func.count()).select_from(table).where(*conds)).scalar_one()
    )


def _donations(conn: Connection, request: ExportRequest, chunk_size: int) -> Dataset:
    filters = request.filters
    conds = donation_conditions(filters)
    titles = campaign_titles(conn)
    summary = donation_summary(conn, conds, titles)
    total = sum(row[3] for row in summary[1].rows)  # the per-campaign counts: no extra scan
    build = donation_row_builder(titles, request.include_pii)
    text = request.format is ExportFormat.CSV and conn.dialect.name == "sqlite"
    stmt = donation_statement(filters, request.include_pii, times_as_text=text)

    def pages() -> Iterator[list[Row]]:
        for page in keyset_pages(conn, stmt, DONATIONS.c.id, chunk_size):
            yield [build(r) for r in page]

    columns = DONATION_COLUMNS + (DONOR_COLUMNS if request.include_pii else ())
    return Dataset("Donations", "Donations", columns, total, pages(), summary)


def donation_summary(
    conn: Connection, conds: Sequence[sa.ColumnElement[bool]], titles: dict[int, str]
) -> list[Section]:
    """Totals per currency and per campaign over the exported donations (one scan: the
    per-currency totals are sums of the per-campaign ones)."""
    d = DONATIONS.c
    counts = sa.type_coerce(d.status, sa.String).in_(COUNTING)

    def when(expr: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((counts, expr), else_=0)), 0)

    measures = [
        sa.func.count(),
        when(1),
        when(d.amount_minor - d.refunded_minor),
        sa.func.coalesce(sa.func.sum(d.refunded_minor), 0),
        when(d.matched_minor),
    ]
    by_campaign = (
        sa.select(d.campaign_id, d.currency, *measures)
        .where(*conds)
        .group_by(d.campaign_id, d.currency)
        .order_by(d.campaign_id, d.currency)
    )
    campaign_rows = [
        (int(cid), titles.get(int(cid), ""), cur, int(n), int(c), int(net), int(ref), int(m))
        for cid, cur, n, c, net, ref, m in conn.execute(by_campaign)
    ]
    per_currency: dict[str, list[int]] = {}
    for _, _, cur, *measured in campaign_rows:
        sums = per_currency.setdefault(cur, [0, 0, 0, 0, 0])
        for i, value in enumerate(measured):
            sums[i] += value
    currency_rows = [
        (cur, n, c, net, ref, m, net) for cur, (n, c, net, ref, m) in sorted(per_currency.items())
    ]
    money = Kind.MONEY
    return [
        Section(
            "Totals per currency",
            (
                Column("currency", "currency", Kind.CODE, 8),
                Column("donations", "donations", Kind.INT, 10),
                Column("counted", "completed", Kind.INT, 10),
                Column("net", "raised (net)", money, 14),
                Column("refunded", "refunded", money, 12),
                Column("matched", "matched", money, 12),
                Column("deductible", "tax deductible", money, 14),
            ),
            currency_rows,
        ),
        Section(
            "Totals per campaign",
            (
                Column("campaign_id", "campaign id", Kind.INT, 10),
                Column("campaign", "campaign", Kind.TEXT, 32),
                Column("currency", "currency", Kind.CODE, 8),
                Column("donations", "donations", Kind.INT, 10),
                Column("counted", "completed", Kind.INT, 10),
                Column("net", "raised (net)", money, 14),
                Column("refunded", "refunded", money, 12),
                Column("matched", "matched", money, 12),
            ),
            campaign_rows,
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Campaigns


def campaign_conditions(filters: ExportFilters) -> list[sa.ColumnElement[bool]]:
    c = CAMPAIGNS.c
    conds: list[sa.ColumnElement[bool]] = []
    if filters.campaign_ids:
        conds.append(c.id.in_(filters.campaign_ids))
    if filters.statuses:
        conds.append(sa.type_coerce(c.status, sa.String).in_(filters.statuses))
    if filters.start is not None:
        conds.append(c.created_at >= filters.start)
    if filters.end is not None:
        conds.append(c.created_at < filters.end)
    if filters.currency:
        conds.append(c.currency == filters.currency)
    return conds


def campaign_statement(filters: ExportFilters, include_pii: bool = False) -> sa.Select[Any]:
    c = CAMPAIGNS.c
    cols: list[Any] = [
        c.id, c.title, sa.type_coerce(c.status, sa.String), c.currency, c.goal_minor,
        c.raised_minor, c.matched_minor, c.donation_count, c.starts_at, c.end_date,
        COMPANIES.c.name, c.created_at,
    ]  # fmt: skip
    source: Any = CAMPAIGNS.outerjoin(COMPANIES, COMPANIES.c.id == c.company_id)
    if include_pii:
        cols += [USERS.c.name, USERS.c.email]
        source = source.outerjoin(USERS, USERS.c.id == c.organizer_id)
    return sa.select(*cols).select_from(source).where(*campaign_conditions(filters))


def _campaign_row(r: Row) -> Row:
    goal, raised = r[4], r[5]
    progress = raised / goal if goal else None
    return (*r[:8], progress, *r[8:])


def _campaigns(conn: Connection, request: ExportRequest, chunk_size: int) -> Dataset:
    conds = campaign_conditions(request.filters)
    total = count(conn, CAMPAIGNS, conds)
    summary = campaign_summary(conn, conds)
    stmt = campaign_statement(request.filters, request.include_pii)

    def pages() -> Iterator[list[Row]]:
        for page in keyset_pages(conn, stmt, CAMPAIGNS.c.id, chunk_size):
            yield [_campaign_row(tuple(r)) for r in page]

    columns = CAMPAIGN_COLUMNS + (ORGANIZER_COLUMNS if request.include_pii else ())
    return Dataset("Campaigns", "Campaigns", columns, total, pages(), summary)


def campaign_summary(conn: Connection, conds: Sequence[sa.ColumnElement[bool]]) -> list[Section]:
    c = CAMPAIGNS.c
    status = sa.type_coerce(c.status, sa.String)
    by_currency = (
        sa.select(
            c.currency,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(c.goal_minor), 0),
            sa.func.coalesce(sa.func.sum(c.raised_minor), 0),
            sa.func.coalesce(sa.func.sum(c.matched_minor), 0),
            sa.func.coalesce(sa.func.sum(c.donation_count), 0),
        )
        .where(*conds)
        .group_by(c.currency)
        .order_by(c.currency)
    )
    by_status = sa.select(status, sa.func.count()).where(*conds).group_by(status).order_by(status)
    money = Kind.MONEY
    currency_rows = [
        (cur, int(n), int(goal), int(raised), int(m), int(dn), raised / goal if goal else None)
        for cur, n, goal, raised, m, dn in conn.execute(by_currency)
    ]
    return [
        Section(
            "Totals per currency",
            (
                Column("currency", "currency", Kind.CODE, 8),
                Column("campaigns", "campaigns", Kind.INT, 10),
                Column("goal", "goal", money, 14),
                Column("raised", "raised", money, 14),
                Column("matched", "matched", money, 14),
                Column("donations", "donations", Kind.INT, 10),
                Column("progress", "progress", Kind.PERCENT, 10),
            ),
            currency_rows,
        ),
        Section(
            "Campaigns per status",
            (Column("status", "status", Kind.CODE, 12), Column("n", "campaigns", Kind.INT, 10)),
            [(s, int(n)) for s, n in conn.execute(by_status)],
        ),
    ]
