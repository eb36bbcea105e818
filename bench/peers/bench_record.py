"""What every benchmark job records, identically for acmeq, RQ, Celery and Dramatiq.

The job bodies of all systems call these functions, so the measurement costs every system the
same: one Redis round trip (one EVALSHA) per measured job. The harness (bench/throughput.py)
passes the Redis URL, with the database of the system under test, in ``BENCH_REDIS_URL``.

Keys (all under ``bench:``, apart from any system's own keys):

- ``bench:first`` / ``bench:last``: the earliest job start and the latest job end (time.time());
- ``bench:done``: how many measured jobs have finished;
- ``bench:procs:<round>`` / ``bench:warm:<round>``: ``pid:ppid`` of the processes that ran
  warm-up jobs of that round, and how many of them finished;
- ``bench:latency``: enqueue-to-start delays (seconds) of latency probes.
"""

from __future__ import annotations

import os
import threading
import time

import redis
from redis.commands.core import Script

PEER_QUEUE = "bench"  # the queue of the RQ, Celery and Dramatiq jobs (acmeq: bench_jobs.QUEUE)
FIRST_KEY = "bench:first"
LAST_KEY = "bench:last"
DONE_KEY = "bench:done"
PROCS_KEY = "bench:procs:{round}"
WARM_KEY = "bench:warm:{round}"
LATENCY_KEY = "bench:latency"

_RECORD_LUA = """
local first = redis.call('GET', KEYS[1])
if (not first) or tonumber(ARGV[1]) < tonumber(first) then redis.call('SET', KEYS[1], ARGV[1]) end
local last = redis.call('GET', KEYS[2])
if (not last) or tonumber(ARGV[2]) > tonumber(last) then redis.call('SET', KEYS[2], ARGV[2]) end
return redis.call('INCR', KEYS[3])
"""

_client: redis.Redis | None = None
_client_pid = 0
_record: Script | None = None
_lock = threading.Lock()


def client() -> redis.Redis:
    """This process's client (a forked child opens its own, as redis-py requires).

    Shared by the job threads of a process (redis-py clients are thread-safe); the lock makes
    sure only one is ever created per process, so none is closed under another thread.
    """
    global _client, _client_pid, _record
    if _client is not None and _client_pid == os.getpid():
        return _client
    with _lock:
        if _client is not None and _client_pid == os.getpid():
            return _client
        # No CLIENT SETINFO / HELLO handshake: a job forked per run (RQ's default worker,
        # acmeq's fork mode) connects for every job, and the handshake would triple that cost.
        _client = redis.Redis.from_url(
            os.environ["BENCH_REDIS_URL"], protocol=2, lib_name=None, lib_version=None
        )
        _record = _client.register_script(_RECORD_LUA)
        _client_pid = os.getpid()
        return _client


def record(started: float) -> None:
    """Count one finished job and widen the [first start, last end] window."""
    client()
    assert _record is not None
    _record(keys=[FIRST_KEY, LAST_KEY, DONE_KEY], args=[repr(started), repr(time.time())])


def noop() -> None:
    """The noop job body: nothing but the measurement."""
    record(time.time())


def sleep(seconds: float) -> None:
    """The sleep job body: ``time.sleep(seconds)`` plus the measurement."""
    started = time.time()
    time.sleep(seconds)
    record(started)


def warm(round_no: int, seconds: float) -> None:
    """A warm-up job: sleep a little, then say which process ran it."""
    time.sleep(seconds)
    pipe = client().pipeline(transaction=False)
    pipe.sadd(PROCS_KEY.format(round=round_no), f"{os.getpid()}:{os.getppid()}")
    pipe.incr(WARM_KEY.format(round=round_no))
    pipe.execute()


def probe(sent: float) -> None:
    """A latency probe: how long since the harness enqueued it (``sent`` is its time.time())."""
    delay = time.time() - sent
    client().rpush(LATENCY_KEY, repr(delay))
