"""The demo's export step: `acmeq export campaigns --format csv` and a donations XLSX, queued
on a worker, followed with the live progress view, then the files' paths and sizes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from acmeq.config.settings import Settings

COMMANDS = (
    ("export", "campaigns", "--format", "csv"),
    ("export", "donations", "--format", "xlsx"),
)


class Output(Protocol):  # the part of acmeq.demo.DemoOutput this step uses
    def step(self, title: str) -> None: ...
    def line(self, text: str) -> None: ...
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


def export_demo(cfg: Settings, out: Output, title: str, env: Mapping[str, str]) -> int:
    """Run the two exports through a worker on ``exports`` (started with ``env``, the demo's
    private Redis and database); return how many did not complete."""
    from acmeq.worker.process import WorkerOptions

    out.step(f"{title}: acmeq export (queued on a worker, with live progress)")
    opts = WorkerOptions(queue="exports", mode="fork", name="demo-exports", log_level="WARNING")
    log = open(cfg.state_dir / "exports-worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    failed = 0
    try:
        for args in COMMANDS:
            out.line("$ acmeq " + " ".join(args))
            sys.stdout.flush()  # the command writes to the same terminal: keep the order
            # Not captured: on a terminal the live progress table of the watch shows as it runs.
            done = subprocess.run(
                [sys.executable, "-m", "acmeq", *args], env=env, timeout=600, check=False
            )
            failed += done.returncode != 0
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        log.close()
    _files_table(cfg, out)
    return failed


def _files_table(cfg: Settings, out: Output) -> None:
    import sqlalchemy as sa

    from acmeq.exports.runner import EXPORTS
    from acmeq.storage.sql import engine_for

    stmt = sa.select(EXPORTS).order_by(EXPORTS.c.id.desc()).limit(len(COMMANDS))
    with engine_for(cfg).connect() as conn:
        rows = list(reversed(conn.execute(stmt).all()))
    out.table(
        "export files (acmeq.export_files)",
        ["id", "kind", "format", "status", "rows", "size", "path"],
        [
            [r.id, r.kind, r.format, r.status, f"{r.row_count:,}", f"{r.size_bytes:,}", r.path]
            for r in rows
        ],
    )
