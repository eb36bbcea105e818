"""The worker's watchdog thread: heartbeats, metrics flushes, deadlines (threads mode), forced
stops after a cancel, and the hard memory limit.

Threads mode cannot interrupt a job blocked in C (a ``time.sleep``, a socket read), so at the
deadline the watchdog itself fails the job with RQ's ``JobTimeoutException`` message (retried
per its tries), raises the exception in its thread in case it can still be interrupted, and
abandons the thread. A thread still busy ``ABANDON_GRACE_S`` later makes the process retire
(exit RECYCLE once its other jobs end; the master starts a fresh one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis
from rq.timeouts import JobTimeoutException
from rq.utils import utcformat

from acmeq.constants import WorkerExit
from acmeq.worker.base import MemoryLimitExceeded, Running
from acmeq.worker.metrics_buffer import FLUSH_EVERY_S
from acmeq.worker.osutil import raise_in_thread
from acmeq.worker.recording import runtime_of
from acmeq.worker.states import ExecutionModel, Outcome

if TYPE_CHECKING:
    from acmeq.worker.recording import RecordingWorker

log = logging.getLogger("acmeq.worker")

HEARTBEAT_S = 10.0  # worker/job heartbeat while busy or idle
WATCHDOG_S = 0.25
MEMORY_HARD_FACTOR = 1.15  # a running job beyond limit x this is stopped
MEMORY_EXIT_FACTOR = 1.5  # threads: past this the process exits at once (jobs recovered)
FORCE_STOP_AFTER_S = 2.0  # after a cancel's grace period, before the worker stops a job itself
ABANDON_GRACE_S = 10.0  # threads: an abandoned job thread has this long to end
MEMORY_EXIT_AFTER_S = 5.0  # the culprit's failure has this long to free its memory


def timeout_message(timeout: int) -> str:
    """RQ's own message (``UnixSignalDeathPenalty``)."""
    return f"Task exceeded maximum timeout value ({timeout} seconds)"


class Watchdog:
    """Runs in its own daemon thread until the worker stops with nothing running."""

    def __init__(self, worker: RecordingWorker) -> None:
        self.w = worker
        self.thread = threading.Thread(target=self.run, name="acmeq-watchdog", daemon=True)
        self._over_since = 0.0  # monotonic: RSS first seen past the hard limit

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        w = self.w
        last_beat = last_cancel = last_flush = 0.0
        while not (w._stop.is_set() and not w._running):
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                with contextlib.suppress(redis.RedisError):
                    self.heartbeat_all()
            if now - last_flush >= FLUSH_EVERY_S:
                last_flush = now
                with contextlib.suppress(redis.RedisError):
                    w.metrics.flush(w.connection)
            if w.mode == ExecutionModel.THREADS:
                self.enforce_deadlines(now)
            if now - last_cancel >= 1.0:
                last_cancel = now
                with contextlib.suppress(redis.RedisError):
                    self.enforce_cancels()
            if w.opts.memory_mb:
                self.enforce_memory()
            time.sleep(WATCHDOG_S)

    def heartbeat_all(self) -> None:
        w = self.w
        stamp = utcformat(datetime.now(UTC))
        running = w.running()
        pipe = w.connection.pipeline(transaction=False)
        ttl = w.worker_ttl + 60
        pipe.hset(
            w.key,
            mapping={
                "last_heartbeat": stamp,
                "acmeq_jobs": w.jobs_done,
                "acmeq_rss_mb": round(w.rss_mb(), 1),
            },
        )
        pipe.expire(w.key, ttl)
        pipe.expire(w.executions_key, ttl)
        for item in running:
            if item.claimed:
                continue
            pipe.hset(item.job.key, "last_heartbeat", stamp)
            pipe.hset(item.execution.key, "last_heartbeat", time.time())
        pipe.execute()

    # -- threads mode: deadlines ---------------------------------------------------------------
    def enforce_deadlines(self, now: float) -> None:
        w = self.w
        for item in w.running():
            if item.abandoned_at:
                if now - item.abandoned_at > ABANDON_GRACE_S and w.exit_code == WorkerExit.OK:
                    log.error(
                        "job %s's thread did not end %d s after its deadline: retiring",
                        item.job.id,
                        ABANDON_GRACE_S,
                    )
                    w.exit_code = WorkerExit.RECYCLE
                    w._stop.set()
                continue
            if item.deadline and now > item.deadline and item.performing:
                self.abandon(item, Outcome.TIMEOUT, timeout_message(item.timeout))

    def abandon(self, item: Running, outcome: Outcome, message: str) -> None:
        """Fail a job from here (threads mode) and leave its thread to end by itself."""
        w = self.w
        if not w.claim(item):
            return
        exc = JobTimeoutException if outcome == Outcome.TIMEOUT else MemoryLimitExceeded
        raise_in_thread(item.thread_id, exc)
        job = item.job
        job.ended_at = datetime.now(UTC)
        exc_string = f"{exc.__module__}.{exc.__qualname__}: {message}"  # as RQ formats it
        log.warning("job %s: %s", job.id, exc_string)
        try:
            w.redis_retry(lambda: w.record_failure_string(job, item.execution, exc_string, outcome))
            w.after_failure(job, exc_string, runtime_of(job))
        except Exception:
            log.exception("job %s: failure not recorded", job.id)
        # Only now may the process retire without this thread (its outcome is recorded).
        item.abandoned_at = time.monotonic()

    # -- cancels --------------------------------------------------------------------------------
    def enforce_cancels(self) -> None:
        """Stop running jobs whose cancel grace period is over (`acmeq job cancel`)."""
        w = self.w
        running = {r.job.id: r for r in w.running() if not r.claimed}
        if not running:
            return
        from acmeq.progress import JobCancelled, stop_requested

        now = time.monotonic()
        for job_id in stop_requested(w.connection, running) - w._force_stop:
            # A tracked job is stopped by its own tracker when the grace period ends; the worker
            # steps in only for a job still running FORCE_STOP_AFTER_S later (an untracked job).
            first = w._stop_seen.setdefault(job_id, now)
            if now - first < FORCE_STOP_AFTER_S:
                continue
            item = running[job_id]
            w._force_stop.add(job_id)
            log.warning("job %s did not stop after its cancel grace period: stopping it", job_id)
            if w._horse_pid:
                continue  # fork: the parent's wait loop kills the horse
            if item.performing:
                w.interrupt(item, JobCancelled)
        for job_id in list(w._stop_seen):
            if job_id not in running:
                del w._stop_seen[job_id]

    # -- memory ---------------------------------------------------------------------------------
    def enforce_memory(self) -> None:
        w = self.w
        rss = w.rss_mb()
        if rss <= w.opts.memory_mb * MEMORY_HARD_FACTOR:
            return
        reason = f"memory limit {w.opts.memory_mb} MB exceeded (RSS {rss:.0f} MB)"
        if w._horse_pid:
            # Fork: the parent is free; it records the failure when it reaps the child.
            log.error("MemoryLimitExceeded: %s: killing the work horse", reason)
            w._memory_reason = f"MemoryLimitExceeded: {reason}"
            with contextlib.suppress(OSError):
                os.kill(w._horse_pid, signal.SIGKILL)
            return
        running = [r for r in w.running() if not r.claimed]
        if w.exit_code != WorkerExit.MEMORY_LIMIT:
            log.error("MemoryLimitExceeded: %s: failing the culprit and retiring", reason)
            w.exit_code = WorkerExit.MEMORY_LIMIT
            w._stop.set()
        if running and w.mode == ExecutionModel.THREADS:
            # Only the job that grew the most since it started is failed; the others finish
            # while the process retires (or are recovered if it must exit at once below).
            culprit = max(running, key=lambda r: rss - r.rss_at_start)
            self.abandon(culprit, Outcome.MEMORY, reason)
        elif running:
            w.interrupt(running[0], MemoryLimitExceeded, reason)
        self._over_since = self._over_since or time.monotonic()
        late = time.monotonic() - self._over_since > MEMORY_EXIT_AFTER_S
        if rss > w.opts.memory_mb * MEMORY_EXIT_FACTOR and late:
            log.error("RSS %.0f MB: exiting at once; running jobs are recovered", rss)
            with contextlib.suppress(Exception):
                w.metrics.flush(w.connection)
            os._exit(int(WorkerExit.MEMORY_LIMIT))
