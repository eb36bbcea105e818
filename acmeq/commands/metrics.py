"""`acmeq metrics`: throughput, runtime and wait over a window, with a chart; `metrics serve`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json, layout_width
from acmeq.commands.status import count, duration, rate, table

if TYPE_CHECKING:  # the core module is imported when the command runs, not with the CLI
    from acmeq.observability.metrics_report import Point, Report, Summary, Window

app = typer.Typer(
    help="Job metrics: throughput, runtime and wait over a window; a Prometheus endpoint.",
    invoke_without_command=True,
)

BLOCKS = "▁▂▃▄▅▆▇█"
CHART_HEIGHT = 4  # rows per chart; each row has eight levels
LABEL_WIDTH = 8


@app.callback()
def show(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Only this queue.")] = None,
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only this job function.")] = None,
    since: Annotated[
        str, typer.Option("--since", help="Window: 15m, 1h, 6h, 1d, 7d ... (up to the retention).")
    ] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Processed, failed, throughput, runtime (avg/p50/p95/max) and wait, with a chart."""
    if ctx.invoked_subcommand is not None:
        return
    from acmeq.observability.metrics_report import report
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    result = report(cfg, connect_checked(cfg), since=since, queue=queue, job=job)
    if as_json:
        emit_json(result.as_dict())
        return
    console.print(render(result, layout_width()))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 9181,
) -> None:
    """Serve /metrics to Prometheus until Ctrl-C.

    The page is at http://HOST:PORT/metrics, in Prometheus' text format or OpenMetrics when
    the scraper asks for it; a Redis failure answers 503 (docs/monitoring.md).
    """
    from acmeq.observability.prometheus import exposition, make_server, registry
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    connection = connect_checked(cfg)
    reg = registry(cfg, connection)
    server = make_server(lambda accept: exposition(reg, accept), host, port)
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"serving Prometheus metrics on http://{shown}:{server.server_address[1]}/metrics "
        "(Ctrl-C to stop)",
        markup=False,
        highlight=False,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- rendering -----------------------------------------------------------------------------------


def render(result: Report, width: int) -> RenderableType:
    win = result.window
    title = Text(f"last {win.since}", style="bold")
    title.append(
        f"  ({len(win.starts)} {win.resolution.value} buckets from {_stamp(win.start, win)})",
        style="dim",
    )
    chart = result.chart
    plot_width = max(width - LABEL_WIDTH - 1, 10)
    throughput = [p.throughput_per_min if _ran(p) else 0.0 for p in chart.series]
    runtime = [p.runtime_avg_s if _ran(p) else None for p in chart.series]
    return Group(
        title,
        Text(""),
        _table(result.rows),
        Text(""),
        Text(f"{chart.name}: runs per minute", style="bold"),
        *_chart_lines(throughput, plot_width, rate, win),
        Text(""),
        Text(f"{chart.name}: average runtime", style="bold"),
        *_chart_lines(runtime, plot_width, duration, win),
    )


def _ran(p: Point) -> bool:
    return p.processed + p.failed > 0


def _table(rows: Sequence[Summary]) -> Table:
    first = "job" if rows and rows[0].subject.value == "job" else "queue"
    out = table(first, "done", "failed", "/min", "avg", "p50", "p95", "max", "wait", "w95")
    for r in rows:
        out.add_row(
            Text(r.name, style="bold" if r.subject.value == "all" else ""),
            count(r.processed),
            Text(count(r.failed), style="red" if r.failed else ""),
            rate(r.throughput_per_min),
            duration(r.runtime_avg_s),
            duration(r.runtime_p50_s),
            duration(r.runtime_p95_s),
            duration(r.runtime_max_s),
            duration(r.wait_avg_s),
            duration(r.wait_p95_s),
        )
    return out


def downsample(values: Sequence[float | None], width: int) -> list[float | None]:
    """At most ``width`` columns: consecutive buckets averaged (missing ones left out)."""
    if len(values) <= width:
        return list(values)
    out: list[float | None] = []
    for col in range(width):
        lo = col * len(values) // width
        hi = (col + 1) * len(values) // width
        known = [v for v in values[lo:hi] if v is not None]
        out.append(sum(known) / len(known) if known else None)
    return out


def bars(values: Sequence[float | None], height: int = CHART_HEIGHT) -> list[str]:
    """A bar chart in unicode blocks, ``height`` rows of eight levels each, top row first.

    Any value above zero shows at least the lowest block, so a quiet bucket is not mistaken for
    an idle one; a missing value (no run) is a blank column.
    """
    top = max((v for v in values if v is not None), default=0.0)
    levels = height * len(BLOCKS)
    eighths = []
    for v in values:
        if v is None or v <= 0 or top <= 0:
            eighths.append(0)
        else:
            eighths.append(max(1, round(v / top * levels)))
    rows = []
    for row in range(height):
        base = (height - 1 - row) * len(BLOCKS)
        line = ""
        for e in eighths:
            fill = min(max(e - base, 0), len(BLOCKS))
            line += BLOCKS[fill - 1] if fill else " "
        rows.append(line)
    return rows


def _chart_lines(
    values: Sequence[float | None], width: int, show: Callable[[float], str], win: Window
) -> list[Text]:
    cols = downsample(values, width)
    # A short window (15 buckets) gets wider bars rather than a chart squeezed to the left.
    repeat = max(1, min(width // max(len(cols), 1), 4))
    cols = [v for v in cols for _ in range(repeat)]
    top = max((v for v in cols if v is not None), default=0.0)
    lines = []
    for i, row in enumerate(bars(cols)):
        label = show(top) if i == 0 else ("0" if i == CHART_HEIGHT - 1 else "")
        lines.append(Text(f"{label:>{LABEL_WIDTH}} ", style="dim") + Text(row, style="cyan"))
    first, last = _stamp(win.starts[0], win), _stamp(win.starts[-1], win)
    gap = max(len(cols) - len(first) - len(last), 1)
    lines.append(Text(" " * (LABEL_WIDTH + 1) + first + " " * gap + last, style="dim"))
    return lines


def _stamp(epoch: int, win: Window) -> str:
    hourly = win.resolution.value == "hour"
    return time.strftime("%m-%d %H:%M" if hourly else "%H:%M", time.localtime(epoch))
