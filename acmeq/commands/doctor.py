"""`acmeq doctor`: check Redis, the database, masters and secrets against production needs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.text import Text

from acmeq.commands.common import err_console, settings
from acmeq.commands.render import emit_json, show, table
from acmeq.constants import ExitCode

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Redis (version, maxmemory, latency, persistence, eviction policy), database migrations,
    scheduler leader, masters alive, clock skew, webhook secrets. Exit 1 on any failure
    (3 when Redis cannot be reached)."""
    from acmeq.ops.doctor import run
    from acmeq.storage.redis_client import connect

    cfg = settings()
    report = run(cfg, lambda: connect(cfg, start_embedded=False))
    if as_json:
        emit_json(report.as_dict())
    else:
        rows = table("check", "status", "detail", fold=("detail",))
        for check in report.checks:
            rows.add_row(check.name, Text(check.status, style=STYLES[check.status]), check.detail)
        failures = sum(c.status == "fail" for c in report.checks)
        verdict = Text(
            f"{failures} check(s) failed" if failures else "all checks passed",
            style="bold red" if failures else "green",
        )
        show(rows, verdict)
    failed = [c.name for c in report.checks if c.status == "fail"]
    if report.redis_unreachable or report.failed:
        # The table (or JSON) is the report; stderr gets the one line scripts and cron mail see.
        err_console.print(
            f"acmeq: error: doctor: {len(failed)} check(s) failed: {', '.join(failed) or 'redis'}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(int(ExitCode.UNREACHABLE if report.redis_unreachable else ExitCode.FAILED))
