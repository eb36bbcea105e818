"""`acmeq queue ...`: the queue catalog with live counts, and queue control."""

from __future__ import annotations

from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.failed import DryRunOpt, JsonOpt, YesOpt, confirm
from acmeq.commands.render import console, emit_json, show, table
from acmeq.ops.queue_admin import clear_queue, pause_queue, queue_overview
from acmeq.storage.redis_client import connect_checked

app = typer.Typer(help="The queue catalog and queue control.", no_args_is_help=True)

QueueArg = Annotated[str, typer.Argument(metavar="QUEUE", help="A queue of the catalog.")]


@app.command("list")
def list_queues(as_json: JsonOpt = False) -> None:
    """Show every queue: priority, timeout, tries, memory, retry delays, job counts, paused."""
    cfg = settings()
    rows = queue_overview(cfg, connect_checked(cfg))
    if as_json:
        emit_json(rows)
        return
    numbers = ("prio", "timeout", "tries", "memory", "ready", "scheduled", "started", "failed")
    out = table(
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
        "paused",
        ids=["queue"],
        right=numbers,
    )
    for r in rows:
        out.add_row(
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
            "[yellow]paused[/]" if r["paused"] else "-",
        )
    show(out)


@app.command()
def clear(
    queue: QueueArg,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every job waiting in QUEUE (running, scheduled and failed jobs are kept).

    Asks for confirmation on a terminal; elsewhere pass --yes.
    """
    cfg = settings()
    conn = connect_checked(cfg)
    waiting = clear_queue(cfg, conn, queue, dry_run=True)
    if dry_run:
        if as_json:
            emit_json({"queue": queue, "dry_run": True, "deleted": 0, "would_delete": waiting})
        else:
            console.print(
                f"would delete {waiting} waiting job{'' if waiting == 1 else 's'} from queue "
                f"{queue} (running, scheduled and failed jobs are kept)"
            )
        return
    if waiting:
        jobs = f"{waiting} waiting job{'' if waiting == 1 else 's'}"
        confirm(
            f"Delete {jobs} from queue {queue}?", yes, f"refusing to clear queue {queue!r} ({jobs})"
        )
    deleted = clear_queue(cfg, conn, queue, dry_run=False)
    if as_json:
        emit_json({"queue": queue, "dry_run": False, "deleted": deleted})
        return
    console.print(f"deleted {deleted} waiting job{'' if deleted == 1 else 's'} from queue {queue}")


@app.command()
def pause(queue: QueueArg, as_json: JsonOpt = False) -> None:
    """Stop workers taking jobs from QUEUE, cluster-wide; running jobs finish."""
    _pause(queue, True, as_json)


@app.command()
def resume(queue: QueueArg, as_json: JsonOpt = False) -> None:
    """Let workers take jobs from QUEUE again."""
    _pause(queue, False, as_json)


def _pause(queue: str, paused: bool, as_json: bool) -> None:
    cfg = settings()
    name = pause_queue(cfg, connect_checked(cfg), queue, paused)
    if as_json:
        emit_json({"queue": name, "paused": paused})
        return
    console.print(f"{'paused' if paused else 'resumed'} queue {name}")
