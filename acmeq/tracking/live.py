"""The Redis side of job progress: pub/sub channels and cancel requests.

- Every progress write is published as the record's JSON on ``acmeq:progress:<job id>`` and on
  ``acmeq:progress`` (every job): :func:`acmeq.tracking.store.publish`.
- ``acmeq job cancel`` files a :class:`CancelRequest` under ``acmeq:cancel:<job id>`` and
  publishes the id on ``acmeq:cancel``; the job's tracker reads the key at its flushes
  (:mod:`acmeq.progress`). A worker can ask :func:`stop_requested` which of its running jobs are
  past their grace period.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from acmeq import keys

DEFAULT_GRACE_S = 10.0  # cooperative cancel: how long before the job is stopped by force
CANCEL_TTL_S = 24 * 3600
FORCED_NOTE = " (stopped after the grace period)"  # ends the message of a job stopped by force

# The names stay importable from here (and from acmeq.progress) for jobs and scripts.
PROGRESS_CHANNEL = keys.PROGRESS_CHANNEL  # every record, for watchers of all jobs
CANCEL_CHANNEL = keys.CANCEL_CHANNEL  # job ids whose cancellation was requested
channel = keys.progress_channel  # one job's progress: acmeq:progress:<job id>
cancel_key = keys.cancel  # acmeq:cancel:<job id>


# ---------------------------------------------------------------------------------------------
# Cancel requests (Redis)


@dataclass(frozen=True)
class CancelRequest:
    requested_at: float  # epoch seconds
    stop_at: float  # epoch seconds: after this the job is stopped by force
    by: str

    def to_json(self) -> str:
        return json.dumps(
            {"requested_at": self.requested_at, "stop_at": self.stop_at, "by": self.by}
        )

    @classmethod
    def parse(cls, raw: bytes | str) -> CancelRequest:
        data = json.loads(raw)
        return cls(float(data["requested_at"]), float(data["stop_at"]), str(data.get("by", "")))


def request_cancel(
    connection: redis.Redis, job_id: str, *, grace: float = DEFAULT_GRACE_S, by: str = "operator"
) -> CancelRequest:
    """Ask a running job to stop at its next checkpoint, by force after ``grace`` seconds.

    Sets ``acmeq:cancel:<job id>`` (kept a day, so a retry of the job stops at once too) and
    publishes the id on ``acmeq:cancel``. A second request never postpones the first's deadline.
    """
    now = time.time()
    request = CancelRequest(now, now + max(0.0, grace), by)
    existing = cancel_request(connection, job_id)
    if existing is not None and existing.stop_at <= request.stop_at:
        request = existing
    with connection.pipeline() as pipe:
        pipe.set(cancel_key(job_id), request.to_json(), ex=CANCEL_TTL_S)
        pipe.publish(CANCEL_CHANNEL, job_id)
        pipe.execute()
    return request


def stop_running_job(connection: redis.Redis, job_id: str, *, by: str = "operator") -> None:
    """Ask for the job to be stopped now, without waiting for a checkpoint.

    A tracked job is stopped by its tracker's ticker within about a second. For an untracked job
    the worker running it must act on :func:`stop_requested` (see docs/progress.md); RQ's own
    ``send_stop_job_command`` cannot work, as acmeq's worker does not listen to RQ's pub/sub.
    """
    request_cancel(connection, job_id, grace=0.0, by=by)


def cancel_request(connection: redis.Redis, job_id: str) -> CancelRequest | None:
    raw = connection.get(cancel_key(job_id))
    return CancelRequest.parse(raw) if raw else None


def cancel_requested(connection: redis.Redis, job_id: str) -> bool:
    """Whether the job's cancellation was requested (a worker must then not retry it)."""
    return bool(connection.exists(cancel_key(job_id)))


def stop_requested(connection: redis.Redis, job_ids: Iterable[str]) -> set[str]:
    """Of ``job_ids``, those whose cancel grace period is over (to be stopped by force)."""
    ids = list(job_ids)
    if not ids:
        return set()
    now = time.time()
    raws = connection.mget([cancel_key(i) for i in ids])
    return {
        i
        for i, raw in zip(ids, raws, strict=True)
        if raw and CancelRequest.parse(raw).stop_at <= now
    }
