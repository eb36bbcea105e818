"""`acmeq status`: Redis, queues, masters and alerts on one screen (or live, or as JSON)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from acmeq.commands.common import console, emit_json, settings
from acmeq.constants import ExitCode
from acmeq.errors import UsageError

if TYPE_CHECKING:  # the core module is imported when the command runs, not with the CLI
    from acmeq.observability.status import Snapshot

PAUSED_MARK = "‖"  # after a paused queue's name; explained under the table
WIDE = 110  # from this terminal width on, counts are printed in full with long headers
# Short headers keep the queue table within 80 columns; docs/monitoring.md explains each one.
HEADERS: tuple[str, ...] = ("queue", "ready", "sched", "run", "dfr", "fail", "done", "age")
HEADERS += ("/min", "avg", "p95", "procs")
WIDE_HEADERS: tuple[str, ...] = ("queue", "ready", "scheduled", "started", "deferred", "failed")
WIDE_HEADERS += ("finished", "oldest", "jobs/min", "avg", "p95", "busy/procs")


def status(
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh about every second until Ctrl-C.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Machine-readable output (docs/monitoring.md).")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Print one line; exit 1 if an alert is active, else 0 (for probes)."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between refreshes with --watch.", min=0.2)
    ] = 1.0,
) -> None:
    """Redis, every queue (counts, oldest job, throughput, runtime, processes), masters, alerts."""
    if watch and (as_json or check):
        raise UsageError(
            "--watch shows a live screen; it cannot be combined with --json or --check"
        )
    from acmeq.observability.status import collect
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    connection = connect_checked(cfg)
    if watch:
        _watch(lambda: render(collect(cfg, connection), console.width), interval)
        return
    snap = collect(cfg, connection)
    if as_json:
        emit_json(snap.as_dict())
    elif check:
        console.print(check_line(snap), markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(render(snap, console.width))
    if check and snap.alerting:
        # sys.exit, not typer.Exit: the CLI runs click in non-standalone mode, where an Exit
        # raised by a command only becomes a return value.
        sys.exit(int(ExitCode.FAILED))


def _watch(draw: Callable[[], RenderableType], interval: float) -> None:
    """Redraw in place (no screen clearing, so no flicker) until Ctrl-C, which exits 0."""
    import redis
    from rich.live import Live

    from acmeq.errors import AcmeqError

    def safe() -> RenderableType:
        # A Redis restart or failover must not end the watch: say so and try again next tick.
        try:
            return draw()
        except (redis.RedisError, AcmeqError, OSError) as exc:
            return Text(f"cannot read Redis: {exc} (retrying)", style="red")

    try:
        with Live(safe(), console=console, auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(safe(), refresh=True)
    except KeyboardInterrupt:
        return


def check_line(snap: Snapshot) -> str:
    """One line for cron mail and monitoring probes: OK, or ALERT with every active alert."""
    from acmeq.observability.status import totals

    t = totals(snap)
    if not snap.alerting:
        return (
            f"OK: no active alerts ({t['queues']} queues, {t['ready']} ready, {t['failed']} "
            f"failed, {t['processes_busy']}/{t['processes_total']} processes busy)"
        )
    parts = [
        f"[{a.severity}] {a.rule}{' ' + a.queue if a.queue else ''}: {a.message}"
        for a in snap.alerts
    ]
    noun = "alert" if len(parts) == 1 else "alerts"
    return f"ALERT: {len(parts)} active {noun}: " + "; ".join(parts)


# -- rendering -----------------------------------------------------------------------------------


def count(n: int, wide: bool = False) -> str:
    """A job count in at most five characters (1234, 12.3k, 999k, 1.0M), or in full when wide."""
    if wide or n < 10_000:
        return f"{n:,}" if wide else str(n)
    if n < 100_000:
        return f"{n / 1000:.1f}k"
    if n < 1_000_000:
        return f"{n // 1000}k"
    if n < 10_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n // 1_000_000}M"


def duration(seconds: float | None) -> str:
    """A duration in at most five characters: 850ms, 2.5s, 42s, 12m, 3.2h, 4d; None is '-'."""
    if seconds is None:
        return "-"
    if seconds < 0.0005:
        return "<1ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def rate(per_min: float) -> str:
    if per_min == 0:
        return "0"
    if per_min < 10:
        return f"{per_min:.1f}"
    return count(round(per_min))


def table(*headers: str, numeric_from: int = 1, numeric_to: int | None = None) -> Table:
    """A borderless table, one space between columns, cells cut short rather than wrapped
    (so the queue table fits 80 columns); columns numeric_from..numeric_to are right-aligned."""
    out = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), show_edge=False)
    last = len(headers) if numeric_to is None else numeric_to
    for i, header in enumerate(headers):
        justify: Literal["left", "right"] = "right" if numeric_from <= i < last else "left"
        out.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis")
    return out


def render(snap: Snapshot, width: int) -> RenderableType:
    """The status screen; rows never wrap (cells are shortened instead)."""
    wide = width >= WIDE
    parts: list[RenderableType] = [_redis_line(snap)]
    for warning in snap.redis.warnings:
        parts.append(Text(f"! {warning}", style="yellow"))
    parts.append(_summary(snap))
    parts.append(Text(""))
    parts.append(_queues(snap, wide))
    paused = [q.name for q in snap.queues if q.paused]
    if paused:
        parts.append(Text(f"{PAUSED_MARK} paused: {', '.join(paused)}", style="yellow"))
    parts.append(Text(""))
    parts.append(_masters(snap))
    if snap.alerts:
        parts.append(Text(""))
        parts.append(_alerts(snap))
    return Group(*parts)


def _redis_line(snap: Snapshot) -> Text:
    r = snap.redis
    line = Text("Redis ", style="bold")
    line.append(r.where)
    line.append(f"  {r.version}  {r.used_memory_human} used", style="dim")
    return line


def _summary(snap: Snapshot) -> Text:
    from acmeq.observability.status import totals

    t = totals(snap)
    masters = f"{t['masters']} master{'s' if t['masters'] != 1 else ''}"
    line = Text(
        f"{t['ready']:,} ready · {t['failed']:,} failed · "
        f"{t['processes_busy']}/{t['processes_total']} processes busy · {masters} · "
    )
    if snap.alerts:
        noun = "alert" if t["alerts"] == 1 else "alerts"
        line.append(f"{t['alerts']} {noun}", style="bold red")
    else:
        line.append("no alerts", style="green")
    return line


def _queues(snap: Snapshot, wide: bool) -> Table:
    rows = table(*(WIDE_HEADERS if wide else HEADERS))
    for q in snap.queues:
        name = Text(q.name)
        if q.paused:
            name.append(PAUSED_MARK, style="yellow")
        age = Text(duration(q.oldest_age_s), style="bold red" if q.waiting_too_long else "")
        rows.add_row(
            name,
            count(q.ready, wide),
            count(q.scheduled, wide),
            count(q.started, wide),
            count(q.deferred, wide),
            Text(count(q.failed, wide), style="red" if q.failed else ""),
            count(q.finished, wide),
            age,
            rate(q.throughput_per_min),
            duration(q.runtime_avg_s),
            duration(q.runtime_p95_s),
            f"{q.processes_busy}/{q.processes_total}",
        )
    return rows


def _masters(snap: Snapshot) -> RenderableType:
    if not snap.masters:
        return Text("no masters running (start one with `acmeq worker start`)", style="dim")
    # A master is named after its host by default: the host column only when it says more.
    hosts = any(m.hostname != m.name for m in snap.masters)
    headers = ("master", "host") if hosts else ("master",)
    lead = len(headers)
    procs = lead + 2  # the one right-aligned column
    rows = table(
        *headers,
        "status",
        "supervisor",
        "procs",
        "queues",
        numeric_from=procs,
        numeric_to=procs + 1,
    )
    for m in snap.masters:
        cells: list[RenderableType] = [Text(m.name, style="bold")]
        cells += [m.hostname] if hosts else []
        rows.add_row(
            *cells,
            Text(m.status, style="red" if m.status == "gone" else ""),
            "",
            f"{m.processes_busy}/{m.processes_total}",
            Text(f"profile {m.profile}", style="dim") if m.profile else "",
        )
        for s in m.supervisor_views:
            sup = Text(s.name)
            if s.paused:
                sup.append(PAUSED_MARK, style="yellow")
            busy = f"{s.processes_busy}/{s.processes_total}"
            queues = Text(",".join(s.queues))
            for problem in s.problems:  # halted or backing-off pools
                queues.append(f"  {problem}", style="red")
            rows.add_row(*[""] * lead, "", sup, busy, queues)
    return rows


def _alerts(snap: Snapshot) -> Table:
    rows = table("severity", "rule", "queue", "for", "message", numeric_from=3, numeric_to=4)
    for a in snap.alerts:
        style = "bold red" if a.severity == "critical" else "yellow"
        since = duration(max(snap.taken_at - a.since, 0.0)) if a.since else "-"
        rows.add_row(Text(a.severity, style=style), a.rule, a.queue or "-", since, a.message)
    return rows
