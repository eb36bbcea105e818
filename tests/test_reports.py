"""Reports (issue #13, generate_report): totals, progress against goal, matching, weekly trends
and bar charts, as PDF (read back with pdftotext) and XLSX with native charts (openpyxl)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.commands import common
from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.exports.queries import CAMPAIGNS, COMPANIES, COUNTING, DONATIONS, USERS
from acmeq.exports.report_runner import prepare_report, run_report
from acmeq.exports.reports import Period, parse_period
from acmeq.storage import sql as db
from acmeq.storage.seed import seed_demo
from acmeq.worker.process import WorkerOptions

from conftest import have, run_cli

TESTS = Path(__file__).resolve().parent
ALL_TIME = Period(date(2020, 1, 1), date(2030, 12, 31), "2020 to 2030")


@pytest.fixture
def cfg(
    engine: Engine, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    monkeypatch.setenv("DATABASE_URL", database_url)
    common.state._settings = None
    seed_demo(engine, campaigns=12, donations=1500)
    yield Settings.load()
    common.state._settings = None
    db.dispose_engines()


def report(cfg: Settings, engine: Engine, name: str, fmt: str, period: Period = ALL_TIME) -> Path:
    prepared = prepare_report(cfg, engine, name, fmt, period)
    return run_report(cfg, engine, prepared.id, in_job=False).path


def raised_by_campaign(engine: Engine) -> dict[str, int]:
    d, c = DONATIONS.c, CAMPAIGNS.c
    counting = sa.type_coerce(d.status, sa.String).in_(COUNTING)
    stmt = (
        sa.select(c.title, c.currency, sa.func.sum(d.amount_minor - d.refunded_minor))
        .join_from(DONATIONS, CAMPAIGNS, c.id == d.campaign_id)
        .where(counting)
        .group_by(c.id, c.title, c.currency)
    )
    with engine.connect() as conn:
        return {f"{t} ({cur})": int(v) for t, cur, v in conn.execute(stmt)}


def raised_by_currency(engine: Engine) -> dict[str, int]:
    d = DONATIONS.c
    counting = sa.type_coerce(d.status, sa.String).in_(COUNTING)
    stmt = (
        sa.select(d.currency, sa.func.sum(d.amount_minor - d.refunded_minor))
        .where(counting)
        .group_by(d.currency)
    )
    with engine.connect() as conn:
        return {cur: int(v) for cur, v in conn.execute(stmt)}


def test_periods_are_quarters_months_years_or_days() -> None:
    assert parse_period("2026-Q3", None, None) == Period(
        date(2026, 7, 1), date(2026, 9, 30), "2026-Q3"
    )
    assert parse_period("2026-02", None, None).end == date(2026, 2, 28)
    assert parse_period("2025", None, None).start == date(2025, 1, 1)
    days = parse_period(None, "2026-01-05", "2026-01-11")
    assert (days.start, days.end, days.until) == (
        date(2026, 1, 5),
        date(2026, 1, 11),
        datetime(2026, 1, 12, tzinfo=UTC),
    )
    assert parse_period(None, None, None, today=date(2026, 12, 1)).start == date(2026, 9, 3)
    for bad in ("2026-Q5", "2026-13", "last year"):
        with pytest.raises(UsageError, match="--period: invalid period"):
            parse_period(bad, None, None)
    with pytest.raises(UsageError, match="exclude each other"):
        parse_period("2026", "2026-01-01", None)


def test_xlsx_reports_have_native_charts_of_the_top_campaigns_and_true_totals(
    cfg: Settings, engine: Engine
) -> None:
    truth = raised_by_campaign(engine)
    top = sorted(truth.items(), key=lambda kv: -kv[1])[:10]
    for name in ("campaign-performance", "donations-summary", "matching"):
        book = openpyxl.load_workbook(report(cfg, engine, name, "xlsx"))
        assert book.sheetnames == ["Report", "Charts", "Chart data"], name
        assert len(book["Charts"]._charts) >= 1, name
        data = list(book["Chart data"].iter_rows(min_row=2, max_col=2, values_only=True))
        assert [label for label, _ in data] == [label for label, _ in top], name
        assert [Decimal(str(v)) for _, v in data] == [Decimal(v) / 100 for _, v in top], name
        rows = list(book["Report"].iter_rows(values_only=True))
        totals = {r[0]: r for r in rows[5 : 5 + 3] if r[0]}
        for currency, raised in raised_by_currency(engine).items():
            assert Decimal(str(totals[currency][3])) == Decimal(raised) / 100, (name, currency)


def test_campaign_performance_shows_progress_against_goal_and_weeks(
    cfg: Settings, engine: Engine
) -> None:
    book = openpyxl.load_workbook(report(cfg, engine, "campaign-performance", "xlsx"))
    rows = list(book["Report"].iter_rows(values_only=True))
    start = next(i for i, r in enumerate(rows) if r[0] == "Campaigns: progress against goal")
    header = rows[start + 1]
    assert header[:5] == ("id", "campaign", "status", "currency", "goal")
    campaigns = [r for r in rows[start + 2 :] if isinstance(r[0], int)]
    with engine.connect() as conn:
        goals = dict(conn.execute(sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.goal_minor)).all())
        totals = dict(conn.execute(sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.raised_minor)).all())
    for row in campaigns:
        assert Decimal(str(row[4])) == Decimal(goals[row[0]]) / 100
        assert row[8] == pytest.approx(totals[row[0]] / goals[row[0]])
    week = next(i for i, r in enumerate(rows) if r[0] == "Trend by week")
    weeks = [r for r in rows[week + 2 :] if isinstance(r[0], datetime)]
    assert weeks and all(w[0].weekday() == 0 for w in weeks)  # weeks start on Monday
    with engine.connect() as conn:
        counted = conn.execute(
            sa.select(sa.func.count()).where(
                sa.type_coerce(DONATIONS.c.status, sa.String).in_(COUNTING)
            )
        ).scalar_one()
    assert sum(w[1] for w in weeks) == counted


def test_the_matching_report_sums_matches_by_company(cfg: Settings, engine: Engine) -> None:
    d = DONATIONS.c
    stmt = (
        sa.select(COMPANIES.c.name, d.currency, sa.func.sum(d.matched_minor))
        .join_from(DONATIONS, USERS, USERS.c.id == d.donor_id)
        .join(COMPANIES, COMPANIES.c.id == USERS.c.company_id)
        .where(sa.type_coerce(d.status, sa.String).in_(COUNTING), d.matched_minor > 0)
        .group_by(COMPANIES.c.name, d.currency)
    )
    with engine.connect() as conn:
        truth = {(n, c): int(v) for n, c, v in conn.execute(stmt)}
    assert truth
    book = openpyxl.load_workbook(report(cfg, engine, "matching", "xlsx"))
    rows = list(book["Report"].iter_rows(values_only=True))
    start = next(i for i, r in enumerate(rows) if r[0] == "Matching by company")
    found = {}
    for r in rows[start + 2 :]:
        if r[0] is None:
            break
        found[(r[0], r[1])] = round(Decimal(str(r[4])) * 100)
    assert found == truth
    assert len(book["Charts"]._charts) == 2  # top campaigns, top companies


@pytest.mark.skipif(not have("pdftotext"), reason="poppler-utils not installed")
def test_pdf_reports_draw_the_chart_and_the_tables(cfg: Settings, engine: Engine) -> None:
    top = max(raised_by_campaign(engine).items(), key=lambda kv: kv[1])
    for name, marker in [
        ("campaign-performance", "Campaigns: progress against goal"),
        ("donations-summary", "Donations per gateway"),
        ("matching", "Matching by company"),
    ]:
        path = report(cfg, engine, name, "pdf")
        text = subprocess.run(
            ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert "Top campaigns by raised amount" in text, name
        assert top[0][:30] in text and f"{top[1] / 100:,.2f}" in text, name
        assert marker in text and "Trend by week" in text and "Totals per currency" in text
        assert "page 1 of" in text


@pytest.mark.timeout(120)
def test_generate_report_runs_on_a_worker_and_the_cli_checks_its_input(
    cfg: Settings, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("process test: run once, on SQLite")
    bad = run_cli("report", "matching", "--period", "2026-Q7", "--sync")
    assert bad.returncode == 2 and "invalid period '2026-Q7'" in bad.stderr
    # Enqueued by name, as a schedule would, then run by a real worker
    queued = run_cli(
        "enqueue", "generate_report", "--arg", "report=donations-summary", "--arg", "format=xlsx",
        "--arg", "period=2026",
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    opts = WorkerOptions(queue="reports", mode="inline", name="rep", burst=True)
    worker = subprocess.run(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr
    with engine.connect() as conn:
        record: Any = conn.execute(sa.text("SELECT status, path, kind FROM export_files")).one()
    assert record.status == "completed" and record.kind == "report"
    assert openpyxl.load_workbook(record.path).sheetnames == ["Report", "Charts", "Chart data"]
