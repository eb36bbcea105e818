"""The worker process a pool runs: one queue, one of three execution models.

A master starts each worker as ``python -m acmeq.worker '<WorkerOptions as JSON>'`` and reads
its exit code (:class:`acmeq.constants.WorkerExit`). :class:`AcmeqWorker` is an RQ worker: it
registers, heartbeats, listens to RQ's worker commands and records jobs where RQ does
(``rq info`` and rq-dashboard see it), but runs plain jobs through :mod:`acmeq.worker.fastpath`
(one round trip per job when busy instead of ~18); everything else goes through RQ's own code
(:mod:`acmeq.worker.recording`). It adds what RQ lacks: pause per queue or supervisor, memory
limits, recycling after ``max_jobs`` / ``max_time``, a liveness file for its master, waiting
out Redis outages, and three execution models (:class:`~acmeq.worker.states.ExecutionModel`):

- ``inline``: jobs run in the worker process (SIGALRM timeouts), like Laravel's ``queue:work``;
- ``threads``: up to ``concurrency`` jobs at once in threads (deadlines by the watchdog);
- ``fork``: each job in a forked work horse (:mod:`acmeq.worker.horse`), for isolation.

Signals: SIGTERM asks for a graceful stop (running jobs finish); a second SIGTERM or a SIGINT
stops fast: running jobs are interrupted and go through RQ's failure handling, so they are
retried per their queue's tries or failed, never lost.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import redis
from rq import Retry
from rq.executions import Execution
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from acmeq.constants import WorkerExit
from acmeq.queues import AcmeqJob
from acmeq.storage.redis_client import text
from acmeq.worker import commands
from acmeq.worker.base import (
    MemoryLimitExceeded,
    Running,
    ShutdownInterrupt,
    StopJobRequested,
)
from acmeq.worker.fastpath import Started, encode_result, needs_slow_path
from acmeq.worker.horse import perform_forked
from acmeq.worker.options import WorkerOptions
from acmeq.worker.osutil import format_exc, raise_in_thread, set_parent_death_signal
from acmeq.worker.recording import RecordingWorker
from acmeq.worker.states import ExecutionModel, Outcome, Reply, StopMode
from acmeq.worker.watchdog import Watchdog, timeout_message

__all__ = ["AcmeqWorker", "WorkerOptions", "main"]

log = logging.getLogger("acmeq.worker")

IDLE_BLOCK_S = 1  # BLMOVE timeout: bounds how late a pause or stop is noticed while idle
BOOT_REDIS_WAIT_S = 15.0  # at boot, how long to wait for Redis before REDIS_UNAVAILABLE
_INTERRUPTS = (ShutdownInterrupt, StopJobRequested, MemoryLimitExceeded, JobTimeoutException)
T = TypeVar("T")


class AcmeqWorker(RecordingWorker):
    """An RQ worker for one queue running jobs through acmeq's lean path."""

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> WorkerExit:
        """Register, serve the queue until told to stop, deregister; return the exit code."""
        # Modules a thread would otherwise import lazily: a fork while a thread holds an import
        # lock leaves the horse deadlocked on it.
        import acmeq.ops.failure_log
        import acmeq.progress  # noqa: F401

        self.liveness.alive(force=True)
        self.register_birth()
        self.connection.hset(
            self.key,
            mapping={
                "state": "idle",
                "acmeq_master": self.opts.master,
                "acmeq_supervisor": self.opts.supervisor,
                "acmeq_mode": self.opts.mode,
                "acmeq_concurrency": self.opts.concurrency,
                "acmeq_memory_mb": self.opts.memory_mb,
                "acmeq_jobs": 0,
            },
        )
        self.subscribe()  # RQ's worker commands, as RQ's bootstrap() does
        self._install_signals()
        Watchdog(self).start()
        self.liveness.alive(force=True)
        try:
            if self.mode == ExecutionModel.THREADS and self.opts.concurrency > 1:
                self._run_threads()
            else:
                self._serve()
        finally:
            self._stop.set()
            with contextlib.suppress(Exception):
                self.unsubscribe()
            with contextlib.suppress(redis.RedisError):
                self.metrics.flush(self.connection)
            with contextlib.suppress(redis.RedisError):
                self.register_death()
        return self.exit_code

    def handle_payload(self, message: Any) -> None:  # RQ's pub/sub callback
        commands.handle(self, message)

    def _install_signals(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set() or signum == signal.SIGINT:
                self.stop_mode = StopMode.FAST
                self._stop.set()
                self._interrupt_all()
            else:
                self.request_stop_graceful()  # the loops notice between jobs

        def on_usr1(signum: int, frame: FrameType | None) -> None:
            pending, self._main_interrupt = self._main_interrupt, None
            if pending is not None and any(r.performing for r in self._main_running()):
                raise pending[0](pending[1])

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGUSR1, on_usr1)

    def _main_running(self) -> list[Running]:
        main = threading.main_thread().ident
        return [r for r in self.running() if r.thread_id == main]

    def _interrupt_all(self) -> None:
        # Threads get an asynchronous exception; the main thread gets it from this handler's
        # frame when the signal arrived while it ran a job (inline mode).
        running = self.running()
        main = threading.main_thread().ident
        for item in running:
            if item.performing and item.thread_id != main:
                raise_in_thread(item.thread_id, ShutdownInterrupt)
        if self._horse_pid:
            with contextlib.suppress(OSError):
                os.kill(self._horse_pid, signal.SIGKILL)  # fork: the parent records the failure
        elif any(item.performing and item.thread_id == main for item in running):
            raise ShutdownInterrupt("worker stopped fast (second SIGTERM or SIGINT)")

    def _should_stop(self) -> bool:
        """Whether to stop taking jobs: stop requested, max_time reached or memory over limit."""
        if self._stop.is_set():
            return True
        if self.opts.max_time and time.monotonic() - self.started_mono >= self.opts.max_time:
            self.exit_code = WorkerExit.RECYCLE
            return True
        if self.opts.memory_mb and self.rss_mb() > self.opts.memory_mb:
            # Laravel/Horizon semantics: the worker exits after the job and is replaced.
            log.warning("RSS above the %d MB limit: exiting to be replaced", self.opts.memory_mb)
            self.exit_code = WorkerExit.MEMORY_LIMIT
            return True
        return False

    def _reserve(self) -> bool:
        """Claim the right to take one more job (max_jobs counts jobs taken, across threads)."""
        if self._should_stop():
            return False
        with self._lock:
            if self.opts.max_jobs and self.jobs_taken >= self.opts.max_jobs:
                self.exit_code = WorkerExit.RECYCLE
                return False
            self.jobs_taken += 1
            return True

    def _release(self) -> None:
        with self._lock:
            self.jobs_taken -= 1

    # -- the serving loop ----------------------------------------------------------------------
    def _serve(self) -> None:
        """Take, run and finish jobs one at a time until a stop condition holds. A Redis error
        never ends the loop: it waits (bounded backoff with jitter) and resumes."""
        main = threading.current_thread() is threading.main_thread()
        started: Started | None = None
        while True:
            if main:
                self.liveness.alive()
            try:
                if started is None or started.kind != Reply.JOB:
                    if not self._reserve():
                        return
                    try:
                        started = self._next_job()
                    except BaseException:
                        self._release()
                        raise
                    self.outage.ok()
                    if started is None:
                        self._release()
                        if self.opts.burst:
                            if not self._others_running():
                                return
                            # a running job may still retry or enqueue dependents
                            self._stop.wait(0.05)
                        continue
                started = self._run_job(started)
            except redis.RedisError as exc:
                started = None
                self.outage.wait(exc)
            except _INTERRUPTS:
                # An interrupt that arrived just after its job ended: nothing to undo.
                started = None
            except Exception:
                # A bug or a hostile job hash must cost that job, never the worker.
                log.exception("unexpected error while serving %s", self.opts.queue)
                started = None
                self._stop.wait(0.1)

    def _exec_id(self) -> str:
        """A new execution id: unique per process start and job (cheaper than uuid4 per job)."""
        return f"{self._exec_prefix}{next(self._exec_counter):x}"

    def _others_running(self) -> bool:
        return any(not r.abandoned_at for r in self.running())

    def _run_threads(self) -> None:
        threads = [
            threading.Thread(target=self._serve, name=f"acmeq-job-{i}", daemon=True)
            for i in range(self.opts.concurrency)
        ]
        for thread in threads:
            thread.start()
        # The main thread stays free for signals and the liveness file; it waits for the job
        # threads, except one abandoned after a deadline (the process then retires without it).
        while True:
            self.liveness.alive()
            abandoned = {r.thread_id for r in self.running() if r.abandoned_at}
            alive = [t for t in threads if t.is_alive() and t.ident not in abandoned]
            if not alive:
                return
            alive[0].join(0.2)

    def _next_job(self) -> Started | None:
        """Start the next job, blocking up to IDLE_BLOCK_S when the queue is empty."""
        started = self.fast.start(self._exec_id())
        if started.kind == Reply.JOB:
            return started
        if started.kind == Reply.PAUSED:
            self._stop.wait(1.0)
            return None
        if started.kind == Reply.GONE or self.opts.burst:
            return None
        # Empty: block on the queue. BLMOVE parks the id in the intermediate list, which the
        # master's maintenance recovers if this process dies before the start script runs.
        job_id = self.connection.blmove(
            self.queue_obj.key, self.queue_obj.intermediate_queue_key, IDLE_BLOCK_S, "LEFT", "RIGHT"
        )
        if job_id is None:
            return None
        if self._stop.is_set():
            # Stopped while blocked: the job goes back to the head of the queue, untouched.
            self.fast.give_back(text(job_id))
            return None
        started = self.fast.start(self._exec_id(), text(job_id))
        return started if started.kind == Reply.JOB else None

    # -- one job -------------------------------------------------------------------------------
    def _prepare(self, started: Started) -> Running:
        """The job object the job sees: as RQ's worker leaves it after preparing the job
        (status started, worker name, heartbeat, start time)."""
        assert started.fields is not None
        job = AcmeqJob(started.job_id, connection=self.connection, serializer=JSONSerializer)
        started_ts = time.time()
        stamp = datetime.fromtimestamp(started_ts, UTC)
        execution = Execution(started.exec_id, started.job_id, self.connection, self.name)
        execution.created_at = execution.last_heartbeat = stamp
        item = Running(job, execution, threading.get_ident(), 0, 0.0, started_ts)
        job.restore(started.fields)
        job.worker_name = self.name
        job.last_heartbeat = job.started_at = stamp
        job._status = JobStatus.STARTED
        item.timeout = self.timeout_of(job)
        item.deadline = time.monotonic() + item.timeout if item.timeout > 0 else 0.0
        item.slow = needs_slow_path(started.fields)
        return item

    def _run_job(self, started: Started) -> Started | None:
        """Run one started job and record its outcome; may return the next started job."""
        try:
            item = self._prepare(started)
        except Exception:
            self._fail_unreadable(started, format_exc())
            return None
        if self.opts.memory_mb and self.mode == ExecutionModel.THREADS:
            item.rss_at_start = self.rss_mb()
        with self._lock:
            self._running[item.execution.id] = item
        if self.mode != ExecutionModel.THREADS:
            self.liveness.busy(item.timeout)
        try:
            if self.mode == ExecutionModel.FORK:
                reply = perform_forked(self, item)
            else:
                reply = self.execute(item)
        finally:
            with self._lock:
                self._running.pop(item.execution.id, None)
                self.jobs_done += 1
            if self.mode != ExecutionModel.THREADS:
                self.liveness.alive()
        return self._conclude(item, reply)

    def execute(self, item: Running) -> dict[str, Any]:
        """Run the job here (job thread, or the fork horse) and record anything but a plain
        success through RQ; see :mod:`acmeq.worker.horse` for the reply."""
        job = item.job
        try:
            item.performing = True
            if self.fast_stop:
                # The stop arrived between the start script and here: honour it now.
                raise ShutdownInterrupt("worker stopped fast (second SIGTERM or SIGINT)")
            if job.id in self._stop_job_ids:
                raise StopJobRequested("stopped by user")
            here = threading.current_thread() is threading.main_thread()
            if here and item.timeout > 0:
                with UnixSignalDeathPenalty(item.timeout, JobTimeoutException, job_id=job.id):
                    value = job.perform()
            else:
                value = job.perform()  # threads: the watchdog enforces the deadline
        except Exception as exc:
            item.performing = False
            exc_info = sys.exc_info()
            if not self.claim(item):
                return {"outcome": Outcome.HANDLED, "recorded": False}
            outcome = self._classify(job, exc)
            exc_string = self.redis_retry(
                lambda: self.record_failure_rq(job, item.execution, exc_info, outcome)
            )
            return self._handled(item, False, exc_string)
        finally:
            item.performing = False
        if not self.claim(item):
            return {"outcome": Outcome.HANDLED, "recorded": False}  # failed by the watchdog
        if (
            self.mode == ExecutionModel.THREADS
            and item.deadline
            and time.monotonic() > item.deadline
        ):
            # Past its deadline before the watchdog noticed (a starved watchdog): still a timeout.
            message = f"rq.timeouts.JobTimeoutException: {timeout_message(item.timeout)}"
            exc_string = self.redis_retry(
                lambda: self.record_failure_string(job, item.execution, message, Outcome.TIMEOUT)
            )
            return self._handled(item, False, exc_string)
        if isinstance(value, Retry) or item.slow:
            ok = self.redis_retry(lambda: self.record_success_rq(job, item.execution, value))
            return self._handled(item, ok, "")
        return {"outcome": Outcome.OK, "value": value}

    def _classify(self, job: AcmeqJob, exc: BaseException) -> Outcome:
        if isinstance(exc, StopJobRequested) or job.id in self._stop_job_ids:
            return Outcome.STOPPED
        if isinstance(exc, MemoryLimitExceeded):
            return Outcome.MEMORY
        if isinstance(exc, JobTimeoutException):
            return Outcome.TIMEOUT
        return Outcome.FAILED

    def _conclude(self, item: Running, reply: dict[str, Any]) -> Started | None:
        """Record what the run left to record; a plain success may start the next job."""
        job = item.job
        if reply["outcome"] == Outcome.OK:
            # Decided after the job: a stop, max_jobs or memory limit reached meanwhile holds.
            take_next = self._reserve()
            wt = time.time() - item.started_ts
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            result = encode_result(reply.get("value"))
            next_exec = self._exec_id() if take_next else None
            try:
                nxt = self.redis_retry(
                    lambda: self.fast.finish(
                        job.id,
                        item.execution.id,
                        result,
                        result_ttl,
                        wt,
                        item.started_ts,
                        next_exec,
                    )
                )
            except BaseException:
                if take_next:
                    self._release()
                raise
            if take_next and nxt.kind != Reply.JOB:
                self._release()
            if nxt.kind != Reply.SLOW:
                self._count_success(item, wt)
                return nxt if nxt.kind == Reply.JOB else None
            # It gained dependents meanwhile: RQ's own success handling enqueues them.
            ok = self.redis_retry(
                lambda: self.record_success_rq(job, item.execution, reply.get("value"))
            )
            reply = self._handled(item, ok, "")
        if reply.get("recorded"):
            if reply["ok"]:
                self._count_success(item, float(reply["runtime"]))
            else:
                status = JobStatus(reply["status"]) if reply.get("status") else None
                self.after_failure(job, str(reply["exc"]), float(reply["runtime"]), status)
            with contextlib.suppress(redis.RedisError):
                self.idle_if_free()
        if reply.get("memory"):
            self.exit_code = WorkerExit.MEMORY_LIMIT
            self._stop.set()
        return None

    def _count_success(self, item: Running, runtime: float) -> None:
        job = item.job
        wait = item.started_ts - job.enqueued_at.timestamp() if job.enqueued_at else 0.0
        self.metrics.record(time.time(), self.opts.queue, job_name_of(job), runtime, wait)


def job_name_of(job: AcmeqJob) -> str:
    from acmeq.worker.hooks import job_name

    return job_name(job)


def _boot(opts: WorkerOptions) -> AcmeqWorker | int:
    """Settings, job modules, Redis (waited for), the worker object; or an exit code."""
    try:
        # Any failure here but Redis is BOOT_ERROR, which makes the master halt the pool
        # instead of respawning a worker that can never start.
        from acmeq.config.settings import process_settings
        from acmeq.queues import registry_for
        from acmeq.storage.redis_client import connect

        settings = process_settings()
        registry_for(settings)
        connection = connect(settings)
    except Exception as exc:
        return _boot_error(opts, f"cannot boot: {type(exc).__name__}: {exc}")
    wait_s = float(os.environ.get("ACMEQ_WORKER_REDIS_WAIT_S", BOOT_REDIS_WAIT_S))
    give_up = time.monotonic() + wait_s
    delay = 0.1
    while True:
        try:
            connection.ping()
            return AcmeqWorker(opts, settings, connection)
        except redis.RedisError as exc:
            if time.monotonic() >= give_up:
                message = f"Redis unreachable: {type(exc).__name__}: {exc}"
                _boot_error(opts, message)
                return int(WorkerExit.REDIS_UNAVAILABLE)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _boot_error(opts: WorkerOptions, message: str) -> int:
    sys.stderr.write(f"acmeq worker: {message}\n")
    if opts.boot_report:
        with contextlib.suppress(OSError):
            Path(opts.boot_report).write_text(message)
    return int(WorkerExit.BOOT_ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process; returns a :class:`WorkerExit` code."""
    # First of all: die with the master (set here, not by the master's preexec_fn, which is
    # unsafe while the master runs other threads).
    ppid = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != ppid:
        return int(WorkerExit.OK)  # the master died while this process started
    parser = argparse.ArgumentParser(prog="acmeq.worker")
    parser.add_argument("options", help="WorkerOptions as JSON")
    args = parser.parse_args(argv)
    opts = WorkerOptions.from_json(args.options)
    logging.basicConfig(
        level=opts.log_level,
        format=f"%(asctime)s worker[{os.getpid()}] {opts.queue} %(levelname)s %(message)s",
    )
    worker = _boot(opts)
    if isinstance(worker, int):
        return worker
    try:
        return int(worker.run())
    except redis.RedisError as exc:
        # Redis went away during registration: transient for the master.
        sys.stderr.write(f"acmeq worker: Redis unreachable: {exc}\n")
        return int(WorkerExit.REDIS_UNAVAILABLE)


if __name__ == "__main__":
    sys.exit(main())
