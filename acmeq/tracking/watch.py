"""Following running jobs: what ``acmeq progress watch`` does.

:class:`ProgressWatch` follows jobs' progress records: pub/sub (``acmeq:progress:<id>``, or the
global ``acmeq:progress``) delivers each flush at once; SQL is polled every couple of seconds as
the fallback (a missed message, a lost subscription) and RQ's job status fills in what no tracker
reports: jobs without progress tracking, and tracked jobs whose process died before the final
write (:func:`reconcile`). Cancelling is :mod:`acmeq.tracking.cancel`.
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

from acmeq import keys
from acmeq.errors import ProgressNotFoundError
from acmeq.storage.models import JobStatus
from acmeq.storage.redis_client import text
from acmeq.timeparse import rq_time
from acmeq.tracking import store
from acmeq.tracking.live import (
    PROGRESS_CHANNEL,
    channel,
)
from acmeq.tracking.store import ProgressRecord, Viewer

log = logging.getLogger("acmeq.progress")

POLL_INTERVAL_S = 2.0
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


@dataclass(frozen=True)
class RQInfo:
    """The few fields of RQ's job hash the watch needs."""

    status: str
    description: str
    origin: str
    started_at: datetime | None
    ended_at: datetime | None


def rq_info(connection: redis.Redis, job_ids: Sequence[str]) -> dict[str, RQInfo | None]:
    """RQ's view of each job (None: no such job hash), in one round trip."""
    fields = ("status", "description", "origin", "started_at", "ended_at")
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id), fields)
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
                rq_time(started),
                rq_time(ended),
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
