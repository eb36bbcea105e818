"""What the master reads from Redis each tick, apart from its pure decisions.

- :func:`measure`: every pool's load for the balancer (ready jobs, age of the oldest, average
  runtime, busy workers, pauses) in one round trip, through the queue probe;
- :func:`overrunning`: workers whose job overran its timeout and the grace (stuck in C code);
- :func:`drained`: whether the queues are empty (burst mode);
- :class:`RedisHealth`: whether Redis answers, logged once per change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from acmeq import keys
from acmeq.config.settings import ProfileSpec, Settings
from acmeq.master import autoscale
from acmeq.master.lifecycle import Lifecycle
from acmeq.observability import probe

log = logging.getLogger("acmeq.master")

RUNTIME_EWMA = 0.3


@dataclass
class RedisHealth:
    """Whether the master reaches Redis; logs only when that changes."""

    up_since: float | None = field(default_factory=time.monotonic)
    down_since: float | None = None

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("Redis is back after %.1f s; resuming", time.monotonic() - self.down_since)
            self.down_since, self.up_since = None, time.monotonic()

    def failed(self, what: str, exc: Exception) -> None:
        if self.down_since is None:
            log.error("Redis unreachable (%s: %s); workers keep running, retrying", what, exc)
            self.down_since, self.up_since = time.monotonic(), None

    def up_for(self) -> float:
        return 0.0 if self.up_since is None else time.monotonic() - self.up_since


@dataclass
class Runtimes:
    """Recent average seconds per job of each queue, from the workers' counters (EWMA)."""

    average: dict[str, float] = field(default_factory=dict)
    counters: dict[str, tuple[float, float]] = field(default_factory=dict)

    def update(self, queue: str, raw: Sequence[bytes | float | None]) -> None:
        processed, runtime = float(raw[0] or 0), float(raw[1] or 0)
        last = self.counters.get(queue)
        self.counters[queue] = (processed, runtime)
        if last is None or processed <= last[0]:
            return
        sample = (runtime - last[1]) / (processed - last[0])
        prev = self.average.get(queue)
        self.average[queue] = sample if prev is None else prev + RUNTIME_EWMA * (sample - prev)


def measure(
    connection: redis.Redis,
    master: str,
    profile: ProfileSpec,
    settings: Settings,
    life: Lifecycle,
    runtimes: Runtimes,
) -> dict[tuple[str, str], autoscale.QueueLoad]:
    """Every pool's load, in one round trip: the queue probe (which also reads this master's
    workers' states) and the supervisors' pause keys."""
    queues = sorted({q for s in profile.supervisors for q in s.queues})
    workers = [w.name for p in life.pools.values() for w in p.active()]
    pipe = connection.pipeline(transaction=False)
    probe.queue_reads(pipe, queues, workers)
    for sup in profile.supervisors:
        pipe.exists(keys.paused_supervisor(master, sup.name))
    replies = pipe.execute()
    seen = probe.parse(replies[0], queues, workers)
    flags = replies[1:]
    sup_paused = {s.name: bool(f) for s, f in zip(profile.supervisors, flags, strict=True)}
    busy = {name: w.state == "busy" for name, w in seen.workers.items()}
    for q in queues:
        runtimes.update(q, [seen.queues[q].processed_total, seen.queues[q].runtime_total_s])
    ready = {q: seen.queues[q].ready for q in queues}
    paused = {q: seen.queues[q].paused for q in queues}  # its own flag or rq:suspended
    oldest = {q: seen.queues[q].oldest_age_s or 0.0 for q in queues}
    specs = {s.name: s for s in profile.supervisors}
    loads = {}
    for (sup_name, q), pool in life.pools.items():
        loads[(sup_name, q)] = autoscale.QueueLoad.measured(
            specs[sup_name],
            settings.queues[q],
            ready=ready[q],
            oldest_age=oldest.get(q, 0.0),
            avg_runtime=runtimes.average.get(q, 0.0),
            busy=sum(1 for w in pool.active() if busy.get(w.name)),
            current=len(pool.active(life.generation)),
            paused=paused[q] or sup_paused[sup_name],
        )
    return loads


def overrunning(
    connection: redis.Redis, workers: Sequence[tuple[str, str]], grace: float
) -> list[str]:
    """Workers ((name, queue) pairs) running a job beyond its timeout + 60 s + ``grace``."""
    if not workers:
        return []
    pipe = connection.pipeline(transaction=False)
    for name, _queue in workers:
        pipe.smembers(keys.worker_executions(name))
    running = [
        (name, queue, composite)
        for (name, queue), composites in zip(workers, pipe.execute(), strict=True)
        for composite in composites
    ]
    if not running:
        return []
    # Every registry score in one round trip, not one ZSCORE per running job.
    pipe = connection.pipeline(transaction=False)
    for _name, queue, composite in running:
        pipe.zscore(keys.started(queue), composite)
    now = time.time()
    late = {
        name
        for (name, _q, _c), score in zip(running, pipe.execute(), strict=True)
        if score is not None and now > score + grace
    }
    return sorted(late)


def drained(connection: redis.Redis, queues: Sequence[str]) -> bool:
    """No job ready, running or scheduled on any of ``queues``."""
    pipe = connection.pipeline(transaction=False)
    for q in queues:
        pipe.llen(keys.queue(q))
        pipe.zcard(keys.started(q))
        pipe.zcard(keys.scheduled(q))
    return not any(pipe.execute())
