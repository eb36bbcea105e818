"""`acmeq schedule list|run|sync`: the periodic jobs the master runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import emit_json, line, show, table

app = typer.Typer(
    help="Periodic jobs ([schedules.NAME]): next and last runs, run now, sync.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command("list")
def list_schedules(as_json: JsonOpt = False) -> None:
    """Show every schedule: cron and zone, job, next run, last run and its outcome."""
    from acmeq import schedules
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    connection = connect_checked(cfg)
    rows = schedules.describe(connection, cfg)
    leader = schedules.leader(connection)
    if as_json:
        emit_json({"enabled": cfg.scheduler.enabled, "leader": leader, "schedules": rows})
        return
    state = (
        "disabled ([scheduler] enabled = false)"
        if not cfg.scheduler.enabled
        else (f"run by {leader}" if leader else "no master is running: nothing fires")
    )
    line(f"scheduler: {state}")
    out = table("name", "cron", "job", "next run", "last run", "outcome", fold=["outcome"])
    for r in rows:
        job = r["job"] if r["registered"] else f"{r['job']} (not registered)"
        outcome = r["last_outcome"] or "-"
        if r["last_job_status"]:
            outcome += f"; job {r['last_job_status']}"
        zone = "" if r["timezone"] == "UTC" else f" {r['timezone']}"
        out.add_row(
            r["name"],
            r["cron"] + zone,
            job,
            _when(r["next_run"]) if r["enabled"] else "disabled",
            _when(r["last_run"]),
            outcome,
        )
    show(out)


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="Schedule name.", show_default=False)],
    force: Annotated[
        bool, typer.Option("--force", help="Run even while the previous run is active.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue a schedule's job now (the overlap guard applies unless --force)."""
    from acmeq import schedules
    from acmeq.constants import ExitCode
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    outcome = schedules.run_now(connect_checked(cfg), cfg, name, force)
    if as_json:
        emit_json(outcome.__dict__)
    elif outcome.job_id:
        line(f"enqueued {name}: job {outcome.job_id}")
    else:
        line(f"skipped {name}: {outcome.note}")
    if not outcome.job_id:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("sync")
def sync(as_json: JsonOpt = False) -> None:
    """Make Redis agree with the configured schedules (new/changed start now, removed go)."""
    from acmeq import schedules
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    changes = schedules.sync(connect_checked(cfg), cfg)
    if as_json:
        emit_json({"changes": changes})
        return
    for change in changes:
        line(change)
    line(f"{len(cfg.schedules)} schedules configured, {len(changes)} changed")
