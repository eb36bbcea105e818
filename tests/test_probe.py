"""The queue probe: every queue's load in one round trip, as the balancer, status, alerts and
Prometheus read it. Checked on a real redis-server with keys laid out as RQ and acmeq write them."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from acmeq import keys
from acmeq.observability import probe

# Queue names no worker of another test in this pytest process could still be serving.
QUEUES = ["probe-payments", "probe-exports", "probe-bulk"]


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - seconds_ago))


def _worker(
    client: redis.Redis, name: str, queue: str, state: str | None, dead: bool = False
) -> None:
    fields = {"birth": _stamp(60)} | ({"state": state} if state else {})
    if dead:
        fields["death"] = _stamp(1)
    client.hset(keys.worker(name), mapping=fields)
    client.sadd(keys.workers_of(queue), keys.worker(name))


def test_one_round_trip_reads_counts_age_pauses_workers_and_counters(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given payments with 3 ready jobs, the oldest 120 s old, one of each registry entry, and a
    # busy, an idle and a dead worker; exports paused; cumulative counters on bulk
    redis_client.hset(keys.job("j1"), "enqueued_at", _stamp(120))
    redis_client.rpush(keys.queue("probe-payments"), "j1", "j2", "j3")
    for kind in ("scheduled", "wip", "deferred", "failed", "finished"):
        redis_client.zadd(keys.registry(kind, "probe-payments"), {f"{kind}-1": 1.0})
    _worker(redis_client, "w-busy", "probe-payments", "busy")
    _worker(redis_client, "w-idle", "probe-payments", None)
    _worker(redis_client, "w-dead", "probe-payments", "busy", dead=True)
    redis_client.set(keys.paused_queue("probe-exports"), "1")
    redis_client.hset(
        keys.stats("probe-bulk"), mapping={"processed": 7, "failed": 2, "runtime": 3.5}
    )
    trips: list[int] = []
    real = redis.client.Pipeline.execute

    def counting(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        trips.append(len(self.command_stack))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)

    # When the probe reads the three queues and two named workers
    seen = probe.read(redis_client, QUEUES, workers=["w-busy", "w-gone"])

    # Then it took one round trip of one command
    assert trips == [1]
    p, e, b = (seen.queues[q] for q in QUEUES)
    assert (p.ready, p.scheduled, p.started, p.deferred, p.failed, p.finished) == (3, 1, 1, 1, 1, 1)
    assert p.oldest_age_s is not None and 119 <= p.oldest_age_s < 180
    assert (p.workers_busy, p.workers_total) == (1, 2)  # the dead worker does not count
    assert (p.paused, e.paused, e.paused_flag) == (False, True, True)
    assert (e.ready, e.oldest_age_s) == (0, None)
    assert (b.processed_total, b.failed_total, b.runtime_total_s, b.done_total) == (7, 2, 3.5, 9)
    assert seen.workers["w-busy"] == probe.WorkerState("busy", True)
    assert seen.workers["w-gone"] == probe.WorkerState("", False)


def test_rq_suspension_pauses_every_queue(redis_client: redis.Redis) -> None:
    # Given `rq suspend` (no pause flag of acmeq's own)
    redis_client.set(keys.SUSPENDED, "1")
    # Then every queue reads as paused, and says why
    seen = probe.read(redis_client, QUEUES)
    assert seen.suspended
    assert all(q.paused and q.suspended and not q.paused_flag for q in seen.queues.values())


def test_an_unreadable_enqueue_time_gives_no_age() -> None:
    assert probe.age(b"not a time", time.time()) is None
    assert probe.age(None, time.time()) is None
    assert probe.age("2026-01-01T00:00:00", 1767225600.0 + 5) == pytest.approx(5.0)
