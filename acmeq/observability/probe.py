"""The one queue probe: every queue's load in one consistent read.

:func:`read` runs ``probe.lua`` (one ``EVAL``, so one round trip for all queues, and a consistent
snapshot since a script runs atomically) and returns a :class:`QueueSnapshot` per queue: ready,
scheduled, started, deferred, failed and finished counts, the oldest ready job's age, the pause
(the queue's own flag and RQ's ``rq:suspended``), busy and live workers, and the cumulative
counters of ``acmeq:stats:<queue>``. :func:`queue_reads` puts the same call into a caller's
pipeline, so `acmeq status` reads the probe together with its other keys.

Used by the master's balancer, `acmeq status`, the alert rules and Prometheus, so they can no
longer disagree about a queue. Only counts and bounded reads: never ``KEYS``/``SCAN`` and never a
read per job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import redis

from acmeq.storage.redis_client import text
from acmeq.timeparse import rq_time


@cache
def _script() -> str:
    return Path(__file__).with_name("probe.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class QueueSnapshot:
    """One queue at one moment."""

    name: str
    ready: int
    scheduled: int
    started: int
    deferred: int
    failed: int  # in RQ's failed registry
    finished: int
    oldest_age_s: float | None  # age of the oldest ready job; None when none (or unreadable)
    paused_flag: bool  # acmeq:paused:queue:<name>
    suspended: bool  # rq:suspended: every RQ worker stops taking jobs
    workers_busy: int
    workers_total: int  # live RQ workers registered for the queue
    processed_total: int  # successful runs ever (acmeq:stats:<queue>)
    failed_total: int  # failed runs ever
    runtime_total_s: float  # seconds of all successful runs

    @property
    def paused(self) -> bool:
        """No worker takes a job from this queue: its own pause or RQ's suspension."""
        return self.paused_flag or self.suspended

    @property
    def done_total(self) -> int:
        """Runs that ended, successful or not (the dead-man clock's counter)."""
        return self.processed_total + self.failed_total


@dataclass(frozen=True)
class WorkerState:
    state: str  # "" when the worker never reported one (idle until its first job)
    alive: bool  # registered (birth) and not dead


@dataclass(frozen=True)
class Probe:
    taken_at: float
    suspended: bool
    queues: dict[str, QueueSnapshot]
    workers: dict[str, WorkerState]  # only the workers asked for


def queue_reads(
    pipe: redis.client.Pipeline, queues: Sequence[str], workers: Sequence[str] = ()
) -> None:
    """Add the probe to ``pipe`` (one command); parse its reply with :func:`parse`."""
    pipe.eval(_script(), 0, len(queues), *queues, *workers)


def parse(
    reply: Any, queues: Sequence[str], workers: Sequence[str] = (), now: float | None = None
) -> Probe:
    now = time.time() if now is None else now
    suspended_raw, rows, states = reply
    suspended = bool(suspended_raw)
    loads = {}
    for name, row in zip(queues, rows, strict=True):
        ready, scheduled, started, deferred, failed, finished = (int(n) for n in row[:6])
        loads[name] = QueueSnapshot(
            name=name,
            ready=ready,
            scheduled=scheduled,
            started=started,
            deferred=deferred,
            failed=failed,
            finished=finished,
            oldest_age_s=age(row[6], now),
            paused_flag=bool(row[7]),
            suspended=suspended,
            workers_busy=int(row[8]),
            workers_total=int(row[9]),
            processed_total=int(float(row[10] or 0)),
            failed_total=int(float(row[11] or 0)),
            runtime_total_s=float(row[12] or 0),
        )
    worker_states = {
        w: WorkerState(text(state) if state else "", bool(alive))
        for w, (state, alive) in zip(workers, states, strict=True)
    }
    return Probe(now, suspended, loads, worker_states)


def read(
    connection: redis.Redis,
    queues: Sequence[str],
    workers: Sequence[str] = (),
    now: float | None = None,
) -> Probe:
    """Every queue's load (and the asked workers' states) in one round trip."""
    pipe = connection.pipeline(transaction=False)
    queue_reads(pipe, queues, workers)
    [reply] = pipe.execute()
    return parse(reply, queues, workers, now)


def timestamp(stamp: bytes | str | None) -> float | None:
    """Epoch seconds of an RQ timestamp (``2026-05-01T10:00:00.123456Z``); None when unreadable."""
    when = rq_time(stamp)
    return None if when is None else when.timestamp()


def age(stamp: bytes | str | None, now: float) -> float | None:
    """Seconds since an RQ timestamp; None when unreadable."""
    when = timestamp(stamp)
    return None if when is None else max(now - when, 0.0)
