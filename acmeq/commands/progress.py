"""`acmeq progress list|show|watch`: the progress of tracked jobs, with bars, rate and ETA.

:func:`watch_jobs` is the live view ``acmeq enqueue --watch`` and the export commands reuse.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from acmeq.commands.common import settings
from acmeq.commands.render import (
    UNLIMITED,
    console,
    emit_json,
    json_line,
    keep_ids,
    mark_id_column,
)
from acmeq.config.settings import Settings
from acmeq.errors import UsageError

# acmeq.storage.models (SQLModel, ~0.4 s to import) is only imported by the commands that run,
# never at
# CLI start-up; statuses are compared by value here (JobStatus is a StrEnum).
if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from acmeq.storage.models import JobStatus
    from acmeq.tracking.store import ProgressRecord, Viewer
    from acmeq.tracking.watch import ProgressWatch

app = typer.Typer(
    help="Job progress: list, show and watch tracked jobs (bars, rate, ETA).",
    no_args_is_help=True,
)

AS_HELP = (
    "Act as this user (id or email from the users table): only their own jobs are visible. "
    "An operator identity, not authentication; without it the CLI acts as the operator and "
    "sees every job."
)
AsUser = Annotated[
    str | None, typer.Option("--as", envvar="ACMEQ_USER", help=AS_HELP, show_default=False)
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}
BAR_WIDTH = 20
MIN_BAR_WIDTH = 8


def database(cfg: Settings) -> Engine:
    """The configured database, which must be migrated (exit 2 otherwise, 3 if unreachable)."""
    from acmeq.storage import (
        sql as db,  # imported late: SQLAlchemy and alembic cost ~0.3 s at startup
    )

    engine = db.engine_for(cfg)
    db.require_schema(engine)
    return engine


def resolve_ids(engine: Engine, viewer: Viewer, job_ids: Sequence[str]) -> list[str]:
    """Full ids for ids or unique prefixes among the progress records ``viewer`` may see."""
    from acmeq.ops.jobids import PROGRESS_TABLE, resolve_job_ids, sql_source

    user_id = None if viewer.admin else viewer.user_id
    return resolve_job_ids(job_ids, sql_source(engine, PROGRESS_TABLE, user_id=user_id))


def viewer_for(engine: Engine, as_user: str | None) -> Viewer:
    from acmeq.tracking.store import resolve_viewer

    return resolve_viewer(engine, as_user)


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate >= 10_000:
        return f"{rate / 1000:,.0f}k/s"
    if rate >= 100:
        return f"{rate:,.0f}/s"
    return f"{rate:.1f}/s"


def fmt_done(record: ProgressRecord) -> str:
    total = f"{record.total:,}" if record.total else "?"
    return f"{record.processed:,}/{total}"


def fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def status_text(record: ProgressRecord) -> Text:
    return Text(record.status.value, style=STATUS_STYLE[record.status.value])


def bar(record: ProgressRecord, width: int = BAR_WIDTH) -> ProgressBar:
    if record.total > 0:
        return ProgressBar(
            total=record.total, completed=min(record.processed, record.total), width=width
        )
    if record.status == "completed":
        return ProgressBar(total=1, completed=1, width=width)
    # Unknown total: a pulsing bar while it runs, an empty one otherwise.
    return ProgressBar(total=None if record.status == "running" else 1, width=width)


def fmt_percent(record: ProgressRecord) -> str:
    return "-" if record.percent is None else f"{record.percent:.0f}%"


def eta_text(record: ProgressRecord, now: datetime) -> str:
    if record.finished:
        return fmt_duration(record.elapsed_seconds(now)) if record.started_at else "-"
    return fmt_duration(record.eta_seconds(now))


def progress_table(records: Sequence[ProgressRecord], *, width: int | None = None) -> Table:
    """One row per job: id, job, status, bar, %, done/total, failed, rate, ETA, message.

    The ETA column shows the time left while a job runs and the time it took once it ended.
    Job ids are always shown whole (they are what one copies). Given the console ``width`` (a
    terminal's), the bar is shortened first, then the message gets the room left (dropped
    below 10 columns); without one (not a terminal) every cell is shown in full.
    """
    if width is None or width >= UNLIMITED:
        return _table(records, BAR_WIDTH, 0, job_width=None)
    bar_width = BAR_WIDTH
    natural = _measure(_table(records, bar_width, -1))
    if natural > width:  # a shorter bar first
        bar_width = max(MIN_BAR_WIDTH, bar_width - (natural - width))
        natural = _measure(_table(records, bar_width, -1))
    room = width - natural - 1
    return _table(records, bar_width, room if room >= 10 else -1)


def _measure(table: Table) -> int:
    return Console(width=10_000).measure(table).maximum


def _table(
    records: Sequence[ProgressRecord],
    bar_width: int,
    message_width: int,
    job_width: int | None = 24,
) -> Table:
    # message_width: 0 unlimited, -1 no message column.
    now = datetime.now(UTC)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 0))
    table.add_column("job id", no_wrap=True)
    mark_id_column(table.columns[-1])
    table.add_column("job", no_wrap=True, overflow="ellipsis", max_width=job_width)
    table.add_column("status", no_wrap=True)
    table.add_column("progress", no_wrap=True, width=bar_width)
    for name in ("%", "done", "failed", "rate", "ETA"):
        table.add_column(name, justify="right", no_wrap=True)
    if message_width >= 0:
        table.add_column(
            "message", overflow="ellipsis", no_wrap=True, max_width=message_width or None
        )
    for r in records:
        cells: list[Any] = [
            r.id,
            r.job_name,
            status_text(r),
            bar(r, bar_width),
            fmt_percent(r),
            fmt_done(r),
            Text(f"{r.failed:,}", style="red" if r.failed else ""),
            fmt_rate(r.rate) if not r.finished else "-",
            eta_text(r, now),
        ]
        if message_width >= 0:
            cells.append(Text(r.message or ""))
        table.add_row(*cells)
    return keep_ids(table)


def summary(records: Sequence[ProgressRecord]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    noun = "job" if len(records) == 1 else "jobs"
    return f"{len(records)} {noun}: {parts}" if records else "no jobs"


def end_line(record: ProgressRecord) -> Text:
    took = fmt_duration(record.elapsed_seconds())
    line = Text(f"job {record.id} ({record.job_name}) ")
    line.append(record.status.value, style=STATUS_STYLE[record.status.value])
    line.append(f": {fmt_done(record)} items, {record.failed:,} failed, in {took}")
    if record.message and record.status != "completed":
        line.append(f" - {record.message}")
    return line


# ---------------------------------------------------------------------------------------------
# The live view


def watch_jobs(
    cfg: Settings,
    job_ids: Sequence[str] = (),
    *,
    as_user: str | None = None,
    viewer: Viewer | None = None,
    as_json: bool = False,
    out: Console | None = None,
    poll_interval: float = 2.0,
) -> int:
    """Follow jobs until they end; return the exit code (0 all completed, 1 any failed/cancelled).

    On a terminal: a live table redrawn as updates arrive. Otherwise (logs, pipes): one line per
    job as it ends, then the final table. ``as_json``: one JSON record per line, per update.
    """
    from acmeq.storage.redis_client import connect_checked
    from acmeq.tracking.watch import ProgressWatch

    out = out or console
    engine = database(cfg)
    viewer = viewer or viewer_for(engine, as_user)
    job_ids = resolve_ids(engine, viewer, job_ids)
    connection = connect_checked(cfg)
    with ProgressWatch(
        engine, connection, viewer, list(job_ids) or None, poll_interval=poll_interval
    ) as watch:
        if not watch.records:
            if not as_json:
                out.print("no running jobs")
            return 0
        if as_json:
            return _watch_json(watch)
        if out.is_terminal:
            return _watch_live(watch, out)
        return _watch_plain(watch, out)


def _watch_json(watch: ProgressWatch) -> int:
    for record in watch.records:
        _json_line(record)
    while not watch.done:
        for record in watch.step(0.5):
            _json_line(record)
    return watch.exit_code


def _json_line(record: ProgressRecord) -> None:
    json_line(record.as_dict())


def _view(watch: ProgressWatch, width: int) -> Group:
    records = watch.records
    table = progress_table(records, width=width)
    return Group(table, Text(summary(records), style="dim"))


def _watch_live(watch: ProgressWatch, out: Console) -> int:
    reported: set[str] = set()
    view = _view(watch, out.width)
    with Live(view, console=out, refresh_per_second=4, transient=False) as live:
        while not watch.done:
            for record in watch.step(0.25):
                if record.finished and record.id not in reported:
                    reported.add(record.id)  # a lasting line above the live table
                    live.console.print(end_line(record), soft_wrap=True)
            live.update(_view(watch, out.width))  # also when nothing changed: the ETA counts down
        for record in watch.records:
            if record.id not in reported:
                live.console.print(end_line(record), soft_wrap=True)
    return watch.exit_code


def _watch_plain(watch: ProgressWatch, out: Console) -> int:
    reported: set[str] = set()
    while not watch.done:
        for record in watch.step(0.5):
            if record.finished and record.id not in reported:
                reported.add(record.id)
                out.print(end_line(record), soft_wrap=True)
    for record in watch.records:  # ended between the last step and the loop test
        if record.id not in reported:
            out.print(end_line(record), soft_wrap=True)
    out.print(_view(watch, out.width))
    return watch.exit_code


# ---------------------------------------------------------------------------------------------
# Commands


@app.command("list")
def list_progress(
    user: Annotated[
        str | None,
        typer.Option("--user", help="Only jobs of this user (id or email).", show_default=False),
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only jobs in this status (repeatable): pending, running, completed, failed, "
            "cancelled.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest this many.")] = 50,
    as_user: AsUser = None,
    as_json: JsonFlag = False,
) -> None:
    """List tracked jobs, newest first: status, bar, counts, rate and ETA."""
    from acmeq.tracking import store

    cfg = settings()
    engine = database(cfg)
    viewer = viewer_for(engine, as_user)
    user_id = store.find_user(engine, user, "--user")[0] if user else None
    statuses = parse_statuses(status or [])
    records = store.query(engine, viewer=viewer, user_id=user_id, statuses=statuses, limit=limit)
    if _reconcile(cfg, engine, records):
        records = store.query(
            engine, viewer=viewer, user_id=user_id, statuses=statuses, limit=limit
        )
    if as_json:
        emit_json([r.as_dict() for r in records])
        return
    if not records:
        console.print("no tracked jobs" + (" match" if user or statuses else ""))
        return
    console.print(progress_table(records, width=console.width))


@app.command("show")
def show(
    job_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="Job id (as printed by enqueue and list), or a unique prefix."
        ),
    ],
    as_user: AsUser = None,
    as_json: JsonFlag = False,
) -> None:
    """Show one job's progress record in full (not found if it is another user's)."""
    from acmeq.tracking import store

    cfg = settings()
    engine = database(cfg)
    viewer = viewer_for(engine, as_user)
    job_id = resolve_ids(engine, viewer, [job_id])[0]
    record = store.get_visible(engine, job_id, viewer)
    if _reconcile(cfg, engine, [record]):
        record = store.get_visible(engine, job_id, viewer)
    if as_json:
        emit_json(record.as_dict())
        return
    now = datetime.now(UTC)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    line = Text.assemble(f"{fmt_percent(record):>4}  {fmt_done(record)} items, ")
    line.append(f"{record.failed:,} failed", style="red" if record.failed else "")
    grid.add_row("job", f"{escape(record.job_name)} on {escape(record.queue or '-')}")
    grid.add_row("owner", f"user {record.user_id}" if record.user_id is not None else "-")
    grid.add_row("status", status_text(record))
    grid.add_row("progress", bar(record, 40))  # a bar ends no line: the counts get a row
    grid.add_row("", line)
    grid.add_row("rate", fmt_rate(record.rate) if not record.finished else "-")
    if not record.finished:
        eta = record.eta_seconds(now)
        when = f"in {fmt_duration(eta)} ({fmt_time(record.eta_at)})" if eta is not None else "-"
        grid.add_row("ETA", when)
    grid.add_row("created", fmt_time(record.created_at))
    grid.add_row("started", fmt_time(record.started_at))
    grid.add_row("updated", fmt_time(record.updated_at))
    grid.add_row("finished", fmt_time(record.finished_at))
    grid.add_row("elapsed", fmt_duration(record.elapsed_seconds(now)))
    grid.add_row("message", escape(record.message or "-"))
    if record.meta:
        grid.add_row("meta", escape(json.dumps(dict(record.meta), sort_keys=True)))
    if record.errors:
        grid.add_row("last errors", escape("\n".join(record.errors)))
    console.print(f"job progress [bold]{escape(record.id)}[/]", soft_wrap=True)
    console.print(grid)


@app.command("watch")
def watch(
    job_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Jobs to watch (ids or unique prefixes); none: every running job (also ones "
            "starting later).",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option("--poll", min=0.2, help="Seconds between SQL polls (the fallback).")
    ] = 2.0,
    as_user: AsUser = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON record per line, per update.")
    ] = False,
) -> None:
    """Live table of running jobs until they end. Exit 0: all completed; 1: any failed or cancelled.

    Updates arrive over Redis pub/sub as the jobs report them; the database is polled as the
    fallback. Ctrl-C stops watching (exit 130), not the jobs.
    """
    code = watch_jobs(
        settings(), job_ids or [], as_user=as_user, as_json=as_json, poll_interval=interval
    )
    # sys.exit, not typer.Exit: in the CLI's non-standalone mode click returns an Exit's code
    # instead of exiting with it, and acmeq.cli.main does not pass it on.
    sys.exit(code)


def parse_statuses(values: Sequence[str]) -> list[JobStatus]:
    from acmeq.storage.models import JobStatus

    valid = [s.value for s in JobStatus]
    for value in values:
        if value not in valid:
            raise UsageError(f"--status: unknown status {value!r}; valid: {', '.join(valid)}")
    return [JobStatus(v) for v in values]


def _reconcile(cfg: Settings, engine: Engine, records: Sequence[ProgressRecord]) -> bool:
    """Best effort: fix active records of jobs RQ has ended; False when Redis is not at hand."""
    if all(r.finished for r in records):
        return False
    import redis

    from acmeq.errors import AcmeqError
    from acmeq.storage.redis_client import connect
    from acmeq.tracking.watch import reconcile

    try:
        return bool(reconcile(engine, connect(cfg, start_embedded=False), records))
    except (redis.RedisError, OSError, AcmeqError):
        return False


# `acmeq progress token|serve` (issue #16) live in their own module.
from acmeq.commands import progress_stream as _stream  # noqa: E402

app.command("token")(_stream.token)
app.command("serve")(_stream.serve)
