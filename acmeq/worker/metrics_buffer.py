"""Job metrics, aggregated in the worker and written once a second: the one place where both
successes and failures are counted.

Each finished run (success or failure) is added to in-memory sums keyed like the metric hashes
of :mod:`acmeq.observability.metrics` (per minute and per hour bucket, per queue and per job
function) and to the queue's stats hash (``acmeq:stats:<queue>``, read by the balancer and
``acmeq status``). :meth:`MetricsBuffer.flush` writes everything in one script call
(``lua/metrics_flush.lua``); the worker flushes about once a second and when it stops, so a
worker killed with SIGKILL loses at most its last second of metrics (never a job's state,
which the fast path writes at once).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from acmeq import keys
from acmeq.observability.metrics import (
    DEFAULT_HOUR_RETENTION_S,
    DEFAULT_MINUTE_RETENTION_S,
    bucket,
    keys_for,
)
from acmeq.worker import lua_scripts

# Per-queue counters the balancer and `acmeq status` read: processed, failed, runtime seconds.

FLUSH_EVERY_S = 1.0


@dataclass
class _Hash:
    ttl: int = 0
    incr: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    max: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        # cjson decodes an empty JSON object as an empty table, which `pairs` accepts.
        return {"ttl": self.ttl, "incr": self.incr, "float": self.sums, "max": self.max}


@dataclass(frozen=True)
class FlushArgs:
    """ARGV of ``lua/metrics_flush.lua`` (KEYS are the hashes, in the order of ``updates``)."""

    updates: str


class MetricsBuffer:
    """Thread-safe sums of job metrics, written with :meth:`flush`."""

    def __init__(
        self,
        minute_retention: int = DEFAULT_MINUTE_RETENTION_S,
        hour_retention: int = DEFAULT_HOUR_RETENTION_S,
    ) -> None:
        self.minute_ttl = minute_retention + 60
        self.hour_ttl = hour_retention + 3600
        self._lock = threading.Lock()
        self._hashes: dict[str, _Hash] = {}

    def _hash(self, key: str, ttl: int) -> _Hash:
        h = self._hashes.get(key)
        if h is None:
            h = self._hashes[key] = _Hash(ttl)
        return h

    def record(
        self,
        ts: float,
        queue: str,
        job_name: str,
        runtime: float,
        wait: float | None = None,
        ok: bool = True,
    ) -> None:
        """Count one run that ended at ``ts``: a success (with its wait) or a failure."""
        runtime = max(runtime, 0.0)
        label = bucket(runtime)
        minute, hour = keys_for(ts)
        with self._lock:
            for key, ttl in ((minute, self.minute_ttl), (hour, self.hour_ttl)):
                h = self._hash(key, ttl)
                for prefix in (queue, f"job:{job_name or '?'}"):
                    h.incr[f"{prefix}|{'processed' if ok else 'failed'}"] += 1
                    h.incr[f"{prefix}|rt|{label}"] += 1
                    h.sums[f"{prefix}|runtime"] += runtime
                    if ok:
                        h.sums[f"{prefix}|wait"] += max(wait or 0.0, 0.0)
                        name = f"{prefix}|max"
                        h.max[name] = max(h.max.get(name, 0.0), runtime)
                if ok:
                    h.incr[f"{queue}|wt|{bucket(max(wait or 0.0, 0.0))}"] += 1
            stats = self._hash(keys.stats(queue), 0)
            stats.incr["processed" if ok else "failed"] += 1
            if ok:
                stats.sums["runtime"] += runtime

    def pending(self) -> bool:
        with self._lock:
            return bool(self._hashes)

    def flush(self, connection: redis.Redis) -> None:
        """Write the sums (one round trip) and start over; on a Redis error they are kept and
        written by the next flush."""
        with self._lock:
            hashes, self._hashes = self._hashes, {}
        if not hashes:
            return
        keys = list(hashes)
        args = FlushArgs(json.dumps([hashes[k].as_json() for k in keys]))
        try:
            connection.register_script(lua_scripts.source("metrics_flush"))(
                keys=keys, args=lua_scripts.argv(args)
            )
        except redis.RedisError:
            with self._lock:
                for key, h in hashes.items():
                    self._merge(key, h)
            raise

    def _merge(self, key: str, old: _Hash) -> None:
        h = self._hash(key, old.ttl)
        for name, n in old.incr.items():
            h.incr[name] += n
        for name, x in old.sums.items():
            h.sums[name] += x
        for name, x in old.max.items():
            h.max[name] = max(h.max.get(name, 0.0), x)
