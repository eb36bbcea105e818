"""Recovery and maintenance the master runs for every queue it serves.

RQ cleans abandoned jobs only during a worker's maintenance (every 600 s by default) and fails
jobs stuck in the intermediate list; acmeq's master does it every few seconds and, because it is
the parent of its workers, recovers a crashed worker's jobs the moment it reaps the process:

- :func:`recover_dead_worker`: a worker died (kill -9, OOM, segfault): each job it had started is
  retried per its queue's tries (with the queue's backoff) or failed, and the worker is
  deregistered from RQ's worker registry;
- :func:`maintain_queue`: RQ's ``clean_registries`` (abandoned started jobs of workers on other
  hosts, expired entries, stranded dependents, groups), and ids left in ``<queue>:intermediate``
  by a worker that died between its BLMOVE and its start script are put back at the head of
  the queue;
- :func:`recover_lost_workers`: jobs whose worker stopped heartbeating (it died with its master,
  or its host died) are recovered about a minute later, whatever the job's timeout.

The scheduler the master runs is in :mod:`acmeq.master.scheduler`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Iterable

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.group import Group
from rq.job import JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker_registration import clean_worker_registry

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.ops import failure_log as failures
from acmeq.queues import AcmeqJob
from acmeq.storage.redis_client import text
from acmeq.worker.hooks import job_name
from acmeq.worker.metrics_buffer import MetricsBuffer

log = logging.getLogger("acmeq.worker.recovery")

# An id that sits in the intermediate list this long without being started is stuck (a worker
# moves it out within milliseconds).
INTERMEDIATE_STUCK_S = 10.0
GROUP_CLEAN_EVERY_S = 30  # group registries are shared by every queue: one pass per 30 s


def _queue(name: str, connection: redis.Redis) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer, job_class=AcmeqJob)


def recover_dead_worker(
    connection: redis.Redis,
    worker_name: str,
    queue_name: str,
    reason: str,
    settings: Settings | None = None,
    composites: Iterable[str] = (),
    *,
    alive: bool = False,
) -> list[str]:
    """Retry or fail every job the dead worker had started; return their ids.

    ``composites`` adds executions (``<job id>:<execution id>``) known to be the worker's
    beyond its executions set (which may have expired with the worker's keys). With ``alive``
    the worker lives on and only ``composites`` are recovered: executions it lost track of
    (the reply to its start script was lost with the connection during a Redis outage).

    With ``settings``, jobs failed for good are also recorded in SQL (``failed_jobs``). Their
    progress records (jobs that track progress) end too: failed, or pending when retried; the
    database is the one of ``settings`` (default: this process's settings).
    """
    executions_key = keys.worker_executions(worker_name)
    if alive:
        composites = sorted(set(composites))
        if composites:
            connection.srem(executions_key, *composites)
    else:
        composites = sorted(
            {text(c) for c in connection.smembers(executions_key)} | set(composites)
        )
    queue = _queue(queue_name, connection)
    recovered: list[str] = []
    retried: list[str] = []
    counted = MetricsBuffer()  # failures are counted by the same code as in the worker
    failed_for_good: list[tuple[AcmeqJob, str]] = []
    for composite in composites:
        job_id, _, exec_id = composite.rpartition(":")
        try:
            job = AcmeqJob.fetch(job_id, connection=connection)
        except NoSuchJobError:
            job = None
        with connection.pipeline() as pipe:
            pipe.zrem(queue.started_job_registry.key, composite)
            pipe.delete(keys.execution(composite))
            pipe.zrem(keys.executions(job_id), exec_id)
            if job is not None and job.get_status(refresh=False) == JobStatus.STARTED:
                job.ended_at = now()
                exc_string = f"AbandonedJobError: {reason}"
                if job.retries_left and job.retries_left > 0:
                    job.retry(queue, pipe)
                    retried.append(job_id)
                else:
                    record_job_failure(job, exc_string, pipe)
                    failed_for_good.append((job, exc_string))
                ran = (job.ended_at - job.started_at).total_seconds() if job.started_at else 0.0
                counted.record(time.time(), queue_name, job_name(job), ran, ok=False)
                recovered.append(job_id)
            pipe.execute()
    if not alive:
        deregister_worker(connection, worker_name, queue_name)
    with contextlib.suppress(redis.RedisError):
        counted.flush(connection)
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
    key = keys.worker(worker_name)
    with connection.pipeline() as pipe:
        pipe.srem(keys.WORKERS, key)
        pipe.srem(keys.workers_of(queue_name), key)
        pipe.hset(key, "death", now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        pipe.expire(key, 60)
        pipe.delete(f"{key}:executions")
        pipe.execute()


def maintain_queue(connection: redis.Redis, queue_name: str) -> None:
    """What RQ's workers do in ``clean_registries`` (every 600 s there; every few seconds
    here), then recover ids stuck in the intermediate list.

    RQ's part, under RQ's per-queue maintenance lock: expired finished and failed entries,
    abandoned started jobs (expired heartbeats: retried or failed, failure callbacks through
    the allowlist), expired deferred entries, dependents stranded in the ReadyJobRegistry,
    rate-limit registries, dead workers in the queue's worker set, and the group registries.
    """
    queue = _queue(queue_name, connection)
    if queue.acquire_maintenance_lock():
        try:
            clean_registries(queue)
            clean_worker_registry(queue)
        finally:
            queue.release_maintenance_lock()
    if Group.acquire_maintenance_lock(connection, GROUP_CLEAN_EVERY_S):
        Group.clean_registries(connection=connection)
    stuck = [text(j) for j in connection.lrange(queue.intermediate_queue_key, 0, -1)]
    seen_key = keys.intermediate_seen(queue_name)
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


# A running job's execution heartbeat is refreshed every 10 s by its worker's watchdog; this
# long without one, its worker is dead (the master that started it died with it, or its host).
HEARTBEAT_LOST_S = 60.0
# A live worker (its master sees the process) that has not heartbeated one of its executions
# this long does not run it: the start script ran but its reply was lost (Redis went away).
ORPHANED_S = 30.0


def recover_lost_workers(
    connection: redis.Redis,
    queue_name: str,
    alive: Collection[str],
    settings: Settings | None = None,
    lost_after: float = HEARTBEAT_LOST_S,
    orphaned_after: float = ORPHANED_S,
) -> list[str]:
    """Recover the jobs of workers (not in ``alive``) whose executions on ``queue_name`` have
    not heartbeated for ``lost_after`` seconds, and the executions of live workers (in
    ``alive``) not heartbeated for ``orphaned_after`` seconds; return the recovered job ids.

    The caller must have reached Redis for a while: right after an outage every heartbeat looks
    old until the workers' next beat.
    """
    members: list[bytes] = connection.zrange(keys.started(queue_name), 0, -1)  # type: ignore[assignment]
    composites = [text(c) for c in members]
    if not composites:
        return []
    pipe = connection.pipeline(transaction=False)
    for composite in composites:
        pipe.hmget(keys.execution(composite), ["worker_name", "last_heartbeat"])
    lost: dict[str, list[str]] = {}
    newest: dict[str, float] = {}
    orphans: dict[str, list[str]] = {}
    stamp = time.time()
    replies: list[list[bytes | None]] = pipe.execute()
    for composite, (raw_worker, beat) in zip(composites, replies, strict=True):
        if not raw_worker or beat is None:
            continue  # no execution hash: RQ's cleanup handles it by its registry score
        name = text(raw_worker)
        lost.setdefault(name, []).append(composite)
        newest[name] = max(newest.get(name, 0.0), float(beat))
        if name in alive and stamp - float(beat) > orphaned_after:
            orphans.setdefault(name, []).append(composite)
    recovered: list[str] = []
    for worker, mine in lost.items():
        age = stamp - newest[worker]
        if worker in alive or age < lost_after:
            continue
        reason = f"worker {worker} stopped heartbeating {age:.0f} s ago"
        recovered += recover_dead_worker(connection, worker, queue_name, reason, settings, mine)
    for worker, mine in orphans.items():
        reason = f"worker {worker} lost track of the job (no heartbeat for {orphaned_after:g} s)"
        recovered += recover_dead_worker(
            connection, worker, queue_name, reason, settings, mine, alive=True
        )
    return recovered
