"""Whether any worker serves a queue right now (`acmeq enqueue --watch` says when none does)."""

from __future__ import annotations

import redis

from acmeq import keys


def live_workers(connection: redis.Redis, queue: str) -> int:
    """Workers registered for ``queue`` whose RQ worker hash still exists.

    A worker killed with SIGKILL leaves its name in ``rq:workers:<queue>`` until someone cleans
    up; its hash expires with its heartbeat, so counting only names with a hash leaves it out.
    """
    names = list(connection.smembers(keys.workers_of(queue)))
    if not names:
        return 0
    pipe = connection.pipeline(transaction=False)
    for name in names:
        raw = name.decode() if isinstance(name, bytes) else str(name)
        # Members are worker keys ("rq:worker:<name>"), as RQ writes them.
        pipe.exists(raw if raw.startswith(keys.WORKER_PREFIX) else keys.worker(raw))
    return sum(1 for alive in pipe.execute() if alive)
