"""`acmeq enqueue JOB`: put a registered job on its queue from the command line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from acmeq.commands.common import console, emit_json, settings
from acmeq.errors import UsageError
from acmeq.queues import Enqueuer, JobCall
from acmeq.storage.redis_client import connect_checked
from acmeq.timeparse import parse_duration, parse_when


def parse_arg(text: str) -> tuple[str, Any]:
    """`k=v`: v is read as JSON when it is a JSON literal (5, true, "x", [1]), else as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise UsageError(f"--arg: expected NAME=VALUE with a Python identifier, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def build_call(
    job: str,
    args: list[str],
    json_args: str | None,
    at: str | None,
    delay: str | None,
    job_id: str | None,
) -> JobCall:
    positional: list[Any] = []
    kwargs: dict[str, Any] = {}
    if json_args is not None:
        try:
            parsed = json.loads(json_args)
        except ValueError as exc:
            raise UsageError(f"--json-args: invalid JSON ({exc}): {json_args!r}") from None
        if isinstance(parsed, dict):
            kwargs.update(parsed)
        elif isinstance(parsed, list):
            positional = parsed
        else:
            raise UsageError(f"--json-args: expected a JSON object or array, got {json_args!r}")
    kwargs.update(parse_arg(a) for a in args)
    if at and delay:
        raise UsageError("--at and --in exclude each other")
    # A delay becomes an absolute time here so that what is printed is what was scheduled.
    when = parse_when(at) if at else None
    if delay:
        when = datetime.now(UTC) + parse_duration(delay, "--in")
    return JobCall(job, positional, kwargs, job_id=job_id, at=when)


def enqueue(
    job: Annotated[str, typer.Argument(help="Registered job name (see `acmeq job list`).")],
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            "-a",
            help="Keyword argument NAME=VALUE (VALUE parsed as JSON when it is JSON).",
        ),
    ] = None,
    json_args: Annotated[
        str | None,
        typer.Option(
            "--json-args",
            help="JSON object of keyword arguments, or JSON array of positional ones.",
        ),
    ] = None,
    at: Annotated[str | None, typer.Option("--at", help="Run at this ISO 8601 time.")] = None,
    delay: Annotated[
        str | None, typer.Option("--in", help="Run after this delay (30s, 5m, 1h).")
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Explicit job id.")] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Then follow the job's progress until it ends; exit 0 if it completed, 1 if "
            "it failed or was cancelled. With --json: JSON lines.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Enqueue a registered job on its queue, with that queue's timeout, retries and TTLs."""
    cfg = settings()
    call = build_call(job, arg or [], json_args, at, delay, job_id)
    enqueuer = Enqueuer(cfg, connect_checked(cfg))
    rq_job = enqueuer.enqueue_call(call)
    jobdef = enqueuer.registry.get(job)
    when = call.at.astimezone(UTC).isoformat(timespec="seconds") if call.at else None
    if as_json:
        result = {
            "id": rq_job.id,
            "job": jobdef.name,
            "queue": jobdef.queue,
            "status": str(rq_job.get_status(refresh=False).value),
            "scheduled_for": when,
        }
        if watch:  # JSON lines: this object, then one progress record per update
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
        else:
            emit_json(result)
    else:
        suffix = f", scheduled for {when}" + (f" (in {delay})" if delay else "") if when else ""
        console.print(
            f"enqueued [bold]{jobdef.name}[/] on [cyan]{jobdef.queue}[/] as {rq_job.id}{suffix}"
        )
    if watch:
        from acmeq.commands.progress import watch_jobs

        sys.exit(watch_jobs(cfg, [rq_job.id], as_json=as_json))  # not typer.Exit: see `watch`
