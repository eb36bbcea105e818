"""Jobs and callbacks of the RQ conformance tests (tests/test_rq_conformance.py).

Run by plain RQ workers (which import them by path) and by acmeq's (which find them in the
allowlist: jobs with ``@acmeq.job``, named ``conf_*`` so that they never clash with the
names of tests/sample_jobs.py in one test process; callbacks with ``@acmeq.callback``). Every
call is written to the Redis list ``conf:calls`` so both kinds of worker are compared on what
they called.
"""

from __future__ import annotations

import time
from typing import Any

from rq import Retry, get_current_job

import acmeq

CALLS = "conf:calls"
Q = "bulk"


def _note(connection: Any, what: str) -> None:
    connection.rpush(CALLS, what)


@acmeq.job(queue=Q, name="conf_add")
def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b


@acmeq.job(queue=Q, name="conf_nothing")
def nothing() -> None:
    """Return None."""


@acmeq.job(queue=Q, name="conf_boom")
def boom(message: str = "boom") -> None:
    """Always raise."""
    raise RuntimeError(message)


@acmeq.job(queue=Q, name="conf_nap")
def nap(seconds: float) -> float:
    """Sleep in short steps (interruptible in every execution model)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return seconds


@acmeq.job(queue=Q, name="conf_block")
def block(seconds: float) -> float:
    """Sleep in one blocking call (a thread cannot be interrupted inside it)."""
    time.sleep(seconds)
    return seconds


@acmeq.job(queue=Q, name="conf_ordered")
def ordered(tag: str) -> str:
    """Note the order in which jobs start."""
    job = get_current_job()
    assert job is not None
    _note(job.connection, f"order:{tag}")
    return tag


@acmeq.job(queue=Q, name="conf_inspect_self")
def inspect_self() -> list[Any]:
    """What the job object says about itself inside the job; saved in meta too."""
    job = get_current_job()
    assert job is not None
    seen = [
        job.worker_name is not None,
        str(job.get_status(refresh=False).value if job.get_status(refresh=False) else None),
        job.last_heartbeat is not None,
        job.started_at is not None,
    ]
    job.meta["seen"] = seen
    job.save_meta()
    return seen


@acmeq.job(queue=Q, name="conf_flaky")
def flaky(succeed_on: int) -> int:
    """Fail until attempt ``succeed_on``; each attempt appends its number to meta."""
    job = get_current_job()
    assert job is not None
    attempts = list(job.meta.get("attempts", []))
    attempts.append(len(attempts) + 1)
    job.meta["attempts"] = attempts
    job.save_meta()
    if len(attempts) < succeed_on:
        raise RuntimeError(f"attempt {len(attempts)}")
    return len(attempts)


@acmeq.job(queue=Q, name="conf_ask_retry")
def ask_retry(until: int) -> Any:
    """Return Retry(max=5) until run ``until`` times, then return 'done'."""
    job = get_current_job()
    assert job is not None
    runs = int(job.meta.get("runs", 0)) + 1
    job.meta["runs"] = runs
    job.save_meta()
    _note(job.connection, f"run:{job.id}:{runs}")
    if runs < until:
        return Retry(max=5)
    return "done"


@acmeq.job(queue=Q, name="conf_counted")
def counted(tag: str, seconds: float = 0.0) -> str:
    """Note every run (repeats, the kill storm's ledger), after ``seconds`` of work."""
    job = get_current_job()
    assert job is not None
    if seconds:
        time.sleep(seconds)
    _note(job.connection, f"run:{tag}")
    return tag


@acmeq.callback
def on_ok(job: Any, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    _note(connection, f"success:{job.id}:{result!r}")


@acmeq.callback
def on_bad(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    _note(connection, f"failure:{job.id}:{exc_type.__name__}")


@acmeq.callback
def on_stop(job: Any, connection: Any) -> None:
    _note(connection, f"stopped:{job.id}")


@acmeq.callback
def on_ok_raises(job: Any, connection: Any, result: Any) -> None:
    raise ValueError("callback refused")


def not_declared(job: Any, connection: Any, *args: Any) -> None:
    """A function no allowlist declares: acmeq must never import and call it."""
    _note(connection, f"FOREIGN:{job.id}")
