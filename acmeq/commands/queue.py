"""`acmeq queue list`: the queue catalog with live counts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from acmeq.commands.common import console, emit_json, settings
from acmeq.queues import queue_counts
from acmeq.redis import connect_checked

app = typer.Typer(help="The queue catalog and queue control.", no_args_is_help=True)


@app.command("list")
def list_queues(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every queue: priority, timeout, tries, memory, retry delays and job counts."""
    cfg = settings()
    rows = queue_counts(cfg, connect_checked(cfg))
    if as_json:
        emit_json(rows)
        return
    table = Table(
        "queue",
        "prio",
        "timeout",
        "tries",
        "memory",
        "retry delays (s)",
        "ready",
        "scheduled",
        "started",
        "failed",
        box=None,
        pad_edge=False,
    )
    for r in rows:
        table.add_row(
            r["name"],
            str(r["priority"]),
            f"{r['timeout']}s",
            str(r["tries"]),
            f"{r['memory_mb']} MB",
            ", ".join(map(str, r["retry_intervals"])) or "-",
            str(r["ready"]),
            str(r["scheduled"]),
            str(r["started"]),
            str(r["failed"]),
        )
    console.print(table)
