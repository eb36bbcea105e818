"""Job metrics in Redis as time buckets: the write side.

Each finished job adds to one hash per minute (``acmeq:metrics:m:<epoch minute>``) and one per
hour (``acmeq:metrics:h:<epoch hour>``); both expire by themselves after the retention of their
resolution (default: minutes for a day, hours for a month), which is the whole of "trimming".
Successes and failures are summed in each worker and written about once a second by one piece of
code (:mod:`acmeq.worker.metrics_buffer`, ``lua/metrics_flush.lua``); this module keeps the key
layout and the bucket labels. Fields, per queue ``Q`` and per job
function ``job:NAME``::

    Q|processed  Q|failed  Q|runtime (sum s)  Q|max (s)  Q|wait (sum s)
    Q|rt|<bucket>  Q|wt|<bucket>            runtime / wait histograms (bucket = upper bound, ms)
    job:NAME|processed ... the same for one job function

Percentiles are read from the histograms (:mod:`acmeq.observability.metrics_report`), so p50/p95
cost no per-job
list and no scan.
"""

from __future__ import annotations

import bisect
from typing import Any

from acmeq import keys

DEFAULT_MINUTE_RETENTION_S = 24 * 3600
DEFAULT_HOUR_RETENTION_S = 30 * 24 * 3600

# Histogram upper bounds in milliseconds ("inf" last): wide enough for 1-ms webhooks and 30-min
# maintenance jobs, few enough that a minute hash stays small.
BOUNDS_MS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    900000,
    1800000,
    3600000,
)
BUCKET_LABELS: tuple[str, ...] = (*(f"{b:g}" for b in BOUNDS_MS), "inf")


def bucket(seconds: float) -> str:
    """The histogram bucket label of a duration."""
    return BUCKET_LABELS[bisect.bisect_left(BOUNDS_MS, seconds * 1000.0)]


def keys_for(ts: float) -> tuple[str, str]:
    """The minute and hour hash keys a job finishing at ``ts`` counts in."""
    return (
        keys.metrics_minute(int(ts // 60) * 60),
        keys.metrics_hour(int(ts // 3600) * 3600),
    )


def finish_args(
    ts: float,
    job_name: str,
    runtime: float,
    wait: float,
    minute_retention: int,
    hour_retention: int,
) -> list[Any]:
    """The arguments the finish script needs to record one success."""
    minute, hour = keys_for(ts)
    return [
        job_name,
        bucket(runtime),
        repr(max(wait, 0.0)),
        bucket(max(wait, 0.0)),
        minute,
        hour,
        minute_retention + 60,
        hour_retention + 3600,
    ]


# Appended to the finish script of acmeq.worker.fastpath: ARGV offsets are passed in by the caller.
LUA_RECORD = r"""
local function record(q, job, wt, rtb, wait, wtb, mkey, hkey, mttl, httl)
  for _, key in ipairs({mkey, hkey}) do
    for _, p in ipairs({q, 'job:' .. job}) do
      redis.call('HINCRBY', key, p .. '|processed', 1)
      redis.call('HINCRBYFLOAT', key, p .. '|runtime', wt)
      redis.call('HINCRBYFLOAT', key, p .. '|wait', wait)
      redis.call('HINCRBY', key, p .. '|rt|' .. rtb, 1)
      local cur = tonumber(redis.call('HGET', key, p .. '|max') or '0')
      if tonumber(wt) > cur then redis.call('HSET', key, p .. '|max', wt) end
    end
    redis.call('HINCRBY', key, q .. '|wt|' .. wtb, 1)
  end
  redis.call('EXPIRE', mkey, mttl)
  redis.call('EXPIRE', hkey, httl)
end
"""


def record_failure(
    pipe: Any,
    ts: float,
    queue: str,
    job_name: str,
    runtime: float,
    minute_retention: int = DEFAULT_MINUTE_RETENTION_S,
    hour_retention: int = DEFAULT_HOUR_RETENTION_S,
) -> None:
    """Count a failed run (on a pipeline): failed, and its runtime in the histogram."""
    minute, hour = keys_for(ts)
    label = bucket(max(runtime, 0.0))
    for key, ttl in ((minute, minute_retention + 60), (hour, hour_retention + 3600)):
        for prefix in (queue, f"job:{job_name}"):
            pipe.hincrby(key, f"{prefix}|failed", 1)
            pipe.hincrby(key, f"{prefix}|rt|{label}", 1)
            pipe.hincrbyfloat(key, f"{prefix}|runtime", max(runtime, 0.0))
        pipe.expire(key, ttl)
