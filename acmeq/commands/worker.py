"""`acmeq worker ...`: start a master, and control masters on any host through Redis."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json, show, table
from acmeq.constants import ExitCode
from acmeq.errors import UsageError

app = typer.Typer(
    help="Start supervised worker pools; list, pause, restart, stop them.", no_args_is_help=True
)

QueueOpt = Annotated[list[str] | None, typer.Option("--queue", "-q", help="Queue (repeatable).")]
SupOpt = Annotated[
    list[str] | None, typer.Option("--supervisor", "-s", help="Supervisor (repeatable).")
]
MasterOpt = Annotated[str | None, typer.Option("--master", help="Only this master (its name).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def start(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Worker profile.")] = "production",
    hostname: Annotated[
        str | None, typer.Option(help="Host name to register under (default: this host's).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Master name (default: the host name).")] = None,
    detach: Annotated[bool, typer.Option(help="Run in the background.")] = False,
    log_file: Annotated[Path | None, typer.Option(help="Log here instead of stdout.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR.")] = "INFO",
    pidfile: Annotated[
        Path | None, typer.Option(help="Pidfile (default: under the state directory).")
    ] = None,
    hung_timeout: Annotated[
        float,
        typer.Option(help="Kill a worker whose heartbeat file is older than this (seconds)."),
    ] = 30.0,
    burst: Annotated[
        bool, typer.Option(hidden=True, help="Stop once every queue is empty.")
    ] = False,
) -> None:
    """Start a master running the profile's supervisors (one pool per queue)."""
    from acmeq.queues import registry_for
    from acmeq.supervisor import MasterOptions, serve, start_detached

    cfg = settings()
    cfg.profile(profile)  # unknown profile: exit 2 before anything starts
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise UsageError(f"--log-level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    if hung_timeout <= 0:
        raise UsageError(f"--hung-timeout: expected a number of seconds > 0, got {hung_timeout}")
    registry_for(cfg)  # a job module that fails to import is reported here, once
    opts = MasterOptions(
        profile=profile,
        name=name or hostname or socket.gethostname(),
        hostname=hostname or socket.gethostname(),
        burst=burst,
        log_level=level,
        hung_timeout=hung_timeout,
    )
    if detach:
        master = start_detached(cfg, opts, pidfile=pidfile, log_file=log_file)
        master.close()
        console.print(
            f"master {opts.name} started in the background (pid {master.pid}); "
            f"log {master.log_file}"
        )
        return
    raise typer.Exit(int(serve(cfg, opts, pidfile=pidfile, log_file=log_file)))


def _connection() -> Any:
    from acmeq.storage.redis_client import connect_checked

    return connect_checked(settings())


@app.command()
def terminate(
    wait: Annotated[bool, typer.Option(help="Wait until the masters are gone.")] = False,
    fast: Annotated[
        bool,
        typer.Option(
            help="Interrupt running jobs (they are retried or "
            "failed) instead of letting them finish."
        ),
    ] = False,
    master: MasterOpt = None,
    timeout: Annotated[
        float, typer.Option(help="Give up waiting after this many seconds.")
    ] = 3600.0,
) -> None:
    """Stop masters gracefully (running jobs finish), on every host or one."""
    from acmeq.master import control

    conn = _connection()
    targets = control.send(conn, "terminate-fast" if fast else "terminate", master)
    if not targets:
        console.print("no running masters")
        return
    console.print(f"asked {', '.join(targets)} to stop" + (" fast" if fast else ""))
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            m.name for m in control.list_masters(conn) if m.status != "gone" and m.name in targets
        ]
        if not alive:
            console.print("stopped")
            return
        time.sleep(0.5)
    console.print(f"[red]still running after {timeout:.0f} s: {', '.join(alive)}[/]")
    raise typer.Exit(int(ExitCode.FAILED))


@app.command()
def restart(master: MasterOpt = None) -> None:
    """Rolling restart (deploys): new workers start before the old ones retire."""
    from acmeq.master import control

    targets = control.send(_connection(), "restart", master)
    console.print(f"asked {', '.join(targets)} to restart" if targets else "no running masters")


@app.command()
def pause(queue: QueueOpt = None, supervisor: SupOpt = None, master: MasterOpt = None) -> None:
    """Stop taking new jobs from queues (cluster-wide) or supervisors; running jobs finish."""
    _pause(True, queue or [], supervisor or [], master)


@app.command("continue")
def continue_(queue: QueueOpt = None, supervisor: SupOpt = None, master: MasterOpt = None) -> None:
    """Resume paused queues or supervisors."""
    _pause(False, queue or [], supervisor or [], master)


def _pause(paused: bool, queues: list[str], supervisors: list[str], master: str | None) -> None:
    from acmeq.master import control
    from acmeq.queues import queue_spec

    cfg = settings()
    for q in queues:
        queue_spec(cfg, q)  # unknown queue: exit 2 naming the valid ones
    control.set_paused(_connection(), paused, queues, supervisors, master)
    what = [f"queue {q}" for q in queues] + [f"supervisor {s}" for s in supervisors]
    console.print(f"{'paused' if paused else 'continued'}: {', '.join(what)}")


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Every master, supervisor and worker process across hosts."""
    from acmeq.master import control

    masters = control.list_masters(_connection(), with_processes=True)
    if as_json:
        emit_json([m.as_dict() for m in masters])
        return
    if not masters:
        console.print("no masters are running")
        return
    for m in masters:
        style = "red" if m.status == "gone" else "bold"
        if m.status == "gone":  # killed or lost: its uptime stopped when it was last heard of
            ran = _duration(max(m.last_seen - m.started_at, 0))
            seen = _duration(max(time.time() - m.last_seen, 0))
            state = f"gone (last seen {seen} ago, after {ran} up)"
        else:
            state = f"{m.status}, up {_duration(time.time() - m.started_at)}"
        console.print(
            f"[{style}]master {m.name}[/] on {m.hostname} pid {m.pid}, profile {m.profile}, {state}"
        )
        procs = table(
            "supervisor",
            "queue",
            "pid",
            "state",
            "current job",
            "RSS",
            "jobs",
            "uptime",
            ids=["current job"],
            right=["pid", "RSS", "jobs", "uptime"],
        )
        for p in m.processes:
            rss = f"{p.rss_mb:.0f} MB" if p.rss_mb is not None else "-"
            state = p.state + (" (retiring)" if p.retiring else "")
            procs.add_row(
                p.supervisor,
                p.queue,
                str(p.pid),
                state,
                p.current_job or "-",
                rss,
                str(p.jobs_done),
                _duration(p.uptime_s),
            )
        if m.processes:
            show(procs)
        for sup in m.supervisors:
            for problem in control.pool_problems(sup):  # halted or backing-off pools
                console.print(f"  [red]pool {sup['name']}/{problem}[/]", highlight=False)


@app.command()
def scale(
    explain: Annotated[
        bool,
        typer.Option(help="Show each queue's inputs and the balancer's decision with its reason."),
    ] = False,
    simulate: Annotated[
        Path | None,
        typer.Option(
            help="Replay a load trace (CSV: t,queue,arrivals,runtime) through the policy."
        ),
    ] = None,
    profile: Annotated[str, typer.Option("--profile", "-p")] = "production",
    supervisor: Annotated[
        str | None,
        typer.Option(help="Supervisor to simulate (default: the one serving the trace's queues)."),
    ] = None,
    tick: Annotated[float, typer.Option(help="Simulation tick, seconds.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Explain the balancer's live decisions, or simulate it on a load trace."""
    if simulate is not None:
        _simulate(simulate, profile, supervisor, tick, as_json)
    elif explain:
        _explain(profile, as_json)
    else:
        raise UsageError("say what to do: --explain or --simulate TRACE")


def _explain(profile: str, as_json: bool) -> None:
    from acmeq.master import control
    from acmeq.supervisor import Master, MasterOptions

    conn = _connection()
    rows: list[dict[str, Any]] = []
    live = [m for m in control.list_masters(conn) if m.status != "gone"]
    for m in live:
        for sup in m.supervisors:
            rows += [
                {"master": m.name, "supervisor": sup["name"], **d} for d in sup.get("decisions", [])
            ]
    if not live:
        # No master runs: show what one would decide now, starting from its minimum pools.
        master = Master(settings(), MasterOptions(profile=profile, name="(none running)"), conn)
        for sup_name, decisions in master.plan_once().items():
            rows += [
                {"master": "(none running)", "supervisor": sup_name, **d.as_dict()}
                for d in decisions
            ]
    if as_json:
        emit_json(rows)
        return
    out = table(
        "master",
        "supervisor",
        "queue",
        "ready",
        "oldest",
        "avg run",
        "busy/now",
        "want",
        "reason",
        right=["ready", "oldest", "avg run", "busy/now", "want"],
        fold=["reason"],
    )
    for r in rows:
        out.add_row(
            r["master"],
            r["supervisor"],
            r["queue"],
            str(r["ready"]),
            f"{r['oldest_age']:.1f}s",
            f"{r['avg_runtime'] * 1000:.0f}ms",
            f"{r['busy']}/{r['current']}",
            str(r["desired"]),
            r["reason"],
        )
    show(out)


def _simulate(path: Path, profile: str, supervisor: str | None, tick: float, as_json: bool) -> None:
    from acmeq.master.autoscale import PoolPolicy
    from acmeq.master.simulate import read_trace, render_chart, simulate

    cfg = settings()
    prof = cfg.profile(profile)
    trace = read_trace(path)
    sups = [s for s in prof.supervisors if supervisor in (None, s.name)]
    if supervisor is not None and not sups:
        raise UsageError(
            f"unknown supervisor {supervisor!r} in profile {profile!r}; "
            f"supervisors: {', '.join(s.name for s in prof.supervisors)}"
        )
    if supervisor is None:
        sups = [s for s in sups if set(trace.queues) & set(s.queues)][:1]
        if not sups:
            raise UsageError(
                f"no supervisor of profile {profile!r} serves the trace's queues "
                f"({', '.join(trace.queues)})"
            )
    sup = sups[0]
    steps = simulate(
        PoolPolicy.from_spec(sup),
        {q: cfg.queues[q] for q in sup.queues},
        trace.only(sup.queues),
        tick,
    )
    if as_json:
        emit_json([{"t": s.t, "processes": s.processes, "ready": s.ready} for s in steps])
        return
    console.print(
        f"supervisor {sup.name} of profile {profile} ({sup.balance.value}/"
        f"{sup.strategy.value}, {sup.min_processes}-{sup.max_processes} processes), "
        f"{trace.jobs} jobs:"
    )
    console.print(render_chart(steps), markup=False, highlight=False)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
