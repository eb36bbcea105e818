"""Exports (issue #13): campaigns and donations as CSV, XLSX and PDF, read back by a second reader.

Every file is opened by an independent reader -- the csv module, ``openpyxl.load_workbook``,
``pdftotext`` (poppler-utils) -- and checked for content, counts and sums against the database
(SQLite, and PostgreSQL when ACMEQ_TEST_DATABASE_URL is set). The end-to-end tests run the CLI
as a real subprocess against real worker processes and the private redis-server.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.commands import common
from acmeq.config.settings import Settings
from acmeq.errors import PiiRefusedError, UsageError
from acmeq.exports import runner
from acmeq.exports.queries import DONATIONS, donation_statement, keyset_pages
from acmeq.exports.runner import prepare_export, request_from_args, run_export
from acmeq.exports.spec import Column, ExportFilters, Kind
from acmeq.exports.writers import CsvWriter
from acmeq.storage import sql as db
from acmeq.storage.models import (
    AuditLog,
    Campaign,
    Company,
    Donation,
    ExportFile,
    User,
)
from acmeq.tracking import store
from acmeq.worker.process import WorkerOptions

from conftest import have, run_cli, wait_until

TESTS = Path(__file__).resolve().parent
T = {
    m.__tablename__: m.__table__ for m in (AuditLog, Campaign, Company, Donation, ExportFile, User)
}  # type: ignore[attr-defined]

ZOE, DMITRY, ELENI = "Zoë Ångström", "Дмитрий Иванов", "Ελένη Παπαδοπούλου"
EVIL_NAME = "=cmd|' /C calc'!A0"
CAFE = "Café für Kinder — €"
EVIL_TITLE = '=HYPERLINK("http://evil.example","click")'
MINUS_TITLE = "-5 Trees for Zürich"
GREEK_TITLE = "Ελληνικά Σχολεία"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


# -- data ----------------------------------------------------------------------------------------


def seed_small(engine: Engine) -> dict[str, int]:
    """Four campaigns, named donors (Unicode, one with a formula for a name), 12 donations."""
    ids: dict[str, int] = {}
    with engine.begin() as conn:

        def add(table: str, **values: Any) -> int:
            values.setdefault("created_at", NOW - timedelta(days=60))
            return int(
                conn.execute(sa.insert(T[table]).returning(T[table].c.id), values).scalar_one()
            )

        acme = add("companies", name="Acme Corporation", currency="EUR", match_ratio_bp=10000)
        for key, name, role, company in [
            ("admin", "Ada Admin", "admin", None),
            ("org1", "Olga Organizer", "organizer", None),
            ("org2", "Otto Organizer", "organizer", None),
            ("emp", "Emil Employee", "employee", acme),
            ("zoe", ZOE, "employee", acme),
            ("dmitry", DMITRY, "employee", None),
            ("eleni", ELENI, "employee", None),
            ("evil", EVIL_NAME, "employee", None),
        ]:
            ids[key] = add(
                "users", email=f"{key}@example.com", name=name, role=role, company_id=company,
                locale="en", address=f"{name}, Bäckerstraße 5, 10115 Berlin",
            )  # fmt: skip
        for key, title, currency, organizer, status in [
            ("cafe", CAFE, "EUR", "org1", "active"),
            ("evil", EVIL_TITLE, "USD", "org2", "active"),
            ("minus", MINUS_TITLE, "GBP", "org1", "completed"),
            ("greek", GREEK_TITLE, "EUR", "org2", "draft"),
        ]:
            ids[f"c_{key}"] = add(
                "campaigns", title=title, description="", goal_minor=1_000_00, currency=currency,
                raised_minor=0, matched_minor=0, donation_count=0, status=status,
                organizer_id=ids[organizer], updated_at=NOW,
            )  # fmt: skip
        plan = [  # campaign, donor, amount, status, refunded, matched, anonymous, day offset
            ("cafe", "zoe", 50_00, "completed", 0, 50_00, False, 1),
            ("cafe", "dmitry", 20_00, "completed", 0, 0, False, 2),
            ("cafe", "eleni", 100_00, "partially_refunded", 30_00, 0, False, 3),
            ("cafe", "zoe", 10_00, "failed", 0, 0, False, 4),
            ("cafe", "eleni", 75_00, "completed", 0, 0, True, 5),
            ("cafe", None, 5_00, "pending", 0, 0, False, 6),
            ("evil", "evil", 12_34, "completed", 0, 0, False, 7),
            ("evil", "dmitry", 40_00, "refunded", 40_00, 0, False, 8),
            ("minus", "zoe", 15_00, "completed", 0, 15_00, False, 30),
            ("minus", "eleni", 25_00, "completed", 0, 0, False, 31),
            ("greek", "dmitry", 60_00, "completed", 0, 0, False, 32),
            ("greek", "eleni", 9_99, "completed", 0, 0, False, 40),
        ]
        for i, (camp, donor, amount, status, refunded, matched, anonymous, days) in enumerate(plan):
            created = NOW - timedelta(days=days)
            done = created + timedelta(minutes=1) if status not in ("failed", "pending") else None
            ids[f"d{i}"] = add(
                "donations", campaign_id=ids[f"c_{camp}"], donor_id=ids[donor] if donor else None,
                amount_minor=amount, currency={"cafe": "EUR", "evil": "USD", "minus": "GBP",
                "greek": "EUR"}[camp], status=status, gateway="stripe", anonymous=anonymous,
                matched_minor=matched, refunded_minor=refunded, created_at=created,
                completed_at=done, updated_at=created, gateway_transaction_id=f"tx_{i}",
            )  # fmt: skip
    return ids


@pytest.fixture
def cfg(
    engine: Engine, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings on the test database and private Redis, also exported for subprocesses."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    common.state._settings = None
    yield Settings.load()
    common.state._settings = None
    db.dispose_engines()


@pytest.fixture
def ids(engine: Engine) -> dict[str, int]:
    return seed_small(engine)


def export(cfg: Settings, engine: Engine, kind: str, **args: Any) -> runner.ExportResult:
    """Prepare and run an export in this process, as `acmeq export ... --sync` does."""
    prepared = prepare_export(cfg, engine, request_from_args(kind, args))
    return run_export(cfg, engine, prepared.id, in_job=False)


def read_csv(path: Path, **fmt: Any) -> list[dict[str, str]]:
    with path.open(newline="", encoding=fmt.pop("encoding", "utf-8")) as f:
        return list(csv.DictReader(f, **fmt))


def pdf_text(path: Path) -> str:
    done = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    )
    return done.stdout


def money(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def sql_rows(engine: Engine, *where: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(DONATIONS).where(*where)).all())


def sqlite_only(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("process test: run once, on SQLite")


needs_pdftotext = pytest.mark.skipif(not have("pdftotext"), reason="poppler-utils not installed")


# -- CSV -----------------------------------------------------------------------------------------


def test_a_donations_csv_has_every_row_with_receipts_and_matching_totals(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    # When all donations are exported to CSV
    result = export(cfg, engine, "donations", format="csv")

    # Then a second reader finds a header and one row per donation, in id order
    rows = read_csv(result.path)
    assert result.rows == len(rows) == 12
    assert [int(r["donation"]) for r in rows] == sorted(ids[f"d{i}"] for i in range(12))
    by_id = {int(r["donation"]): r for r in rows}
    # tax receipt data: counted donations only, deductible = net of refunds, match excluded
    partial = by_id[ids["d2"]]
    assert partial["net"] == "70.00" and partial["tax deductible"] == "70.00"
    assert (
        partial["receipt number"] == f"R2026-{ids['d2']:08d}" and partial["fiscal year"] == "2026"
    )
    assert by_id[ids["d0"]]["matched"] == "50.00" and by_id[ids["d0"]]["tax deductible"] == "50.00"
    for failed in (ids["d3"], ids["d5"], ids["d7"]):  # failed, pending, refunded
        assert by_id[failed]["receipt number"] == "" and by_id[failed]["tax deductible"] == ""
    # and the summary file's per-currency totals equal the sums of the rows and of SQL
    summary = list(csv.reader(result.path.with_name(result.path.stem + ".summary.csv").open()))
    eur = next(r for r in summary if r[0] == "Totals per currency" and r[1] == "EUR")
    counted = [r for r in rows if r["currency"] == "EUR" and r["receipt number"]]
    assert money(eur[4]) == sum(money(r["net"]) for r in counted) == Decimal("284.99")
    assert int(eur[2]) == sum(1 for r in rows if r["currency"] == "EUR")
    # and the record says where, how much and how to check it
    with engine.connect() as conn:
        record = conn.execute(sa.select(T["export_files"])).one()
    assert record.status == "completed" and record.row_count == 12
    assert record.path == str(result.path) and record.size_bytes == result.path.stat().st_size
    assert record.sha256 == runner.sha256_of(result.path) and record.expires_at > NOW
    assert not list(result.path.parent.glob("*.part"))


def test_filters_select_exactly_the_matching_donations(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    d = DONATIONS.c
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        ({"campaign": [ids["c_cafe"]]}, [d.campaign_id == ids["c_cafe"]]),
        ({"status": ["completed", "refunded"]}, [d.status.in_(["completed", "refunded"])]),
        ({"currency": "eur"}, [d.currency == "EUR"]),
        (
            {"date_from": "2026-10-20", "date_to": "2026-11-14"},
            [d.created_at >= datetime(2026, 10, 20, tzinfo=UTC),
             d.created_at < datetime(2026, 11, 15, tzinfo=UTC)],
        ),
    ]  # fmt: skip
    for args, where in cases:
        result = export(cfg, engine, "donations", format="csv", **args)
        expected = sorted(r.id for r in sql_rows(engine, *where))
        assert expected, args
        assert [int(r["donation"]) for r in read_csv(result.path)] == expected, args


def test_keyset_pages_cover_every_row_once_without_offset(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    stmt = donation_statement(ExportFilters())
    with engine.connect() as conn:
        pages = list(keyset_pages(conn, stmt, DONATIONS.c.id, 5))
        sql = str(stmt.order_by(DONATIONS.c.id).limit(5).where(DONATIONS.c.id > 3))
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [r[0] for p in pages for r in p] == sorted(ids[f"d{i}"] for i in range(12))
    assert "OFFSET" not in sql.upper() and "donations.id >" in sql


def test_csv_neutralises_formulas_but_keeps_negative_numbers(tmp_path: Path) -> None:
    columns = [Column("t", "title", Kind.TEXT), Column("m", "amount", Kind.MONEY)]
    path = tmp_path / "x.csv"
    writer = CsvWriter(path, columns)
    writer.write_rows([("=1+2", -1250), ("+x", 5), ("-y", -1), ("@SUM(A1)", 0), ("ok", None)])
    writer.finish([])
    rows = list(csv.reader(path.open()))[1:]
    assert rows == [
        ["'=1+2", "-12.50"],
        ["'+x", "0.05"],
        ["'-y", "-0.01"],
        ["'@SUM(A1)", "0.00"],
        ["ok", ""],
    ]


def test_user_text_cannot_become_a_formula_in_csv_or_xlsx(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    # Given a campaign titled with a formula and a donor named with one, exported by an admin
    chosen = [ids["c_evil"], ids["c_minus"]]
    csv_file = export(
        cfg, engine, "donations", format="csv", include_pii=True, user_id=ids["admin"],
        campaign=chosen,
    ).path  # fmt: skip
    rows = read_csv(csv_file)
    titles = {r["campaign"] for r in rows}
    assert titles == {"'" + EVIL_TITLE, "'" + MINUS_TITLE}
    assert "'" + EVIL_NAME in {r["donor name"] for r in rows}
    # In XLSX they are string cells (never formulas) and keep their exact text
    xlsx = export(cfg, engine, "donations", format="xlsx", include_pii=True,
                  user_id=ids["admin"], campaign=[ids["c_evil"]]).path  # fmt: skip
    sheet = openpyxl.load_workbook(xlsx)["Donations"]
    cells = [c for row in sheet.iter_rows(min_row=2) for c in row if isinstance(c.value, str)]
    assert {c.data_type for c in cells} == {"s"}
    assert EVIL_TITLE in {c.value for c in cells} and EVIL_NAME in {c.value for c in cells}


def test_the_excel_dialect_has_a_bom_semicolons_and_decimal_commas(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    result = export(cfg, engine, "donations", format="csv", dialect="excel")
    raw = result.path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = read_csv(result.path, delimiter=";", encoding="utf-8-sig")
    assert len(rows) == 12 and "donation" in rows[0]
    assert {r["amount"] for r in rows} >= {"50,00", "12,34"}
    with pytest.raises(UsageError, match="--dialect only applies to --format csv"):
        export(cfg, engine, "donations", format="xlsx", dialect="excel")


# -- privacy -------------------------------------------------------------------------------------


def test_no_personal_data_without_include_pii(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    for fmt in ("csv", "xlsx"):
        result = export(cfg, engine, "donations", format=fmt, user_id=ids["admin"])
        if fmt == "csv":
            text = result.path.read_text()
        else:
            book = openpyxl.load_workbook(result.path)
            text = repr([list(ws.values) for ws in book.worksheets])
        for secret in ("@example.com", ZOE, DMITRY, "Bäckerstraße", "donor"):
            assert secret not in text, (fmt, secret)


def test_personal_data_needs_a_role_that_permits_it(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    def attempt(user: str | None, campaigns: list[int] | None = None) -> Any:
        return export(
            cfg, engine, "donations", format="csv", include_pii=True,
            user_id=ids[user] if user else None, campaign=campaigns,
        )  # fmt: skip

    with pytest.raises(PiiRefusedError, match="needs an accountable requester"):
        attempt(None)
    with pytest.raises(PiiRefusedError, match=r"role employee\) may not export personal data"):
        attempt("emp")
    with pytest.raises(PiiRefusedError, match="name them with --campaign"):
        attempt("org1")
    with pytest.raises(PiiRefusedError, match=f"does not organize campaign {ids['c_evil']}"):
        attempt("org1", [ids["c_cafe"], ids["c_evil"]])
    # An organizer gets their own campaign's donors; anonymous donors stay anonymous
    rows = read_csv(attempt("org1", [ids["c_cafe"]]).path)
    donors = {r["donation"]: (r["donor name"], r["donor email"]) for r in rows}
    assert donors[str(ids["d0"])] == (ZOE, "zoe@example.com")
    assert donors[str(ids["d4"])] == ("Anonymous", "")
    assert "Bäckerstraße" in next(r for r in rows if r["donor name"] == ZOE)["donor address"]
    # and every personal-data export is in the audit log
    with engine.connect() as conn:
        audit = conn.execute(
            sa.select(T["audit_log"]).where(T["audit_log"].c.action == "export.personal_data")
        ).all()
    assert len(audit) == 1 and audit[0].actor == f"user:{ids['org1']}"


def test_the_cli_refuses_personal_data_with_one_line_and_exit_2(
    cfg: Settings, ids: dict[str, int], database_url: str
) -> None:
    sqlite_only(database_url)
    refused = run_cli("export", "donations", "--include-pii", "--sync", "--as", "emp@example.com")
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "acmeq: error: --include-pii: emp@example.com (role employee)" in refused.stderr
    bad = run_cli("export", "donations", "--status", "lost", "--sync")
    assert bad.returncode == 2 and "unknown donation status 'lost'" in bad.stderr


# -- XLSX and PDF --------------------------------------------------------------------------------


def test_xlsx_has_typed_cells_frozen_header_widths_and_a_summary_sheet(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    result = export(cfg, engine, "donations", format="xlsx")
    book = openpyxl.load_workbook(result.path)
    assert book.sheetnames == ["Donations", "Summary"]
    sheet = book["Donations"]
    header = [c.value for c in sheet[1]]
    assert header[:3] == ["donation", "created (UTC)", "completed (UTC)"]
    assert sheet.freeze_panes == "A2"
    assert sheet.column_dimensions["E"].width >= 30  # the campaign title
    rows = [dict(zip(header, r, strict=True)) for r in sheet.iter_rows(min_row=2, values_only=True)]
    assert len(rows) == 12
    first = sheet[2]
    assert isinstance(first[0].value, int)
    assert isinstance(first[1].value, datetime) and first[1].number_format == "yyyy-mm-dd hh:mm:ss"
    amount = first[header.index("amount")]
    assert isinstance(amount.value, int | float) and amount.number_format == "#,##0.00"
    net = sum(
        Decimal(str(r["net"])) for r in rows if r["currency"] == "EUR" and r["receipt number"]
    )
    summary = {r[0]: r for r in book["Summary"].iter_rows(values_only=True) if r[0]}
    assert Decimal(str(summary["EUR"][3])) == net == Decimal("284.99")
    assert summary["USD"][1] == 2


@needs_pdftotext
def test_pdf_repeats_the_header_numbers_pages_and_ends_with_a_summary(
    cfg: Settings, engine: Engine, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given enough donations for several pages
    with engine.begin() as conn:
        conn.execute(
            sa.insert(DONATIONS),
            [
                {"campaign_id": ids["c_cafe"], "amount_minor": 1_00, "currency": "EUR",
                 "status": "completed", "gateway": "mollie", "created_at": NOW,
                 "completed_at": NOW, "updated_at": NOW}
                for _ in range(120)
            ],
        )  # fmt: skip
    result = export(cfg, engine, "donations", format="pdf")
    text = pdf_text(result.path)
    pages = text.split("\f")[:-1]
    assert len(pages) >= 3
    for n, page in enumerate(pages, 1):
        assert f"page {n} of {len(pages)}" in page
    data_pages = [p for p in pages if "Totals per currency" not in p]
    assert len(data_pages) >= 2 and all(
        "donation" in p and "tax deductible" in p for p in data_pages
    )
    assert "Totals per currency" in pages[-1] and "Totals per campaign" in pages[-1]
    assert "404.99" in pages[-1]  # EUR raised: 284.99 + 120 x 1.00
    assert sum(p.count("R2026-") for p in data_pages) == 9 + 120


@needs_pdftotext
def test_unicode_names_survive_csv_xlsx_and_pdf(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    names = [ZOE, DMITRY, ELENI]
    for fmt in ("csv", "xlsx", "pdf"):
        result = export(cfg, engine, "donations", format=fmt, include_pii=True,
                        user_id=ids["admin"])  # fmt: skip
        if fmt == "csv":
            text = result.path.read_text(encoding="utf-8")
        elif fmt == "xlsx":
            text = repr(list(openpyxl.load_workbook(result.path)["Donations"].values))
        else:
            text = pdf_text(result.path)
        for name in [*names, CAFE[:12], GREEK_TITLE]:
            assert name in text, (fmt, name)
        if fmt != "xlsx":
            assert "€" in text
    campaigns = export(cfg, engine, "campaigns", format="pdf")
    assert CAFE in pdf_text(campaigns.path)


def test_campaign_export_has_progress_and_totals(
    cfg: Settings, engine: Engine, ids: dict[str, int]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            T["campaigns"]
            .update()
            .where(T["campaigns"].c.id == ids["c_cafe"])
            .values(raised_minor=250_00)
        )
    result = export(cfg, engine, "campaigns", format="xlsx", status=["active", "completed"])
    book = openpyxl.load_workbook(result.path)
    rows = list(book["Campaigns"].iter_rows(values_only=True))
    header, data = rows[0], rows[1:]
    assert {r[header.index("campaign")] for r in data} == {CAFE, EVIL_TITLE, MINUS_TITLE}
    cafe = next(r for r in data if r[1] == CAFE)
    assert cafe[header.index("progress")] == pytest.approx(0.25)
    assert isinstance(cafe[header.index("goal")], int | float)


# -- failures ------------------------------------------------------------------------------------


def test_a_failure_mid_export_leaves_no_file_and_marks_the_record_failed(
    cfg: Settings, engine: Engine, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a writer that breaks after its first page
    calls = {"n": 0}
    original = CsvWriter.write_rows

    def breaking(self: CsvWriter, rows: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        original(self, rows)

    monkeypatch.setattr(CsvWriter, "write_rows", breaking)
    small = dataclasses.replace(cfg, exports=dataclasses.replace(cfg.exports, chunk_size=5))
    prepared = prepare_export(small, engine, request_from_args("donations", {"format": "csv"}))

    # When it runs, it fails
    with pytest.raises(OSError, match="No space left"):
        run_export(small, engine, prepared.id, in_job=False)

    # Then no file looks complete, no partial file stays, and the record says why
    assert not prepared.path.exists()
    assert not list(prepared.path.parent.iterdir())
    with engine.connect() as conn:
        record = conn.execute(sa.select(T["export_files"])).one()
    assert record.status == "failed" and "No space left on device" in record.error


class Worker:
    """A worker process on one queue, started the way a supervisor starts one."""

    def __init__(self, queue: str, tmp_path: Path, burst: bool = False) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        opts = WorkerOptions(queue=queue, mode="inline", name="exp", burst=burst)
        self.err = tmp_path / f"worker-{queue}.err"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "acmeq.worker", opts.to_json()],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.mark.timeout(120)
def test_kill_9_of_the_worker_mid_export_leaves_no_final_file(
    cfg: Settings,
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    sqlite_only(database_url)
    from acmeq.storage.seed import seed_demo

    # Given a PDF export of 6,000 donations read 100 at a time, queued for a real worker
    seed_demo(engine, campaigns=5, donations=6000)
    (tmp_path / "acmeq.toml").write_text("[exports]\nchunk_size = 100\n")
    detached = run_cli("export", "donations", "--format", "pdf", "--detach", "--json")
    assert detached.returncode == 0, detached.stderr
    job = json.loads(detached.stdout)
    final = Path(job["path"])

    # When the worker is killed with SIGKILL while it writes
    worker = Worker("exports", tmp_path)
    workers.append(worker)

    def running() -> bool:
        record = store.get(engine, job["job_id"])
        return record is not None and 300 <= record.processed < record.total

    wait_until("the export is part-way", running, timeout=60)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)

    # Then there is no file under the final name; only a hidden .part file may be left
    assert not final.exists()
    leftovers = [p.name for p in final.parent.iterdir()]
    assert all(name.startswith(".") and name.endswith(".part") for name in leftovers), leftovers
    with engine.connect() as conn:
        status = conn.execute(sa.select(T["export_files"].c.status)).scalar_one()
    assert status == "running"  # the master's recovery marks the job failed; no file claims done


@pytest.mark.timeout(120)
def test_the_cli_queues_the_export_watches_it_and_prints_the_path(
    cfg: Settings,
    engine: Engine,
    ids: dict[str, int],
    database_url: str,
    tmp_path: Path,
    workers: list[Worker],
) -> None:
    sqlite_only(database_url)
    # Given a worker serving exports
    workers.append(Worker("exports", tmp_path))
    out = tmp_path / "out" / "campaigns.csv"

    # When an engineer exports campaigns (default: queued, with live progress)
    done = run_cli("export", "campaigns", "--format", "csv", "--output", str(out))

    # Then the command follows the job to its end and prints where the file is
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enqueued export_campaigns as" in done.stdout
    assert "(export_campaigns) completed: 4/4 items" in done.stdout
    assert "exported 4 rows" in done.stdout and str(out) in done.stdout.replace("\n", "")
    assert len(read_csv(out)) == 4


@pytest.mark.timeout(60)
def test_a_finished_export_mails_the_file_or_its_path_and_a_failed_one_says_so(
    cfg: Settings,
    engine: Engine,
    ids: dict[str, int],
    redis_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rq import Queue
    from rq.serializers import JSONSerializer

    from acmeq.queues import registry_for

    if "send_email" not in registry_for(cfg):
        pytest.skip("the mail feature (send_email) is not registered")

    def mails() -> list[dict[str, Any]]:
        queue = Queue("notifications", connection=redis_client, serializer=JSONSerializer)
        return [j.kwargs for j in queue.get_jobs() if (j.func_name or "").endswith("send_email")]

    # A small file is attached
    small = export(cfg, engine, "campaigns", format="csv", email="boss@example.com")
    # A file above [exports] attach_limit_mb is sent as its path
    no_attach = dataclasses.replace(
        cfg, exports=dataclasses.replace(cfg.exports, attach_limit_mb=0)
    )
    prepared = prepare_export(
        no_attach, engine, request_from_args("campaigns", {"format": "xlsx", "email": "b@x.io"})
    )
    big = run_export(no_attach, engine, prepared.id, in_job=False)
    # A failed export notifies too
    monkeypatch.setattr(CsvWriter, "write_rows", lambda self, rows: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export(cfg, engine, "donations", format="csv", email="boss@example.com")

    sent = mails()
    assert [m["to"] for m in sent] == ["boss@example.com", "b@x.io", "boss@example.com"]
    assert str(small.path) in sent[0]["attachments"] and small.mail_job
    assert "attachments" not in sent[1] or not sent[1]["attachments"]
    assert str(big.path) in sent[1]["text"] and "not attached" in sent[1]["text"]
    assert "failed" in sent[2]["subject"] and "ZeroDivisionError" in sent[2]["text"]
