"""Queue control: counts with the paused flag, pause/resume, clearing a queue's waiting jobs.

Pauses are the keys `acmeq worker pause --queue` sets (``acmeq:paused:queue:<q>``), read by
every worker before it takes a job; clearing deletes what RQ's ``Queue.empty`` deletes.
"""

from __future__ import annotations

from typing import Any

import redis

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.master import control
from acmeq.queues import queue_counts, queue_spec

CLEAR_CHUNK = 1000  # queued jobs deleted per Lua call: Redis is never blocked for long


def queue_overview(settings: Settings, connection: redis.Redis) -> list[dict[str, Any]]:
    """The catalog with job counts and whether each queue is paused (one round trip)."""
    return queue_counts(settings, connection)


def pause_queue(settings: Settings, connection: redis.Redis, queue: str, paused: bool) -> str:
    """Pause or resume a queue cluster-wide (the keys `acmeq worker pause --queue` sets)."""
    name = queue_spec(settings, queue).name
    control.set_paused(connection, paused, [name])
    return name


# Pops up to ARGV[1] ids and deletes what RQ's Queue.empty deletes, plus the dependencies set
# (keys.job, keys.dependents, keys.dependencies, keys.results).
_CLEAR = """
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then return 0 end
for _, id in ipairs(ids) do
  local key = 'rq:job:' .. id
  redis.call('DEL', key, key .. ':dependents', key .. ':dependencies', 'rq:results:' .. id)
end
return #ids
"""


def clear_queue(settings: Settings, connection: redis.Redis, queue: str, dry_run: bool) -> int:
    """Delete the jobs waiting in a queue (what ``rq empty`` does); return how many.

    Only the waiting list: running, scheduled (delayed retries) and failed jobs are not touched.
    Deletes in chunks of :data:`CLEAR_CHUNK` so a large queue never blocks Redis for long.
    """
    key = keys.queue(queue_spec(settings, queue).name)
    if dry_run:
        return int(connection.llen(key))
    script = connection.register_script(_CLEAR)
    total = 0
    while True:
        popped = int(script(keys=[key], args=[CLEAR_CHUNK]))
        total += popped
        if popped < CLEAR_CHUNK:
            return total
