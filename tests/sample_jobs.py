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


# -- jobs that report progress (tests/test_progress.py) -----------------------------------------


@acmeq.job(queue="bulk")
def progress_count(n: int, delay: float = 0.0, fail_every: int = 0, user_id: int = 0) -> int:
    """Track ``n`` items, sleeping ``delay`` per item; every ``fail_every``-th item fails (bulk)."""
    from acmeq.progress import track

    with track(total=n, user_id=user_id or None, meta={"n": n}) as p:
        p.message("counting")
        for i in range(1, n + 1):
            if delay:
                time.sleep(delay)
            if fail_every and i % fail_every == 0:
                p.fail_item(f"item {i} is odd one out")
            else:
                p.advance()
        p.message("counted")
    return p.processed


@acmeq.job(queue="bulk")
def progress_batches(n: int, size: int, delay: float = 0.0) -> int:
    """Track ``n`` items in batches of ``size`` (total taken from the list), sleeping per batch."""
    from acmeq.progress import track

    with track() as p:
        for _batch in p.batches(list(range(n)), size):
            time.sleep(delay)
    return p.processed


@acmeq.job(queue="reports")
def progress_cancellable(key: str, n: int, delay: float) -> int:
    """On reports (3 tries): write partial output (``test:partial:<key>``) item by item; on
    cancellation remove it and record the cleanup (``test:cleanup:<key>``)."""
    from rq import get_current_job

    from acmeq.progress import JobCancelled, track

    job = get_current_job()
    assert job is not None
    redis = job.connection
    redis.rpush(f"test:runs:{key}", str(time.time()))
    with track(total=n) as p:
        try:
            for i in range(n):
                redis.rpush(f"test:partial:{key}", i)
                time.sleep(delay)
                p.advance()
        except JobCancelled:
            redis.delete(f"test:partial:{key}")
            redis.set(f"test:cleanup:{key}", p.processed)
            raise
    return p.processed


@acmeq.job(queue="reports")
def progress_stuck(key: str) -> None:
    """On reports (3 tries): report once, then compute forever without reaching a checkpoint."""
    from rq import get_current_job

    from acmeq.progress import track

    job = get_current_job()
    assert job is not None
    job.connection.rpush(f"test:runs:{key}", str(time.time()))
    with track(total=10) as p:
        p.advance()
        while True:  # pure Python: a forced stop lands between two bytecodes
            sum(range(1000))


@acmeq.job(queue="bulk")
def progress_gated(key: str, n: int, stop_at: int) -> int:
    """Track ``n`` items; after ``stop_at`` wait (at most 60 s, at checkpoints) until the test
    sets ``test:gate:<key>``: a watcher is sure to see the job running part-way (bulk)."""
    from rq import get_current_job

    from acmeq.progress import track

    job = get_current_job()
    assert job is not None
    with track(total=n) as p:
        p.advance(stop_at)
        deadline = time.monotonic() + 60
        while not job.connection.exists(f"test:gate:{key}") and time.monotonic() < deadline:
            time.sleep(0.05)
            p.checkpoint()  # reports the progress so far once it is due
        p.advance(n - stop_at)
    return p.processed


@acmeq.job(queue="bulk")
def progress_then_fail(n: int, message: str = "ledger mismatch") -> None:
    """Track ``n`` items, then raise (bulk: no retry)."""
    from acmeq.progress import track

    with track(total=2 * n) as p:
        for _ in range(n):
            p.advance()
        raise RuntimeError(message)


@acmeq.job(queue="exports")
def progress_fail_with_retry(n: int) -> None:
    """Track ``n`` items, then raise, on exports (2 tries): a retry is scheduled."""
    from acmeq.progress import track

    with track(total=n) as p:
        p.advance(n)
        raise RuntimeError("temporary outage")


# -- jobs for the failed-job tests (tests/test_failed.py) --------------------------------------


@acmeq.job(queue="payments")
def decline(donation_id: int, donor_email: str, **details: Any) -> None:
    """Always raise, naming the donor's e-mail (failed-job tests: personal data is masked)."""
    raise RuntimeError(f"card declined for donation {donation_id} ({donor_email})")
