"""Job progress: what a running job reports, and how it is cancelled on request.

Inside a job::

    from acmeq.progress import JobCancelled, track

    @acmeq.job(queue="exports")
    def export_donations(campaign_id: int, user_id: int) -> int:
        donations = load(campaign_id)
        with track(total=len(donations), user_id=user_id, meta={"campaign": campaign_id}) as p:
            try:
                for donation in donations:
                    try:
                        write_row(donation)
                    except BadRow as exc:
                        p.fail_item(f"donation {donation.id}: {exc}")
                    else:
                        p.advance()
            except JobCancelled:
                remove_partial_file()  # the job's own cleanup
                raise
        return p.processed

Statuses: ``pending`` -> ``running`` -> ``completed`` | ``failed`` | ``cancelled``. The final state
is written when the ``with`` block ends, however it ends: ``completed`` when it ends normally,
``cancelled`` on :class:`JobCancelled`, ``failed`` on any other exception -- or back to
``pending`` when RQ will retry the job (tries left), since the job is not over. A job killed
outside Python (SIGKILL, OOM) is marked failed by the master's recovery (:func:`mark_abandoned`).

Cost: :meth:`Tracker.advance` is an increment and a flag test. One ticker thread per process
raises each tracker's flag every :data:`FLUSH_INTERVAL_S`; the next ``advance()`` then flushes:
one SQL upsert of the ``job_progress`` row and one Redis pipeline that PUBLISHes the record on
``acmeq:progress:<job id>`` and ``acmeq:progress`` and reads the cancel key. So a job writes at
most ~2 times per second however fast it advances, plus its first and final write.

Cancellation is cooperative: ``acmeq job cancel`` sets ``acmeq:cancel:<job id>``
(:func:`request_cancel`); the tracker sees it at its next flush (within ~0.5 s) and ``advance()``
raises :class:`JobCancelled`, which the job may catch to clean up (and should re-raise). A job
that reaches no checkpoint within the grace period (its tracker has not flushed for a second and
the request's ``stop_at`` has passed) is stopped by the ticker raising :class:`JobCancelled` in
the job's thread (a thread blocked in a C call sees it when the call returns). A cancelled job is
never retried: the tracker sets ``retries_left`` of RQ's job to 0 before the exception leaves.
``JobCancelled`` is not an :class:`acmeq.errors.AcmeqError`: it is a control-flow signal a job
raises, not an error a user meets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar
from uuid import uuid4

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings, process_settings
from acmeq.errors import JobCancelled, UsageError
from acmeq.storage.models import JobStatus
from acmeq.tracking import store
from acmeq.tracking import ticker as ticking
from acmeq.tracking.live import (
    CANCEL_CHANNEL,
    DEFAULT_GRACE_S,
    FORCED_NOTE,
    PROGRESS_CHANNEL,
    CancelRequest,
    cancel_key,
    cancel_request,
    cancel_requested,
    channel,
    request_cancel,
    stop_requested,
    stop_running_job,
)
from acmeq.tracking.rate import SMOOTHING_S, RateEstimator
from acmeq.tracking.store import (
    ProgressRecord,
    create_pending,
    mark_abandoned,
    mark_cancelled,
    publish,
)
from acmeq.tracking.ticker import Ticker

log = logging.getLogger("acmeq.progress")
T = TypeVar("T")

STALL_S = 1.0  # a tracker that has not flushed this long has its cancel key polled by the ticker
FORCED_FINAL_S = 2.0  # a forced stop not seen by the job this long: the ticker writes the end
ERRORS_KEPT = 10  # item failures kept (newest) with their reasons
WARN_EVERY_S = 60.0


# ---------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """Progress of one job run; use through :func:`track` as a context manager.

    ``processed``, ``failed`` and ``total`` are plain attributes a job may read.
    """

    __slots__ = (
        "__weakref__",
        "_cancel",
        "_connection",
        "_created_at",
        "_due",
        "_engine",
        "_errors",
        "_finished",
        "_forced",
        "_forced_at",
        "_last_flush",
        "_last_poll",
        "_lock",
        "_message",
        "_raised",
        "_rate",
        "_rq_job",
        "_started_at",
        "_thread_id",
        "_warned",
        "failed",
        "job_id",
        "job_name",
        "meta",
        "processed",
        "queue",
        "total",
        "user_id",
    )

    def __init__(
        self,
        job_id: str,
        *,
        job_name: str,
        queue: str,
        total: int,
        user_id: int | None,
        meta: Mapping[str, Any] | None,
        message: str | None,
        engine: Engine | None,
        connection: redis.Redis | None,
        rq_job: Any = None,
        smoothing: float = SMOOTHING_S,
    ) -> None:
        self.processed = 0
        self.failed = 0
        self.total = total
        self._due = False
        self.job_id = job_id
        self.job_name = job_name
        self.queue = queue
        self.user_id = user_id
        self.meta: dict[str, Any] | None = dict(meta) if meta is not None else None
        self._message = message
        self._errors: deque[str] = deque(maxlen=ERRORS_KEPT)
        self._engine = engine
        self._connection = connection
        self._rq_job = rq_job
        self._rate = RateEstimator(smoothing)
        self._created_at = datetime.now(UTC)
        self._started_at: datetime | None = None
        self._cancel: CancelRequest | None = None
        self._raised = False  # JobCancelled was raised to the job
        self._forced = False  # the ticker raised JobCancelled asynchronously
        self._forced_at = 0.0
        self._thread_id = 0
        self._last_flush = 0.0
        self._last_poll = 0.0
        self._finished = False
        self._lock = threading.Lock()
        self._warned: dict[str, float] = {}

    # -- the hot path ---------------------------------------------------------------------------
    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done; a checkpoint: raises :class:`JobCancelled` if cancelled."""
        self.processed += n
        if self._due:
            self._checkpoint()

    def fail_item(self, reason: str | None = None, n: int = 1) -> None:
        """Count ``n`` items handled but failed (they count as processed too); a checkpoint."""
        self.processed += n
        self.failed += n
        if reason:
            self._errors.append(reason[:500])
        if self._due:
            self._checkpoint()

    def checkpoint(self) -> None:
        """A checkpoint without progress: flush if due; raise :class:`JobCancelled` if cancelled."""
        if self._due:
            self._checkpoint()

    # -- other reports (written with the next flush) --------------------------------------------
    def message(self, text: str) -> None:
        """Set the status line shown beside the bar ("reading campaign 12 ...")."""
        self._message = text

    def set_total(self, total: int) -> None:
        """Set or correct the number of items (0: unknown)."""
        if total < 0:
            raise UsageError(f"total must be >= 0, got {total!r}")
        self.total = total

    def update_meta(self, **values: Any) -> None:
        """Merge JSON-safe values into the record's metadata."""
        merged = {**(self.meta or {}), **values}
        store.check_meta(merged)
        self.meta = merged

    @property
    def cancelled(self) -> bool:
        """Whether a cancellation request has been seen (``advance()`` will raise)."""
        return self._cancel is not None

    def iter(self, items: Iterable[T]) -> Iterator[T]:
        """Yield each item, counting it processed once the loop body is done with it."""
        self._size_from(items)
        for item in items:
            yield item
            self.advance()

    def batches(self, items: Iterable[T], size: int) -> Iterator[list[T]]:
        """Yield lists of up to ``size`` items, counting a batch processed once its body is done.

        ``total`` is taken from ``len(items)`` when it is not set. A batch whose body calls
        :meth:`fail_item` for some of its items is counted without those (no double count).
        """
        if size < 1:
            raise UsageError(f"batch size must be >= 1, got {size!r}")
        self._size_from(items)
        batch: list[T] = []
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[T]) -> Iterator[list[T]]:
        failed_before = self.failed
        yield batch
        self.advance(max(0, len(batch) - (self.failed - failed_before)))

    def _size_from(self, items: Iterable[Any]) -> None:
        if not self.total and hasattr(items, "__len__"):
            self.total = len(items)  # type: ignore[arg-type]

    def snapshot(self, status: JobStatus = JobStatus.RUNNING) -> ProgressRecord:
        """The record as it would be written now (no I/O)."""
        return self._record(status, datetime.now(UTC), None, None)

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        self._thread_id = threading.get_ident()
        self._inherit()
        self._started_at = datetime.now(UTC)
        now = time.monotonic()
        self._rate.update(0, now)
        self._last_flush = now
        self._write(self._record(JobStatus.RUNNING, self._started_at, None, None), final=False)
        if self._cancel is not None:  # cancelled before it started (or a retry of a cancelled job)
            self._raised = True
            exc = JobCancelled(self._cancel_text())
            self._close(JobCancelled, exc)
            raise exc
        ticking.current().add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            forced = ticking.current().remove(self)
        except JobCancelled:  # the forced stop landed just here; the ticker fires only once
            forced = ticking.current().remove(self)
            exc_type, exc = JobCancelled, JobCancelled()
        if forced and exc_type is JobCancelled:
            self._raised = True
        self._close(exc_type, exc)

    # -- internals --------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        if self._cancel is None:
            self._due = False
            self._flush()
        if self._cancel is not None:
            self._due = True  # every further checkpoint raises too
            self._raised = True
            raise JobCancelled(self._cancel_text())

    def _flush(self) -> None:
        now = time.monotonic()
        self._last_flush = now
        rate = self._rate.update(self.processed, now)
        stamp = datetime.now(UTC)
        eta = None
        if self.total > 0:
            seconds = self._rate.eta_seconds(self.total - self.processed)
            if seconds is not None and seconds < 10 * 365 * 86400:
                eta = stamp + timedelta(seconds=seconds)
        self._write(self._record(JobStatus.RUNNING, stamp, eta, rate), final=False)

    def _record(
        self, status: JobStatus, stamp: datetime, eta: datetime | None, rate: float | None
    ) -> ProgressRecord:
        return ProgressRecord(
            id=self.job_id,
            job_name=self.job_name,
            queue=self.queue,
            status=status,
            user_id=self.user_id,
            total=self.total,
            processed=self.processed,
            failed=self.failed,
            message=self._message,
            meta=self.meta,
            rate=rate if rate is not None else self._rate.rate,
            errors=tuple(self._errors),
            created_at=self._created_at,
            started_at=self._started_at,
            updated_at=stamp,
            finished_at=stamp if status.finished else None,
            eta_at=eta,
        )

    def _write(self, record: ProgressRecord, final: bool) -> None:
        """Store and publish ``record``; a flush also reads the cancel key. Never raises I/O errors:
        progress is a report, and a donation job must not fail because a report could not be
        written (the next flush tries again)."""
        with self._lock:
            if self._finished:
                return
            if final:
                self._finished = True
            if self._engine is not None:
                try:
                    store.save(self._engine, record)
                except sa.exc.SQLAlchemyError as exc:
                    self._warn("sql", f"cannot write progress of job {self.job_id}: {exc}")
            if self._connection is not None:
                try:
                    payload = json.dumps(record.as_dict())
                    pipe = self._connection.pipeline(transaction=False)
                    pipe.publish(channel(self.job_id), payload)
                    pipe.publish(PROGRESS_CHANNEL, payload)
                    pipe.get(cancel_key(self.job_id))
                    raw = pipe.execute()[-1]
                    if raw and not final:
                        self._cancel = CancelRequest.parse(raw)
                except redis.RedisError as exc:
                    self._warn("redis", f"cannot publish progress of job {self.job_id}: {exc}")

    def _warn(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[kind] = now
            log.warning("%s", text)

    def _watch(self, ticker: Ticker) -> None:
        """Ticker thread: poll the cancel key of a stalled tracker; force a stop when overdue."""
        now = time.monotonic()
        if self._forced:
            if now - self._forced_at >= FORCED_FINAL_S and not self._finished:
                # The job has not reached Python code since (blocked in a C call): record the
                # outcome now; the exception still ends the job when the call returns, and
                # there, inside the job's body, is where it is raised.
                ticker.remove(self, clear=False)
                self._close(JobCancelled, JobCancelled(self._cancel_text() + " (job blocked)"))
            return
        if now - self._last_flush < STALL_S or now - self._last_poll < STALL_S:
            return
        if self._connection is None:
            return
        self._last_poll = now
        try:
            request = cancel_request(self._connection, self.job_id)
        except redis.RedisError as exc:
            self._warn("redis", f"cannot read the cancel key of job {self.job_id}: {exc}")
            return
        if request is None:
            return
        self._cancel = request
        self._due = True
        if request.stop_at <= time.time():
            ticker.force(self)

    def _cancel_text(self) -> str:
        request = self._cancel
        who = f" by {request.by}" if request is not None and request.by else ""
        forced = FORCED_NOTE if self._forced else ""
        return f"cancelled{who}{forced}"

    def _close(self, exc_type: type[BaseException] | None, exc: BaseException | None) -> None:
        stamp = datetime.now(UTC)
        self._rate.update(self.processed, time.monotonic())
        message = self._message
        if exc_type is None and not self._raised:
            status = JobStatus.COMPLETED
        elif exc_type is None or (exc_type is not None and issubclass(exc_type, JobCancelled)):
            status = JobStatus.CANCELLED
            message = self._cancel_text() if self._cancel or self._forced else "cancelled"
            if self._rq_job is not None:
                self._rq_job.retries_left = 0  # RQ reads it when it records the failure
        else:
            name = exc_type.__name__ if exc_type is not None else "Error"
            what = f"{name}: {exc}" if exc is not None and str(exc) else name
            retries = getattr(self._rq_job, "retries_left", None) or 0
            if retries > 0:
                status = JobStatus.PENDING
                message = f"attempt failed ({what}); retry scheduled"[:1000]
            else:
                status = JobStatus.FAILED
                message = what[:1000]
        self._message = message
        self._write(self._record(status, stamp, None, None), final=True)

    def _inherit(self) -> None:
        """Keep what an enqueuer stored in a pending record (owner, metadata, creation time)."""
        if self._engine is None:
            return
        try:
            existing = store.get(self._engine, self.job_id)
        except sa.exc.SQLAlchemyError as exc:
            self._warn("sql", f"cannot read progress of job {self.job_id}: {exc}")
            return
        if existing is None:
            return
        self._created_at = existing.created_at
        if self.user_id is None:
            self.user_id = existing.user_id
        if self.meta is None and existing.meta is not None:
            self.meta = dict(existing.meta)
        if not self.total:
            self.total = existing.total


def track(
    total: int | None = None,
    *,
    user_id: int | None = None,
    meta: Mapping[str, Any] | None = None,
    message: str | None = None,
    job_id: str | None = None,
    job_name: str | None = None,
    queue: str | None = None,
    settings: Settings | None = None,
    engine: Engine | None = None,
    connection: redis.Redis | None = None,
    smoothing: float = SMOOTHING_S,
) -> Tracker:
    """Track the progress of the running job: ``with track(total=N) as p: ... p.advance()``.

    Inside an acmeq job everything is found from RQ's current job: its id, name, queue and Redis
    connection; the database is the configured one. ``user_id`` (the owner, for access rules)
    defaults to the job's ``meta["user_id"]`` when that is an integer. Outside a job (scripts,
    benchmarks) pass ``job_id`` -- or get a ``local-<uuid>`` id -- and the connection/engine or
    settings. ``total`` may be set later (:meth:`Tracker.set_total`); None or 0 means unknown.
    """
    from rq import get_current_job

    if total is not None and total < 0:
        raise UsageError(f"total must be >= 0, got {total!r}")
    if meta is not None:
        store.check_meta(meta)
    rq_job = get_current_job()
    if user_id is None and rq_job is not None:
        owner = (rq_job.meta or {}).get("user_id")
        user_id = owner if isinstance(owner, int) and not isinstance(owner, bool) else None
    if connection is None:
        if rq_job is not None:
            connection = rq_job.connection
        else:
            from acmeq.storage.redis_client import connect

            connection = connect(settings or process_settings())
    if engine is None:
        engine = store.engine_of(settings)
    return Tracker(
        job_id or (rq_job.id if rq_job is not None else f"local-{uuid4().hex}"),
        job_name=job_name or (rq_job.description or rq_job.func_name if rq_job else "") or "local",
        queue=queue or (rq_job.origin if rq_job is not None else "") or "",
        total=total or 0,
        user_id=user_id,
        meta=meta,
        message=message,
        engine=engine,
        connection=connection,
        rq_job=rq_job,
        smoothing=smoothing,
    )


__all__ = [
    "CANCEL_CHANNEL",
    "DEFAULT_GRACE_S",
    "FORCED_NOTE",
    "PROGRESS_CHANNEL",
    "CancelRequest",
    "JobCancelled",
    "RateEstimator",
    "Tracker",
    "cancel_key",
    "cancel_request",
    "cancel_requested",
    "channel",
    "create_pending",
    "mark_abandoned",
    "mark_cancelled",
    "publish",
    "request_cancel",
    "stop_requested",
    "stop_running_job",
    "track",
]
