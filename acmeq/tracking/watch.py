"""Following and cancelling running jobs: what ``acmeq progress watch`` and ``acmeq job cancel`` do.

:class:`ProgressWatch` follows jobs' progress records: pub/sub (``acmeq:progress:<id>``, or the
global ``acmeq:progress``) delivers each flush at once; SQL is polled every couple of seconds as
the fallback (a missed message, a lost subscription) and RQ's job status fills in what no tracker
reports: jobs without progress tracking, and tracked jobs whose process died before the final
write (:func:`reconcile`).

:func:`cancel_job` cancels a job: a queued one is taken off its queue (RQ ``Job.cancel``); a
running one is asked to stop at its next checkpoint and, after the grace period, stopped by
force (see :mod:`acmeq.progress`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy.engine import Engine

from acmeq.errors import AcmeqError, ProgressNotFoundError
from acmeq.storage.models import JobStatus
from acmeq.storage.redis_client import text
from acmeq.tracking import store
from acmeq.tracking.live import (
    DEFAULT_GRACE_S,
    FORCED_NOTE,
    PROGRESS_CHANNEL,
    channel,
    request_cancel,
    stop_running_job,
)
from acmeq.tracking.store import ProgressRecord, Viewer, mark_cancelled

log = logging.getLogger("acmeq.progress")

POLL_INTERVAL_S = 2.0
STOP_WAIT_S = 5.0  # after the forced stop request: how long to wait for the job to end
SETTLE_S = 3.0  # after the progress ended: how long the worker may take to record the job
STALE_S = 600.0  # an active record of a job RQ no longer knows, untouched this long, is ignored

# RQ's job status -> the progress status it implies.
RQ_STATUS: dict[str, JobStatus] = {
    "created": JobStatus.PENDING,
    "queued": JobStatus.PENDING,
    "scheduled": JobStatus.PENDING,
    "deferred": JobStatus.PENDING,
    "ready_to_enqueue": JobStatus.PENDING,
    "rate_limited": JobStatus.PENDING,
    "started": JobStatus.RUNNING,
    "finished": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
    "stopped": JobStatus.CANCELLED,
    "canceled": JobStatus.CANCELLED,
}
_NOT_STARTED = {"created", "queued", "scheduled", "deferred", "ready_to_enqueue", "rate_limited"}


@dataclass(frozen=True)
class RQInfo:
    """The few fields of RQ's job hash the watch needs."""

    status: str
    description: str
    origin: str
    started_at: datetime | None
    ended_at: datetime | None


def _rq_time(raw: Any) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(text(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rq_info(connection: redis.Redis, job_ids: Sequence[str]) -> dict[str, RQInfo | None]:
    """RQ's view of each job (None: no such job hash), in one round trip."""
    fields = ("status", "description", "origin", "started_at", "ended_at")
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(f"rq:job:{job_id}", fields)
    found: dict[str, RQInfo | None] = {}
    for job_id, values in zip(job_ids, pipe.execute(), strict=True):
        status, description, origin, started, ended = values
        found[job_id] = (
            None
            if status is None
            else RQInfo(
                text(status),
                text(description or b""),
                text(origin or b""),
                _rq_time(started),
                _rq_time(ended),
            )
        )
    return found


def record_from_rq(job_id: str, info: RQInfo) -> ProgressRecord:
    """A stand-in record for a job that does not track its progress."""
    status = RQ_STATUS.get(info.status, JobStatus.PENDING)
    now = datetime.now(UTC)
    return ProgressRecord(
        id=job_id,
        job_name=info.description or "?",
        queue=info.origin,
        status=status,
        message=f"not tracked; RQ status {info.status}",
        created_at=info.started_at or now,
        started_at=info.started_at,
        updated_at=info.ended_at or now,
        finished_at=(info.ended_at or now) if status.finished else None,
    )


def reconcile(
    engine: Engine, connection: redis.Redis, records: Iterable[ProgressRecord]
) -> list[ProgressRecord]:
    """Correct active records whose job RQ has already ended (or put back for a retry).

    A tracker writes its final state before the worker records the job, so RQ's status is read
    first and the records after: a record still active then was never finished by its tracker
    (work horse killed, worker killed without a master to recover it). Returns changed records.
    """
    active = [r.id for r in records if not r.finished]
    if not active:
        return []
    infos = rq_info(connection, active)
    fresh = {r.id: r for r in store.query(engine, ids=active)}
    changed: list[ProgressRecord] = []
    for job_id, info in infos.items():
        record = fresh.get(job_id)
        if record is None or record.finished or info is None:
            continue
        target = RQ_STATUS.get(info.status)
        if target is None or target is JobStatus.RUNNING or target is record.status:
            continue
        message = {
            JobStatus.PENDING: "attempt ended without a final progress write; retry scheduled",
            JobStatus.COMPLETED: record.message or "completed",
            JobStatus.FAILED: "job ended without a final progress write (process killed?)",
            JobStatus.CANCELLED: f"job {info.status} without a final progress write",
        }[target]
        changed += store.finish_if_active(engine, [job_id], target, message, only=[record.status])
    return changed


class ProgressWatch:
    """Follows the given jobs (or every active job the viewer may see) until they all end.

    Usage: ``open()``; then ``step(timeout)`` until ``done``; ``records`` is the current view
    (in the order the jobs were first seen) and ``exit_code`` the outcome: 0 when every job
    completed, 1 when any failed or was cancelled.
    """

    def __init__(
        self,
        engine: Engine,
        connection: redis.Redis,
        viewer: Viewer,
        job_ids: Sequence[str] | None = None,
        *,
        poll_interval: float = POLL_INTERVAL_S,
    ) -> None:
        self.engine = engine
        self.connection = connection
        self.viewer = viewer
        self.explicit = list(dict.fromkeys(job_ids)) if job_ids else None
        self.poll_interval = poll_interval
        self._records: dict[str, ProgressRecord] = {}
        self._untracked: set[str] = set()
        self._pubsub: Any = None
        self._next_poll = 0.0

    # -- lifecycle --------------------------------------------------------------------------------
    def open(self) -> ProgressWatch:
        """Subscribe, then load the current state (so no update in between is missed)."""
        try:
            self._pubsub = self.connection.pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=True
            )
            channels = [channel(i) for i in self.explicit] if self.explicit else [PROGRESS_CHANNEL]
            self._pubsub.subscribe(*channels)
        except redis.RedisError as exc:
            log.warning("progress watch: no pub/sub (%s); polling only", exc)
            self._pubsub = None
        if self.explicit:
            self._load_explicit(self.explicit)
        else:
            self._load_active()
        self.poll()
        return self

    def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None

    def __enter__(self) -> ProgressWatch:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------------
    @property
    def records(self) -> list[ProgressRecord]:
        return list(self._records.values())

    @property
    def done(self) -> bool:
        return all(r.finished for r in self._records.values())

    @property
    def exit_code(self) -> int:
        return 0 if all(r.status is JobStatus.COMPLETED for r in self._records.values()) else 1

    # -- feeding ----------------------------------------------------------------------------------
    def step(self, timeout: float) -> list[ProgressRecord]:
        """Take what pub/sub delivers for up to ``timeout`` seconds, and poll when due.

        Returns the records that changed (their latest versions).
        """
        changed: dict[str, ProgressRecord] = {}
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= self._next_poll:
                changed.update((r.id, r) for r in self.poll())
            wait = min(deadline, self._next_poll) - time.monotonic()
            if self._pubsub is None:
                if wait > 0:
                    time.sleep(wait)
            else:
                try:
                    message = self._pubsub.get_message(timeout=max(0.0, wait))
                except (redis.RedisError, OSError) as exc:
                    log.warning("progress watch: pub/sub lost (%s); polling only", exc)
                    self._pubsub = None
                    message = None
                if message is not None and message.get("type") == "message":
                    record = self._accept(message["data"])
                    if record is not None:
                        changed[record.id] = record
            if time.monotonic() >= deadline or (changed and self.done):
                return list(changed.values())

    def poll(self) -> list[ProgressRecord]:
        """Read the records from SQL (and RQ for untracked jobs); reconcile; return changes."""
        self._next_poll = time.monotonic() + self.poll_interval
        changed: list[ProgressRecord] = []
        if not self.explicit:
            self._load_active(changed)
        ids = list(self._records)
        rows = {r.id: r for r in store.query(self.engine, ids=ids)} if ids else {}
        for job_id, row in rows.items():
            self._untracked.discard(job_id)  # a job that started tracking since
            if self._update(row):
                changed.append(row)
        untracked = [i for i in ids if i in self._untracked and i not in rows]
        if untracked:
            for job_id, info in rq_info(self.connection, untracked).items():
                old = self._records[job_id]
                if info is None:
                    if old.finished:
                        continue
                    record = store.with_status(old, JobStatus.FAILED, "job no longer in Redis")
                else:
                    record = record_from_rq(job_id, info)
                if (record.status, record.message) != (old.status, old.message):
                    self._records[job_id] = record
                    changed.append(record)
        for record in reconcile(self.engine, self.connection, rows.values()):
            if self._update(record):
                changed.append(record)
        return changed

    # -- internals --------------------------------------------------------------------------------
    def _load_explicit(self, ids: Sequence[str]) -> None:
        rows = {r.id: r for r in store.query(self.engine, ids=ids)}
        missing = [i for i in ids if i not in rows]
        infos = rq_info(self.connection, missing) if missing else {}
        for job_id in ids:
            row = rows.get(job_id)
            info = infos.get(job_id)
            if row is not None:
                if not row.visible_to(self.viewer):
                    raise ProgressNotFoundError(job_id)
                self._records[job_id] = row
            elif info is not None and self.viewer.admin:
                # Untracked jobs have no owner: only an admin (or the operator) follows them.
                self._records[job_id] = record_from_rq(job_id, info)
                self._untracked.add(job_id)
            else:
                raise ProgressNotFoundError(job_id)

    def _load_active(self, changed: list[ProgressRecord] | None = None) -> None:
        rows = store.query(self.engine, viewer=self.viewer, statuses=store.ACTIVE)
        fresh = [r for r in rows if r.id not in self._records]
        if not fresh:
            return
        infos = rq_info(self.connection, [r.id for r in fresh])
        stale_before = datetime.now(UTC) - timedelta(seconds=STALE_S)
        for row in reversed(fresh):  # oldest first
            if infos.get(row.id) is None and row.updated_at < stale_before:
                continue  # a leftover of a job RQ forgot long ago: nothing will end it
            self._records[row.id] = row
            if changed is not None:
                changed.append(row)

    def _accept(self, data: Any) -> ProgressRecord | None:
        try:
            record = ProgressRecord.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("progress watch: bad message ignored (%s)", exc)
            return None
        if self.explicit is not None and record.id not in self._records:
            return None
        if not record.visible_to(self.viewer):
            return None
        if record.id not in self._records and record.finished:
            return None  # the end of a job that was not being watched
        self._untracked.discard(record.id)
        return record if self._update(record) else None

    def _update(self, record: ProgressRecord) -> bool:
        old = self._records.get(record.id)
        if old is not None and (not record.newer_than(old) or record == old):
            return False
        self._records[record.id] = record
        return True


# ---------------------------------------------------------------------------------------------
# Cancellation


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
    tracked = record is not None
    how = "checkpoint"
    ended = _wait_until_ended(engine, connection, job_id, tracked, grace, tick)
    if ended is None:
        stop_running_job(connection, job_id, by=viewer.label)
        how = "forced"
        ended = _wait_until_ended(engine, connection, job_id, tracked, stop_wait, tick)
    if ended is None:
        why = (
            "its tracker did not record the end (is the job blocked in a call?)"
            if tracked
            else "it does not track progress and its worker does not act on stop requests"
        )
        raise AcmeqError(
            f"job {job_id!r} did not stop within {grace + stop_wait:g} s of the request: {why}"
        )
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
