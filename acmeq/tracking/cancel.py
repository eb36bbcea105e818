"""Cancelling a job: what ``acmeq job cancel`` does.

:func:`cancel_job` cancels a job: a queued one is taken off its queue (RQ ``Job.cancel``); a
running one is asked to stop at its next checkpoint and, after the grace period, stopped by
force (see :mod:`acmeq.progress`). RQ's records are then put right: a cancelled job lands in RQ's
canceled registry, never retried and never alerted on as failed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy.engine import Engine

from acmeq.errors import AcmeqError, ProgressNotFoundError
from acmeq.storage.models import JobStatus
from acmeq.tracking import store
from acmeq.tracking.live import DEFAULT_GRACE_S, FORCED_NOTE, request_cancel, stop_running_job
from acmeq.tracking.store import ProgressRecord, Viewer, mark_cancelled
from acmeq.tracking.watch import RQ_STATUS, rq_info

STOP_WAIT_S = 5.0  # after the forced stop request: how long to wait for the job to end
SETTLE_S = 3.0  # after the progress ended: how long the worker may take to record the job
_NOT_STARTED = {"created", "queued", "scheduled", "deferred", "ready_to_enqueue", "rate_limited"}


@dataclass(frozen=True)
class CancelOutcome:
    """What ``acmeq job cancel`` achieved.

    ``how``: ``dequeued`` (was not running yet), ``checkpoint`` (stopped at a checkpoint),
    ``forced`` (stopped after the grace period), ``requested`` (asked, not waited for),
    ``already`` (was cancelled before).
    """

    job_id: str
    how: str
    status: JobStatus
    record: ProgressRecord | None
    rq_status: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "how": self.how,
            "status": self.status.value,
            "rq_status": self.rq_status,
            "progress": self.record.as_dict() if self.record is not None else None,
        }


def cancel_job(
    engine: Engine,
    connection: redis.Redis,
    viewer: Viewer,
    job_id: str,
    *,
    grace: float = DEFAULT_GRACE_S,
    wait: bool = True,
    stop_wait: float = STOP_WAIT_S,
    tick: float = 0.2,
) -> CancelOutcome:
    """Cancel job ``job_id`` as ``viewer`` (see the module docstring); raise if it cannot be."""
    record = store.get(engine, job_id)
    if record is not None and not record.visible_to(viewer):
        raise ProgressNotFoundError(job_id)
    info = rq_info(connection, [job_id])[job_id]
    if record is None and (info is None or not viewer.admin):
        raise ProgressNotFoundError(job_id)
    rq_status = info.status if info is not None else None
    if rq_status in _NOT_STARTED:
        request_cancel(connection, job_id, grace=grace, by=viewer.label)  # if a worker takes it now
        _rq_cancel(connection, job_id)
        record = mark_cancelled(
            engine, job_id, f"cancelled by {viewer.label} before it ran", connection=connection
        )
        return CancelOutcome(job_id, "dequeued", JobStatus.CANCELLED, record, "canceled")
    running = rq_status == "started" or (
        rq_status is None and record is not None and not record.finished
    )
    if not running:
        status = record.status if record is not None else RQ_STATUS.get(rq_status or "")
        if status is JobStatus.CANCELLED:
            return CancelOutcome(job_id, "already", status, record, rq_status)
        shown = status.value if status is not None else rq_status
        raise AcmeqError(f"job {job_id!r} already ended ({shown}); nothing to cancel")

    request_cancel(connection, job_id, grace=grace, by=viewer.label)
    if not wait:
        return CancelOutcome(job_id, "requested", JobStatus.RUNNING, record, rq_status)
    how = _stop(engine, connection, viewer, job_id, record is not None, grace, stop_wait, tick)
    return _outcome(engine, connection, viewer, job_id, how, tick)


def _stop(
    engine: Engine,
    connection: redis.Redis,
    viewer: Viewer,
    job_id: str,
    tracked: bool,
    grace: float,
    stop_wait: float,
    tick: float,
) -> str:
    """Wait for the job to stop at a checkpoint, then by force; how it stopped."""
    if _wait_until_ended(engine, connection, job_id, tracked, grace, tick) is not None:
        return "checkpoint"
    stop_running_job(connection, job_id, by=viewer.label)
    if _wait_until_ended(engine, connection, job_id, tracked, stop_wait, tick) is not None:
        return "forced"
    why = (
        "its tracker did not record the end (is the job blocked in a call?)"
        if tracked
        else "it does not track progress and its worker does not act on stop requests"
    )
    raise AcmeqError(
        f"job {job_id!r} did not stop within {grace + stop_wait:g} s of the request: {why}"
    )


def _outcome(
    engine: Engine, connection: redis.Redis, viewer: Viewer, job_id: str, how: str, tick: float
) -> CancelOutcome:
    """What a stopped job ended as, with RQ's records put right (canceled, never retried)."""
    final = _settle(connection, job_id, tick)
    record = store.get(engine, job_id)
    if record is not None and record.status is JobStatus.CANCELLED:
        # The tracker knows how it ended; the forced stop may beat this command's own timer.
        how = "forced" if FORCED_NOTE in (record.message or "") else "checkpoint"
    status = record.status if record is not None else RQ_STATUS.get(final or "", JobStatus.FAILED)
    if status is JobStatus.PENDING:
        # It failed on its own before seeing the request and RQ scheduled a retry: drop that.
        _rq_cancel(connection, job_id)
        record = mark_cancelled(
            engine, job_id, f"cancelled by {viewer.label}", connection=connection
        )
        return CancelOutcome(job_id, how, JobStatus.CANCELLED, record, "canceled")
    if status is JobStatus.COMPLETED:
        raise AcmeqError(f"job {job_id!r} completed before it could be cancelled")
    if record is not None and status is JobStatus.FAILED:
        raise AcmeqError(f"job {job_id!r} failed before it could be cancelled: {record.message}")
    if final in ("failed", "scheduled", "queued"):
        # RQ recorded the cancellation as a failure (or, in fork mode, scheduled a retry): move
        # the job to RQ's canceled registry so it is neither retried nor alerted on as failed.
        _rq_cancel(connection, job_id)
        final = "canceled"
    return CancelOutcome(job_id, how, JobStatus.CANCELLED, record, final)


def _wait_until_ended(
    engine: Engine, connection: redis.Redis, job_id: str, tracked: bool, seconds: float, tick: float
) -> str | None:
    """Wait until the tracked record (or, untracked, RQ) shows the end; its status or None."""
    deadline = time.monotonic() + seconds
    while True:
        info = rq_info(connection, [job_id])[job_id]
        rq_running = info is not None and info.status == "started"
        if tracked:
            record = store.get(engine, job_id)
            if record is not None and (
                record.finished or (record.status is JobStatus.PENDING and not rq_running)
            ):
                return record.status.value
        elif not rq_running:
            return info.status if info is not None else "gone"
        if time.monotonic() >= deadline:
            return None
        time.sleep(tick)


def _settle(connection: redis.Redis, job_id: str, tick: float) -> str | None:
    """RQ's status once the worker has recorded the job (it does so just after the job ends)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        info = rq_info(connection, [job_id])[job_id]
        status = info.status if info is not None else None
        if status != "started" or time.monotonic() >= deadline:
            return status
        time.sleep(tick)


def _rq_cancel(connection: redis.Redis, job_id: str) -> None:
    from rq.exceptions import InvalidJobOperation, NoSuchJobError

    from acmeq.queues import AcmeqJob

    with contextlib.suppress(NoSuchJobError, InvalidJobOperation):  # gone, or cancelled already
        AcmeqJob.fetch(job_id, connection=connection).cancel()
