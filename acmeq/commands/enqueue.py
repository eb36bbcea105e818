"""`acmeq enqueue JOB`: put a registered job on its queue from the command line."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json, err_console
from acmeq.errors import UsageError
from acmeq.queues import Enqueuer, JobCall
from acmeq.storage.redis_client import connect_checked
from acmeq.timeparse import parse_duration, parse_when

# An --at this close to now is "now" (the command took a moment to type), not the past.
PAST_SLACK = timedelta(seconds=60)


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
    allow_past: bool = False,
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
    when = parse_when(at, local=True) if at else None
    if when is not None and when < datetime.now(UTC) - PAST_SLACK and not allow_past:
        ago = datetime.now(UTC) - when
        raise UsageError(
            f"--at: {at} ({when.astimezone(UTC).isoformat(timespec='seconds')}) is "
            f"{_ago(ago.total_seconds())} in the past; pass --allow-past to run the job now"
        )
    if delay:
        when = datetime.now(UTC) + parse_duration(delay, "--in")
    return JobCall(job, positional, kwargs, job_id=job_id, at=when)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


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
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Run at this ISO 8601 time; without an offset (2026-12-01T09:00) it is local "
            "time (TZ). A time in the past is refused unless --allow-past.",
        ),
    ] = None,
    allow_past: Annotated[
        bool, typer.Option("--allow-past", help="Accept an --at in the past (the job runs now).")
    ] = False,
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
    call = build_call(job, arg or [], json_args, at, delay, job_id, allow_past)
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
        from acmeq.ops.serving import live_workers

        if not live_workers(enqueuer.connection, jobdef.queue):
            note = (
                f"no worker serves queue {jobdef.queue} right now: the job waits until one "
                "starts (acmeq worker start)"
            )
            if as_json:
                err_console.print(f"acmeq: warning: {note}", markup=False, highlight=False)
            else:
                console.print(note, markup=False, highlight=False, soft_wrap=True)

        sys.exit(watch_jobs(cfg, [rq_job.id], as_json=as_json))  # not typer.Exit: see `watch`
