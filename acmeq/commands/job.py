"""`acmeq job ...`: the registered job functions, and single jobs by id (cancel)."""

from __future__ import annotations

from typing import Annotated

import typer

from acmeq.commands import render
from acmeq.commands.common import settings
from acmeq.commands.progress import AsUser, database, fmt_done, viewer_for
from acmeq.commands.render import console, emit_json, table
from acmeq.errors import JobNotFoundError, ProgressNotFoundError
from acmeq.queues import registry_for

app = typer.Typer(help="Registered job functions and single jobs.", no_args_is_help=True)


@app.command("list")
def list_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the job functions that may be enqueued and executed (the allowlist)."""
    jobs = list(registry_for(settings()))
    if as_json:
        emit_json(
            [
                {"name": j.name, "queue": j.queue, "path": j.path, "description": j.description}
                for j in jobs
            ]
        )
        return
    out = table("job", "queue", "function", "description", ids=["job"], fold=["description"])
    for j in jobs:
        out.add_row(j.name, j.queue, j.path, j.description)
    render.show(out)


@app.command("cancel")
def cancel(
    job_id: Annotated[
        str, typer.Argument(metavar="ID", help="The job's id, or a unique prefix (6+ characters).")
    ],
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="Seconds a running job has to reach a checkpoint (and clean up) before it is "
            "stopped by force.",
        ),
    ] = 10.0,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Request the cancellation and return at once.")
    ] = False,
    as_user: AsUser = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Cancel a job: a queued one is removed from its queue; a running one stops at its next
    progress checkpoint (its cleanup runs), or by force after the grace period. Never retried.
    """
    from acmeq.ops.jobids import PROGRESS_TABLE, redis_source, resolve_job_id, sql_source
    from acmeq.storage.redis_client import connect_checked
    from acmeq.tracking.cancel import cancel_job

    cfg = settings()
    engine = database(cfg)
    viewer = viewer_for(engine, as_user)
    connection = connect_checked(cfg)
    # A user sees only their own jobs, so only those complete a prefix; the operator sees all.
    sources = [sql_source(engine, PROGRESS_TABLE, user_id=None if viewer.admin else viewer.user_id)]
    if viewer.admin:
        sources.insert(0, redis_source(connection))
    job_id = resolve_job_id(job_id, *sources)
    try:
        outcome = cancel_job(engine, connection, viewer, job_id, grace=grace, wait=not no_wait)
    except ProgressNotFoundError:
        # Neither a progress record nor (for the operator) a job in Redis: the same words
        # whether the job is missing or another user's.
        raise JobNotFoundError(f"job {job_id!r} not found") from None
    if as_json:
        emit_json(outcome.as_dict())
        return
    done = f" after {fmt_done(outcome.record)} items" if outcome.record is not None else ""
    line = {
        "dequeued": f"job {job_id} cancelled before it ran (removed from its queue)",
        "checkpoint": f"job {job_id} cancelled at a checkpoint{done}",
        "forced": f"job {job_id} stopped after the {grace:g} s grace period{done}",
        "requested": f"cancellation of job {job_id} requested: it stops at its next checkpoint, "
        f"or by force in {grace:g} s",
        "already": f"job {job_id} was already cancelled",
    }[outcome.how]
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("show")
def show(
    job_id: Annotated[
        str, typer.Argument(metavar="ID", help="The job's id, or a unique prefix (6+ characters).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One job: status, queue, function, arguments (personal data masked), times, result or
    exception, retries left, worker. An unknown id exits 1."""
    from acmeq.commands.failed import print_detail
    from acmeq.ops.jobids import redis_source, resolve_job_id
    from acmeq.ops.jobview import job_detail
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    connection = connect_checked(cfg)
    detail = job_detail(cfg, connection, resolve_job_id(job_id, redis_source(connection)))
    if as_json:
        emit_json(detail.as_dict())
        return
    print_detail(detail)
