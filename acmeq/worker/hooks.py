"""What the worker tells other features about a job: its registered name (metrics, failure
records), the cancel flag and the final state of its progress record."""

from __future__ import annotations

import logging

import redis

from acmeq.config.settings import Settings
from acmeq.queues import AcmeqJob

log = logging.getLogger("acmeq.worker")


def cancel_requested(connection: redis.Redis, job_id: str) -> bool:
    """Whether `acmeq job cancel` asked for this job (a cancelled job is never retried)."""
    from acmeq import progress

    try:
        return progress.cancel_requested(connection, job_id)
    except redis.RedisError:
        return False


def end_progress(
    settings: Settings, connection: redis.Redis, job_id: str, how: str, message: str
) -> None:
    """Give a tracked job's progress its final state when the job could not write it."""
    try:
        from acmeq import progress

        if how == "cancelled":
            progress.mark_cancelled(settings, job_id, message, connection=connection)
        else:
            progress.mark_abandoned(settings, [job_id], message, connection=connection)
    except Exception as exc:  # progress is best effort; the job's RQ state is already recorded
        log.debug("progress of %s not updated: %s", job_id, exc)


def job_name(job: AcmeqJob) -> str:
    """The registered name of a job's function (its RQ description is that name when acmeq
    enqueued it; anything else falls back to the function path, and a job whose data cannot be
    read at all, e.g. pickled by someone else, to ``?``). Never raises."""
    from acmeq.queues import _process_registry

    try:
        return _process_registry().by_path(job.func_name).name
    except Exception:
        pass
    try:
        return job.func_name or "?"
    except Exception:
        return "?"
