"""Recording a job's outcome through RQ's own code paths, plus what acmeq adds.

Plain successes go through the fast path (:mod:`acmeq.worker.fastpath`). Everything else runs
exactly the RQ 3 worker methods that plain RQ runs: ``_finalize_success`` (success callback,
``handle_job_success``, webhooks, a returned ``Retry``), ``_finalize_failure`` (failure callback,
exception handlers, ``handle_job_failure`` with its retries), and for a job stopped on request
the stopped callback and ``handle_job_failure`` with RQ's ``_stopped_job_id``. acmeq adds: a
cancelled job is never retried, a job that used up its tries gets a SQL record, a tracked job's
progress ends, metrics are counted in the worker's buffer.
"""

from __future__ import annotations

import logging
import time
import zlib
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rq.callbacks import execute_stopped_callback
from rq.executions import Execution
from rq.job import JobStatus
from rq.job_lifecycle import format_exc_info
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now

from acmeq import keys
from acmeq.ops import failure_log as failures
from acmeq.queues import AcmeqJob
from acmeq.worker.base import Running, WorkerBase
from acmeq.worker.hooks import cancel_requested, end_progress, job_name
from acmeq.worker.states import Outcome

if TYPE_CHECKING:
    from acmeq.worker.fastpath import Started

log = logging.getLogger("acmeq.worker")

ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]

STOPPED_MESSAGE = "Job stopped by user, work-horse terminated."  # RQ's own


class RecordingWorker(WorkerBase):
    """The outcome-recording half of the worker."""

    def execute(self, item: Running) -> dict[str, Any]:
        """Run a job and record anything but a plain success (acmeq.worker.process)."""
        raise NotImplementedError

    # -- successes that need RQ (callbacks, webhooks, dependents, Retry, repeats) -------------
    def record_success_rq(self, job: AcmeqJob, execution: Execution, value: Any) -> bool:
        """RQ's ``_finalize_success``; returns whether the job ended finished (not retried or
        failed by its callback)."""
        job.ended_at = job.ended_at or rq_now()
        try:
            self._finalize_success(job, self.queue_obj, execution, value)
        except Exception:
            # As in RQ's perform_job: a success callback that raises fails the job.
            self._finalize_failure(job, self.queue_obj, execution, _exc_info())
            return False
        return job.get_status(refresh=False) == JobStatus.FINISHED

    # -- failures -------------------------------------------------------------------------------
    def record_failure_rq(
        self, job: AcmeqJob, execution: Execution, exc_info: ExcInfo, outcome: Outcome
    ) -> str:
        """RQ's failure handling for a job that raised (or was stopped); returns the exception
        string recorded. Redis only: :meth:`after_failure` does the SQL and progress part."""
        job._status = JobStatus.FAILED
        if outcome == Outcome.STOPPED:
            self.record_stopped_rq(job, execution)
            return STOPPED_MESSAGE
        self._no_retry_if_cancelled(job, outcome)
        self._finalize_failure(job, self.queue_obj, execution, exc_info)
        return format_exc_info(exc_info)

    def record_failure_string(
        self, job: AcmeqJob, execution: Execution, exc_string: str, outcome: Outcome
    ) -> str:
        """RQ's failure handling for a job whose exception is known only as text (a horse that
        died or was killed, a deadline passed in threads mode), as RQ's monitor does."""
        job._status = JobStatus.FAILED
        job.ended_at = job.ended_at or rq_now()
        if outcome == Outcome.STOPPED:
            self.record_stopped_rq(job, execution)
            return STOPPED_MESSAGE
        self._no_retry_if_cancelled(job, outcome)
        self.handle_job_failure(job, self.queue_obj, exc_string=exc_string, execution=execution)
        return exc_string

    def record_stopped_rq(self, job: AcmeqJob, execution: Execution) -> None:
        """RQ's ``_handle_stopped_job``: the stopped callback, then STOPPED in the failed
        registry, never retried."""
        job.ended_at = job.ended_at or rq_now()
        try:
            execute_stopped_callback(job, self.death_penalty_class)
        except Exception:
            log.exception("stopped callback of job %s raised", job.id)
        with self._rq_lock:
            self._stopped_job_id = job.id
            try:
                self.handle_job_failure(
                    job, self.queue_obj, exc_string=STOPPED_MESSAGE, execution=execution
                )
            finally:
                self._stopped_job_id = None
        self._stop_job_ids.discard(job.id)

    def _no_retry_if_cancelled(self, job: AcmeqJob, outcome: Outcome) -> None:
        cancelled = job.id in self._force_stop or cancel_requested(self.connection, job.id)
        if outcome == Outcome.MEMORY or cancelled:
            # A memory hog fails for good (a retry would only kill the next worker too); a
            # cancelled job must not come back.
            job.retries_left = 0

    def after_failure(
        self, job: AcmeqJob, exc_string: str, runtime: float, status: JobStatus | None = None
    ) -> None:
        """acmeq's part of a failure: metrics, the SQL record of a job that used up its
        tries, the end of its progress record."""
        name = job_name(job)
        self.metrics.record(time.time(), self.opts.queue, name, runtime, ok=False)
        status = status or job.get_status(refresh=False)
        if status == JobStatus.FAILED:
            cancelled = job.id in self._force_stop or cancel_requested(self.connection, job.id)
            try:
                if cancelled:
                    end_progress(
                        self.settings,
                        self.connection,
                        job.id,
                        "cancelled",
                        "cancelled by an operator",
                    )
                else:
                    failures.record_permanent(self.settings, job, exc_string, name)
                    # A killed horse or a forced stop never wrote its tracker's final state.
                    end_progress(
                        self.settings,
                        self.connection,
                        job.id,
                        "failed",
                        failures.exception_line(exc_string),
                    )
            except Exception as exc:  # a report; the job's RQ state is already recorded
                log.warning("job %s: failure not reported: %s", job.id, exc)
        self._force_stop.discard(job.id)

    def _handled(self, item: Running, ok: bool, exc_string: str) -> dict[str, Any]:
        job = item.job
        return {
            "outcome": Outcome.HANDLED,
            "recorded": True,
            "ok": ok,
            "exc": exc_string,
            "runtime": runtime_of(job),
            "status": _status_text(job.get_status(refresh=False)),
        }

    def idle_if_free(self) -> None:
        """RQ's ``set_state(IDLE)`` after a job, when no other job of this process runs."""
        with self._lock:
            busy = bool(self._running)
        if not busy:
            self.set_state("idle")

    def _fail_unreadable(self, started: Started, exc_string: str) -> None:
        """A job hash the worker cannot even load: fail it (one failed-registry entry)."""
        log.error("job %s cannot be read: %s", started.job_id, exc_string.strip().splitlines()[-1])
        from rq.registry import FailedJobRegistry

        job = AcmeqJob(started.job_id, connection=self.connection, serializer=JSONSerializer)
        composite = f"{started.job_id}:{started.exec_id}"
        with self.connection.pipeline() as pipe:
            pipe.hset(
                job.key,
                mapping={
                    "status": JobStatus.FAILED.value,
                    "exc_info": zlib.compress(exc_string.encode()),  # as RQ stores it
                },
            )
            pipe.zrem(self.queue_obj.started_job_registry.key, composite)
            pipe.delete(keys.execution(composite))
            pipe.srem(self.executions_key, composite)
            pipe.zadd(
                FailedJobRegistry(self.opts.queue, connection=self.connection).key,
                {started.job_id: time.time() + 7 * 24 * 3600},
            )
            pipe.hincrby(self.key, "failed_job_count", 1)
            pipe.execute()
        self.metrics.record(time.time(), self.opts.queue, "?", 0.0, ok=False)


def _status_text(status: JobStatus | None) -> str:
    return status.value if isinstance(status, JobStatus) else str(status or "")


def runtime_of(job: AcmeqJob) -> float:
    if job.started_at is None:
        return 0.0
    end = job.ended_at or datetime.now(UTC)
    return max((end - job.started_at).total_seconds(), 0.0)


def _exc_info() -> ExcInfo:
    import sys

    return sys.exc_info()
