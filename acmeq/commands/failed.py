"""`acmeq failed ...`: list, inspect, retry and flush jobs that used up their tries."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from acmeq.commands import render
from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json
from acmeq.commands.render import table as new_table
from acmeq.errors import UsageError

if TYPE_CHECKING:  # imported lazily at run time: `acmeq --help` stays quick
    import redis

    from acmeq.ops.failed import FailedEntry, FailedFilter
    from acmeq.ops.jobview import JobDetail

app = typer.Typer(
    help="Failed jobs (RQ's failed registries): list, show, retry, flush.", no_args_is_help=True
)

QueueOpt = Annotated[
    list[str] | None, typer.Option("--queue", "-q", help="Only this queue (repeatable).")
]
JobOpt = Annotated[
    list[str] | None,
    typer.Option("--job", "-j", help="Only this job, by registered name (repeatable)."),
]
ExceptionOpt = Annotated[
    str,
    typer.Option(
        "--exception", "-e", help="Only failures whose exception line contains this text."
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Failed at or after: a duration ago (30m, 2d) or ISO 8601."),
]
BeforeOpt = Annotated[
    str | None,
    typer.Option("--before", help="Failed before: a duration ago (30m, 2d) or ISO 8601."),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

TABLE_ROWS = 50  # retry/flush print at most this many jobs; --json lists them all


def confirm(question: str, yes: bool, refusal: str) -> None:
    """Ask on a terminal; without one, refuse (exit 2) unless --yes was given.

    ``refusal`` names what was not done, e.g. "refusing to clear queue 'exports' (12 jobs)".
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"{refusal} without confirmation: stdin is not a terminal; pass --yes to confirm, "
            "or --dry-run to see what would happen"
        )
    typer.confirm(question, default=False, abort=True, err=True)


def _connection() -> redis.Redis:
    from acmeq.storage.redis_client import connect_checked

    return connect_checked(settings())


def _resolve(ids: list[str], connection: redis.Redis) -> list[str]:
    """Full ids for ids or unique prefixes: jobs in Redis, then the failed_jobs table."""
    from acmeq.ops.jobids import FAILED_TABLE, redis_source, resolve_job_ids, sql_source
    from acmeq.storage import sql

    sources = [
        redis_source(connection),
        sql_source(sql.engine_for(settings()), FAILED_TABLE, "job_id"),
    ]
    return resolve_job_ids(ids, *sources)


def _filter(
    queue: list[str] | None,
    job: list[str] | None,
    exception: str,
    since: str | None,
    before: str | None,
) -> FailedFilter:
    from acmeq.ops.failed import make_filter

    return make_filter(settings(), queue or [], job or [], exception, since, before)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(entries: Sequence[FailedEntry], rows: int | None = None) -> Table:
    table = new_table("id", "queue", "job", "failed at (UTC)", "exception", ids=["id"])
    for e in entries[:rows] if rows else entries:
        table.add_row(e.id, e.queue, e.job, _when(e.failed_at), escape(e.exception) or "-")
    return table


def _by_queue(entries: Sequence[FailedEntry]) -> str:
    counts = Counter(e.queue for e in entries)
    return ", ".join(f"{q}: {n}" for q, n in sorted(counts.items()))


def _plural(n: int) -> str:
    return f"{n} failed job" + ("" if n == 1 else "s")


def _report(verb: str, entries: Sequence[FailedEntry], note: str = "") -> None:
    """One summary line, then the jobs (at most TABLE_ROWS of them)."""
    if not entries:
        console.print(f"{verb} 0 failed jobs")
        return
    console.print(f"{verb} {_plural(len(entries))} ({_by_queue(entries)}){note}:")
    render.show(_table(entries, TABLE_ROWS))
    if len(entries) > TABLE_ROWS:
        console.print(f"... and {len(entries) - TABLE_ROWS} more (--json lists them all)")


@app.command("list")
def list_(
    queue: QueueOpt = None,
    job: JobOpt = None,
    exception: ExceptionOpt = "",
    since: SinceOpt = None,
    before: BeforeOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most N jobs.")] = 50,
    scan_limit: Annotated[
        int, typer.Option("--scan-limit", min=1, help="Examine at most N failed jobs.")
    ] = 20_000,
    as_json: JsonOpt = False,
) -> None:
    """Failed jobs, newest first, with their exception (masked)."""
    from acmeq.ops.failed import list_failed

    flt = _filter(queue, job, exception, since, before)
    page = list_failed(settings(), _connection(), flt, limit, scan_limit)
    if as_json:
        emit_json(
            {
                "jobs": [e.as_dict() for e in page.entries],
                "count": len(page.entries),
                "limit": limit,
                "examined": page.examined,
                "scan_limit": page.scan_cap,
                "truncated": page.truncated,
            }
        )
        return
    if page.entries:
        render.show(_table(page.entries))
    else:
        console.print("no failed jobs" + (" match" if flt.narrows or queue else ""))
    if len(page.entries) == limit:
        console.print(f"showing the {limit} newest (--limit {limit})")
    if page.truncated:
        console.print(
            f"note: stopped after examining {page.examined} failed jobs (--scan-limit); older "
            "matches may exist: narrow with --queue or --since, or raise --scan-limit"
        )


@app.command()
def show(
    job_id: Annotated[
        str,
        typer.Argument(metavar="ID", help="The failed job's id, or a unique prefix (6+ chars)."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """One failed job: arguments (personal data masked), exception, traceback, attempts, times.

    Looks in Redis first, then in the permanent failed_jobs table (a flushed or expired job).
    An unknown id exits 1.
    """
    from acmeq.ops.jobview import failed_detail

    connection = _connection()
    detail = failed_detail(settings(), connection, _resolve([job_id], connection)[0])
    if as_json:
        emit_json(detail.as_dict())
        return
    print_detail(detail)


def print_detail(detail: JobDetail) -> None:
    """Render a :class:`acmeq.ops.jobview.JobDetail` (shared with `acmeq job show`)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", detail.id),
        ("status", detail.status),
        ("queue", detail.queue),
        ("job", detail.job),
        ("function", detail.function or "-"),
        ("enqueued at", _when(detail.enqueued_at)),
        ("started at", _when(detail.started_at)),
        ("failed at" if detail.status == "failed" else "ended at", _when(detail.ended_at)),
        ("runtime", f"{detail.runtime_s} s" if detail.runtime_s is not None else "-"),
        ("scheduled for", _when(detail.scheduled_for) if detail.scheduled_for else None),
        ("worker", detail.worker or "-"),
        ("attempts", detail.attempts),
        ("retries left", detail.retries_left),
        ("queue tries", detail.tries),
        ("expires at", _when(detail.expires_at) if detail.expires_at else None),
    ]
    if detail.source == "database":
        rows.append(("source", "failed_jobs table (Redis has forgotten this job)"))
    for label, value in rows:
        if value is not None:
            grid.add_row(label, escape(str(value)))
    grid.add_row("arguments", escape(json.dumps(detail.args, default=str)))
    if detail.result is not None:
        grid.add_row("result", escape(json.dumps(detail.result, default=str)))
    if detail.exception:
        grid.add_row("exception", escape(detail.exception))
    console.print("times are UTC", style="dim")
    console.print(grid)
    if detail.traceback:
        console.print()
        console.print(escape(detail.traceback.rstrip()), highlight=False)


@app.command()
def retry(
    ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ID", help="Failed job ids (or unique prefixes).", show_default=False
        ),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every failed job matching the filters.")
    ] = False,
    queue: QueueOpt = None,
    job: JobOpt = None,
    exception: ExceptionOpt = "",
    since: SinceOpt = None,
    before: BeforeOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Put failed jobs back on their queues: by id, or --all matching the filters.

    Each job gets one more try (RQ's requeue keeps its retries left); if it fails again it is
    failed and recorded again.
    """
    from acmeq.ops.failed import find_failed, retry_failed, select_failed

    flt = _filter(queue, job, exception, since, before)
    if ids and all_:
        raise UsageError("give failed job ids or --all, not both")
    if ids and (flt.narrows or flt.queues):
        raise UsageError("--queue/--job/--exception/--since/--before select jobs with --all only")
    if not ids and not all_:
        raise UsageError(
            "say which failed jobs to retry: their ids, or --all "
            "(narrowed with --queue/--job/--exception/--since/--before)"
        )
    cfg, conn = settings(), _connection()
    entries = find_failed(cfg, conn, _resolve(ids, conn)) if ids else select_failed(cfg, conn, flt)
    if dry_run:
        if as_json:
            _emit("retry", entries, [], True)
        else:
            _report("would retry", entries)
        return
    outcome = retry_failed(conn, entries)
    done = set(outcome.done)
    retried = [e for e in entries if e.id in done]
    if as_json:
        _emit("retry", retried, outcome.gone, False)
        return
    _report("retried", retried)
    _gone(outcome.gone)


@app.command()
def flush(
    queue: QueueOpt = None,
    job: JobOpt = None,
    exception: ExceptionOpt = "",
    since: SinceOpt = None,
    before: BeforeOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete failed jobs (all, or those matching the filters) from Redis.

    Their permanent records in the failed_jobs table are kept. Asks for confirmation on a
    terminal; elsewhere pass --yes.
    """
    from acmeq.ops.failed import flush_failed, select_failed

    flt = _filter(queue, job, exception, since, before)
    conn = _connection()
    entries = select_failed(settings(), conn, flt)
    kept = "; their failed_jobs records are kept"
    if dry_run:
        if as_json:
            _emit("flush", entries, [], True)
        else:
            _report("would delete", entries, kept)
        return
    if entries:
        confirm(
            f"Delete {_plural(len(entries))} ({_by_queue(entries)}) from Redis?",
            yes,
            f"refusing to flush {_plural(len(entries))}",
        )
    outcome = flush_failed(conn, entries)
    done = set(outcome.done)
    deleted = [e for e in entries if e.id in done]
    if as_json:
        _emit("flush", deleted, outcome.gone, False)
        return
    _report("deleted", deleted, kept)
    _gone(outcome.gone)


def _emit(action: str, entries: Sequence[FailedEntry], gone: list[str], dry_run: bool) -> None:
    emit_json(
        {
            "action": action,
            "dry_run": dry_run,
            "count": len(entries),
            "jobs": [e.as_dict() for e in entries],
            "skipped": gone,
        }
    )


def _gone(ids: list[str]) -> None:
    if ids:
        console.print(
            f"skipped {len(ids)} that another process retried or deleted meanwhile: "
            + ", ".join(ids)
        )
