"""Recovery and maintenance the master runs for every queue it serves.

RQ cleans abandoned jobs only during a worker's maintenance (every 600 s by default) and fails
jobs stuck in the intermediate list; acmeq's master does it every few seconds and, because it is
the parent of its workers, recovers a crashed worker's jobs the moment it reaps the process:

- :func:`recover_dead_worker`: a worker died (kill -9, OOM, segfault): each job it had started is
  retried per its queue's tries (with the queue's backoff) or failed, and the worker is
  deregistered from RQ's worker registry;
- :func:`maintain_queue`: RQ's StartedJobRegistry cleanup (abandoned jobs of workers on other
  hosts, found by their expired heartbeat), and ids left in ``<queue>:intermediate`` by a worker
  that died between its BLMOVE and its start script are put back at the head of the queue;
- :class:`Scheduler`: moves due jobs from RQ's ScheduledJobRegistry (delayed retries,
  ``enqueue_at``/``enqueue_in``) onto their queues, under RQ's per-queue scheduler lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from rq.utils import now

from acmeq.config.settings import Settings
from acmeq.constants import KEY_PREFIX
from acmeq.observability import metrics
from acmeq.ops import failure_log as failures
from acmeq.queues import AcmeqJob
from acmeq.storage.redis_client import text
from acmeq.worker.fastpath import STATS_KEY

log = logging.getLogger("acmeq.worker.recovery")

# An id that sits in the intermediate list this long without being started is stuck (a worker
# moves it out within milliseconds).
INTERMEDIATE_STUCK_S = 10.0
_SEEN_KEY = KEY_PREFIX + "intermediate-seen:{queue}"


def _queue(name: str, connection: redis.Redis) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer, job_class=AcmeqJob)


def recover_dead_worker(
    connection: redis.Redis,
    worker_name: str,
    queue_name: str,
    reason: str,
    settings: Settings | None = None,
) -> list[str]:
    """Retry or fail every job the dead worker had started; return their ids.

    With ``settings``, jobs failed for good are also recorded in SQL (``failed_jobs``). Their
    progress records (jobs that track progress) end too: failed, or pending when retried; the
    database is the one of ``settings`` (default: this process's settings).
    """
    executions_key = f"rq:worker:{worker_name}:executions"
    composites = [text(c) for c in connection.smembers(executions_key)]
    queue = _queue(queue_name, connection)
    recovered: list[str] = []
    retried: list[str] = []
    failed_for_good: list[tuple[AcmeqJob, str]] = []
    for composite in composites:
        job_id, _, exec_id = composite.rpartition(":")
        try:
            job = AcmeqJob.fetch(job_id, connection=connection)
        except NoSuchJobError:
            job = None
        with connection.pipeline() as pipe:
            pipe.zrem(queue.started_job_registry.key, composite)
            pipe.delete(f"rq:execution:{composite}")
            pipe.zrem(f"rq:executions:{job_id}", exec_id)
            if job is not None and job.get_status(refresh=False) == JobStatus.STARTED:
                job.ended_at = now()
                exc_string = f"AbandonedJobError: {reason}"
                if job.retries_left and job.retries_left > 0:
                    job.retry(queue, pipe)
                    retried.append(job_id)
                else:
                    record_job_failure(job, exc_string, pipe)
                    failed_for_good.append((job, exc_string))
                pipe.hincrby(STATS_KEY.format(queue=queue_name), "failed", 1)
                ran = (job.ended_at - job.started_at).total_seconds() if job.started_at else 0.0
                metrics.record_failure(pipe, time.time(), queue_name, job.description or "?", ran)
                recovered.append(job_id)
            pipe.execute()
    deregister_worker(connection, worker_name, queue_name)
    if settings is not None:
        for job, exc_string in failed_for_good:
            failures.record_permanent(settings, job, exc_string)
    if recovered:
        _end_progress(connection, recovered, retried, reason, settings)
        log.warning(
            "worker %s died (%s): recovered %d job(s): %s",
            worker_name,
            reason,
            len(recovered),
            ", ".join(recovered),
        )
    return recovered


def _end_progress(
    connection: redis.Redis,
    job_ids: list[str],
    retried: list[str],
    reason: str,
    settings: Settings | None,
) -> None:
    # Progress is a report: a database that is down or not migrated must never stop the Redis
    # side of recovery, which is what keeps jobs from being lost.
    try:
        from acmeq.progress import mark_abandoned

        mark_abandoned(settings, job_ids, reason, retrying=retried, connection=connection)
    except Exception as exc:
        log.warning("cannot mark the progress of %s as abandoned: %s", ", ".join(job_ids), exc)


def deregister_worker(connection: redis.Redis, worker_name: str, queue_name: str) -> None:
    """Remove a dead worker from RQ's worker registry (what its register_death would do)."""
    key = f"rq:worker:{worker_name}"
    with connection.pipeline() as pipe:
        pipe.srem("rq:workers", key)
        pipe.srem(f"rq:workers:{queue_name}", key)
        pipe.hset(key, "death", now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        pipe.expire(key, 60)
        pipe.delete(f"{key}:executions")
        pipe.execute()


def maintain_queue(connection: redis.Redis, queue_name: str) -> None:
    """Clean abandoned jobs (expired heartbeats) and recover ids stuck in the intermediate list."""
    queue = _queue(queue_name, connection)
    StartedJobRegistry(
        queue_name, connection=connection, job_class=AcmeqJob, serializer=JSONSerializer
    ).cleanup()
    stuck = [text(j) for j in connection.lrange(queue.intermediate_queue_key, 0, -1)]
    seen_key = _SEEN_KEY.format(queue=queue_name)
    if not stuck:
        connection.delete(seen_key)
        return
    stamp = time.time()
    first_seen = dict(zip(stuck, connection.hmget(seen_key, stuck), strict=True))
    pipe = connection.pipeline()
    for job_id, seen in first_seen.items():
        if seen is None:
            pipe.hset(seen_key, job_id, stamp)
        elif stamp - float(seen) > INTERMEDIATE_STUCK_S:
            # Put it back at the head: it was next in line when its worker died.
            pipe.lrem(queue.intermediate_queue_key, 1, job_id)
            pipe.lpush(queue.key, job_id)
            pipe.hdel(seen_key, job_id)
            log.warning(
                "job %s was stuck in %s: put back on the queue",
                job_id,
                queue.intermediate_queue_key,
            )
    pipe.expire(seen_key, 3600)
    pipe.execute()


class Scheduler:
    """Enqueues due scheduled jobs of the given queues (RQ's scheduler, run in-process)."""

    def __init__(self, queues: Iterable[str], connection: redis.Redis, name: str) -> None:
        self._rq = RQScheduler(
            list(queues), connection=connection, serializer=JSONSerializer, name=name
        )
        self._rq._connection = connection  # type: ignore[assignment]
        self._locked_at = 0.0

    def tick(self) -> None:
        # Locks are refreshed every 30 s; RQ's lock TTL is interval + 60 s.
        if time.monotonic() - self._locked_at > 30:
            self._rq.acquire_locks()
            self._locked_at = time.monotonic()
        if self._rq.acquired_locks:
            self._rq.enqueue_scheduled_jobs()

    def stop(self) -> None:
        if self._rq.acquired_locks:
            self._rq.release_locks()
