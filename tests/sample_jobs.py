"""Jobs the tests declare the way a platform team would (`[jobs] modules`)."""

from __future__ import annotations

import time
from typing import Any

import acmeq


@acmeq.job(queue="notifications")
def noop() -> None:
    """Do nothing (throughput tests)."""


@acmeq.job(queue="payments")
def add(a: int, b: int) -> int:
    """Return a + b (argument passing)."""
    return a + b


@acmeq.job(queue="reports")
def sleep_for(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    time.sleep(seconds)
    return seconds


@acmeq.job(queue="exports")
def fail(message: str = "boom") -> None:
    """Always raise (failure handling)."""
    raise RuntimeError(message)


@acmeq.job(queue="bulk")
def echo(**kwargs: Any) -> dict[str, Any]:
    """Return the keyword arguments it was given."""
    return kwargs


# -- jobs for the worker-process tests (tests/test_worker.py) ----------------------------------

_LEAKED: list[bytes] = []  # what leak_to keeps alive after it returns


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


def _sleep_in_steps(seconds: float) -> None:
    # Short steps: a thread blocked in one long time.sleep only sees an asynchronous exception
    # (timeout, fast stop) once that sleep returns.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)


@acmeq.job(queue="bulk")
def nap(seconds: float) -> float:
    """Sleep in short steps on a queue with one try, then return the seconds slept."""
    _sleep_in_steps(seconds)
    return seconds


@acmeq.job(queue="reports")
def long_report(seconds: float) -> float:
    """Sleep in short steps on a queue with three tries, then return the seconds slept."""
    _sleep_in_steps(seconds)
    return seconds


@acmeq.job(queue="bulk")
def explode(message: str = "kaboom") -> None:
    """Always raise, on a queue with one try (failed for good at once)."""
    raise ValueError(message)


@acmeq.job(queue="reports")
def hog(mb: int, hold: float = 0.0) -> int:
    """Allocate ``mb`` megabytes (every page touched), hold them ``hold`` seconds, return mb."""
    block = b"\x01" * (mb * 1024 * 1024)
    _sleep_in_steps(hold)
    return len(block) // (1024 * 1024)


@acmeq.job(queue="reports")
def leak_to(rss_mb: int) -> float:
    """Grow this process's resident memory to ``rss_mb`` and keep it after returning (a leak)."""
    while _rss_mb() < rss_mb:
        _LEAKED.append(b"\x01" * (1024 * 1024))
    return round(_rss_mb(), 1)


# -- jobs for the supervisor tests (tests/test_supervisor.py) ----------------------------------


@acmeq.job(queue="exports")
def fail_counting(key: str) -> None:
    """Record this attempt in Redis (list ``test:attempts:<key>``), then raise (exports retries)."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    job.connection.rpush(f"test:attempts:{key}", str(time.time()))
    raise RuntimeError(f"attempt failed on purpose ({key})")


def _tally(key: str, seconds: float) -> float:
    # Record that a run started and, once it slept ``seconds``, that it completed: how many
    # times a job's body ran to its end, whoever ran it.
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    job.connection.rpush(f"test:started:{key}", str(time.time()))
    _sleep_in_steps(seconds)
    job.connection.rpush(f"test:completed:{key}", str(time.time()))
    return seconds


@acmeq.job(queue="reports")
def tally_report(key: str, seconds: float) -> float:
    """Sleep on reports (3 tries), recording each start and completion (``test:*:<key>``)."""
    return _tally(key, seconds)


@acmeq.job(queue="bulk")
def tally_bulk(key: str, seconds: float) -> float:
    """Sleep on bulk (1 try), recording each start and completion (``test:*:<key>``)."""
    return _tally(key, seconds)
