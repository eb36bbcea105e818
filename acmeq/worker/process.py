"""The worker process a pool runs: one queue, one of three execution models.

A supervisor starts each worker as ``python -m acmeq.worker '<WorkerOptions as JSON>'`` and reads
its exit code (:class:`acmeq.constants.WorkerExit`). :class:`AcmeqWorker` is an RQ worker: it
registers, heartbeats and records jobs where RQ does (``rq info`` and rq-dashboard see it), but
runs jobs through :mod:`acmeq.worker.fastpath` (one round trip per job when busy instead of ~18)
and adds
what RQ lacks: pause per queue or supervisor, memory limits, recycling after ``max_jobs`` /
``max_time``, and three execution models:

- ``inline``: jobs run in the worker process (SIGALRM timeouts), like Laravel's ``queue:work``;
- ``threads``: up to ``concurrency`` jobs at once in threads (timeouts by the watchdog thread);
- ``fork``: each job in a forked child, for isolation; the parent enforces timeout and memory.

Signals: SIGTERM asks for a graceful stop (running jobs finish); a second SIGTERM or a SIGINT
stops fast: running jobs are interrupted and go through RQ's failure handling, so they are
retried per their queue's tries or failed, never lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import uuid4

import psutil
import redis
from rq import SimpleWorker
from rq.executions import Execution
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.utils import utcformat

from acmeq.config.settings import Settings
from acmeq.constants import PAUSED_QUEUE_KEY, PAUSED_SUPERVISOR_KEY, WorkerExit
from acmeq.observability import metrics
from acmeq.ops import failure_log as failures
from acmeq.queues import AcmeqJob
from acmeq.storage.redis_client import text
from acmeq.worker.fastpath import STATS_KEY, FastPath, Started, encode_result, needs_slow_path
from acmeq.worker.support import (
    cancel_requested,
    end_progress,
    format_exc,
    job_name,
    raise_in_thread,
    run_horse,
)

log = logging.getLogger("acmeq.worker")

HEARTBEAT_S = 10.0  # worker/job heartbeat while busy or idle
IDLE_BLOCK_S = 1  # BLMOVE timeout: bounds how late a pause or stop is noticed while idle
MEMORY_HARD_FACTOR = 1.15  # a running job beyond limit x this is stopped (watchdog)
WATCHDOG_S = 0.25
FORCE_STOP_AFTER_S = 2.0  # after a cancel's grace period, before the worker stops a job itself


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker process needs besides the environment (which carries the settings)."""

    queue: str
    mode: str = "inline"  # fork | inline | threads
    concurrency: int = 1  # jobs at once (mode threads)
    memory_mb: int = 0  # RSS limit checked after each job; 0: none
    timeout: int = 0  # job timeout override, s; 0: the job's own (its queue's)
    max_jobs: int = 0  # exit with RECYCLE after this many jobs; 0: never
    max_time: int = 0  # exit with RECYCLE after this many seconds; 0: never
    name: str = ""  # RQ worker name prefix; the pid is appended
    master: str = ""  # the master that started it (pause keys, `worker list`)
    supervisor: str = ""
    burst: bool = False  # exit when the queue is empty (tests, demo, benchmarks)
    log_level: str = "WARNING"
    boot_report: str = ""  # file to write a boot error into, for the supervisor to show

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerOptions:
        return cls(**json.loads(text))


class ShutdownInterrupt(Exception):
    """Raised inside a running job by a fast stop (second SIGTERM, or SIGINT)."""


class MemoryLimitExceeded(Exception):
    """Recorded as the failure of a job that drove the worker far past its memory limit."""


@dataclass
class _Running:
    job: AcmeqJob
    execution: Execution
    thread_id: int
    deadline: float  # monotonic; 0: no timeout
    performing: bool = False  # inside the job function (a fast stop may interrupt it)


class AcmeqWorker(SimpleWorker):
    """An RQ worker for one queue running jobs through acmeq's lean path."""

    death_penalty_class = UnixSignalDeathPenalty

    def __init__(self, opts: WorkerOptions, settings: Settings, connection: redis.Redis) -> None:
        prefix = opts.name or socket.gethostname()
        super().__init__(
            [opts.queue],
            name=f"{prefix}.{os.getpid()}",
            connection=connection,
            job_class=AcmeqJob,
            serializer=JSONSerializer,
        )
        self.opts = opts
        self.settings = settings
        pause = [PAUSED_QUEUE_KEY.format(queue=opts.queue)]
        if opts.master and opts.supervisor:
            pause.append(
                PAUSED_SUPERVISOR_KEY.format(master=opts.master, supervisor=opts.supervisor)
            )
        self.fast = FastPath(
            connection,
            opts.queue,
            self.name,
            pause,
            opts.timeout,
            settings.metrics_minute_retention,
            settings.metrics_hour_retention,
        )
        # Every pooled connection carries the worker's name (RQ names only the first), so
        # `CLIENT LIST` shows which worker holds a blocking BLMOVE or a slow script.
        connection.connection_pool.connection_kwargs["client_name"] = self.name
        self.queue_obj = self.queues[0]
        self.process = psutil.Process()
        self.started_mono = time.monotonic()
        self.jobs_done = 0
        self.jobs_taken = 0
        self.exit_code = WorkerExit.OK
        self._stop = threading.Event()  # graceful: take no new job
        self._fast_stop = False
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}  # execution id -> running job
        self._memory_reason = ""  # set by the watchdog when it killed a forked job for memory
        self._force_stop: set[str] = set()  # jobs being stopped by force after a cancel
        self._stop_seen: dict[str, float] = {}  # job id -> when its stop request was first seen

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> WorkerExit:
        """Register, serve the queue until told to stop, deregister; return the exit code."""
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
        self._install_signals()
        watchdog = threading.Thread(target=self._watchdog, name="acmeq-watchdog", daemon=True)
        watchdog.start()
        try:
            if self.opts.mode == "threads" and self.opts.concurrency > 1:
                self._run_threads()
            elif self.opts.mode == "fork":
                self._serve(fork=True)
            else:
                self._serve(fork=False)
        finally:
            self._stop.set()
            with contextlib.suppress(redis.RedisError):
                self.register_death()
        return self.exit_code

    def _install_signals(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set() or signum == signal.SIGINT:
                self._fast_stop = True
                self._stop.set()
                self._interrupt_all()
            else:
                self._stop.set()  # graceful: the loops notice between jobs

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def _interrupt_all(self) -> None:
        # Threads get an asynchronous exception; the main thread gets it from this handler's
        # frame when the signal arrived while it ran a job (inline mode).
        with self._lock:
            running = list(self._running.values())
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
        if self.opts.memory_mb and self._rss_mb() > self.opts.memory_mb:
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

    def _rss_mb(self) -> float:
        rss = self.process.memory_info().rss
        if self.opts.mode == "fork":
            with contextlib.suppress(psutil.Error):
                rss = max([rss] + [c.memory_info().rss for c in self.process.children()])
        return float(rss) / (1024 * 1024)

    # -- the serving loop ----------------------------------------------------------------------
    def _serve(self, fork: bool) -> None:
        """Take, run and finish jobs one at a time until a stop condition holds."""
        started: Started | None = None
        while True:
            if started is None or started.kind != "job":
                if not self._reserve():
                    return
                started = self._next_job()
                if started is None:
                    self._release()
                    if self.opts.burst:
                        return
                    continue
            started = self._run_job(started, fork)

    def _run_threads(self) -> None:
        threads = [
            threading.Thread(target=self._serve, args=(False,), name=f"acmeq-job-{i}", daemon=True)
            for i in range(self.opts.concurrency)
        ]
        for thread in threads:
            thread.start()
        # The main thread stays free for signals; it waits for the job threads.
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)

    def _next_job(self) -> Started | None:
        """Start the next job, blocking up to IDLE_BLOCK_S when the queue is empty."""
        started = self.fast.start(uuid4().hex)
        if started.kind == "job":
            return started
        if started.kind == "paused":
            self._stop.wait(1.0)
            return None
        if started.kind == "gone" or self.opts.burst:
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
        started = self.fast.start(uuid4().hex, text(job_id))
        return started if started.kind == "job" else None

    def _run_job(self, started: Started, fork: bool) -> Started | None:
        """Run one started job and record its outcome; may return the next started job."""
        assert started.fields is not None
        job = AcmeqJob(started.job_id, connection=self.connection, serializer=JSONSerializer)
        job.restore(started.fields)
        exec_id = started.exec_id
        execution = Execution(exec_id, job.id, self.connection, worker_name=self.name)
        started_ts = time.time()
        job.started_at = datetime.fromtimestamp(started_ts, UTC)
        execution.created_at = job.started_at
        timeout = int(self.opts.timeout or job.timeout or 180)
        item = _Running(
            job,
            execution,
            threading.get_ident(),
            time.monotonic() + timeout if timeout > 0 else 0.0,
        )
        with self._lock:
            self._running[exec_id] = item
        try:
            if fork:
                outcome, value = self._perform_forked(job, timeout)
            else:
                outcome, value = self._perform_inline(job, timeout, item)
        finally:
            with self._lock:
                self._running.pop(exec_id, None)
        with self._lock:
            self.jobs_done += 1
        if outcome == "ok" and not needs_slow_path(started.fields):
            # Decided after the job: a stop, max_jobs or memory limit reached meanwhile holds.
            take_next = self._reserve()
            wt = time.time() - started_ts
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            wait = started_ts - job.enqueued_at.timestamp() if job.enqueued_at else 0.0
            reply = self.fast.finish(
                job.id,
                exec_id,
                encode_result(value),
                result_ttl,
                wt,
                started_ts,
                uuid4().hex if take_next else None,
                job_name=job_name(job),
                wait=wait,
            )
            if take_next and reply.kind != "job":
                self._release()
            if reply.kind != "slow":
                return reply if reply.kind == "job" else None
        job.ended_at = datetime.now(UTC)
        if outcome == "ok":
            job._result = value
            job._status = JobStatus.FINISHED
            self.handle_job_success(
                job, self.queue_obj, self.queue_obj.started_job_registry, execution
            )
        elif outcome == "memory":
            # A memory hog fails for good: retrying would only kill the next worker too.
            self._record_failure(job, execution, str(value), retry=False)
            self.exit_code = WorkerExit.MEMORY_LIMIT
            self._stop.set()
        else:
            self._record_failure(job, execution, str(value))
        return None

    def _perform_inline(self, job: AcmeqJob, timeout: int, item: _Running) -> tuple[str, Any]:
        try:
            item.performing = True
            if self._fast_stop:
                # The stop arrived between the start script and here: honour it now.
                raise ShutdownInterrupt("worker stopped fast (second SIGTERM or SIGINT)")
            if threading.current_thread() is threading.main_thread() and timeout > 0:
                with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                    return "ok", job.perform()
            return "ok", job.perform()  # threads: the watchdog enforces the deadline
        except Exception:
            return "failed", format_exc()
        finally:
            item.performing = False

    def _perform_forked(self, job: AcmeqJob, timeout: int) -> tuple[str, Any]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run the job, report through the pipe, never return
            run_horse(job, read_fd, write_fd)
        os.close(write_fd)
        self._horse_pid = pid
        deadline = time.monotonic() + timeout if timeout > 0 else None
        chunks: list[bytes] = []
        with os.fdopen(read_fd, "rb") as pipe:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    self._horse_pid = 0
                    return "failed", (
                        f"JobTimeoutException: Task exceeded maximum timeout "
                        f"value ({timeout} seconds)"
                    )
                if self._fast_stop or job.id in self._force_stop:
                    # A fast stop or a forced cancel that raced the fork: end the horse now.
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                ready, _, _ = select.select([pipe], [], [], 0.2)
                if ready:
                    chunk = pipe.read()
                    chunks.append(chunk)
                    break
        _, status = os.waitpid(pid, 0)
        self._horse_pid = 0
        raw = b"".join(chunks)
        if self._memory_reason:
            return "memory", self._memory_reason
        if not raw and job.id in self._force_stop:
            return "failed", "JobCancelled: stopped by force after the cancel grace period"
        if not raw:
            return "failed", f"work horse died unexpectedly (wait status {status})"
        reply = json.loads(raw)
        return ("ok" if reply["ok"] else "failed"), reply["value"]

    def _record_failure(
        self, job: AcmeqJob, execution: Execution, exc_string: str, retry: bool = True
    ) -> None:
        """RQ's failure handling: retry per the job's tries (with backoff) or fail it."""
        job._status = JobStatus.FAILED
        if job.ended_at is None:
            job.ended_at = datetime.now(UTC)
        cancelled = job.id in self._force_stop or cancel_requested(self.connection, job.id)
        if not retry or cancelled:
            # A cancelled job must not come back (a forked job's own retries_left = 0 never
            # reaches this process, so the cancel flag decides here).
            job.retries_left = 0
        self.handle_job_failure(job, self.queue_obj, exc_string=exc_string, execution=execution)
        runtime = (job.ended_at - job.started_at).total_seconds() if job.started_at else 0.0
        pipe = self.connection.pipeline(transaction=False)
        pipe.hincrby(STATS_KEY.format(queue=self.opts.queue), "failed", 1)
        metrics.record_failure(
            pipe,
            time.time(),
            self.opts.queue,
            job_name(job),
            runtime,
            self.settings.metrics_minute_retention,
            self.settings.metrics_hour_retention,
        )
        pipe.execute()
        if job.get_status(refresh=False) == JobStatus.FAILED:
            if cancelled:
                end_progress(
                    self.settings, self.connection, job.id, "cancelled", "cancelled by an operator"
                )
            else:
                failures.record_permanent(self.settings, job, exc_string, job_name(job))
                # A killed horse or a forced stop never wrote its tracker's final state.
                end_progress(
                    self.settings,
                    self.connection,
                    job.id,
                    "failed",
                    failures.exception_line(exc_string),
                )
        self._force_stop.discard(job.id)

    # -- watchdog: heartbeats, deadlines (threads), hard memory limit ---------------------------
    def _watchdog(self) -> None:
        last_beat = 0.0
        last_cancel_check = 0.0
        while not (self._stop.is_set() and not self._running):
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                with contextlib.suppress(redis.RedisError):
                    self._heartbeat_all()
            self._enforce_deadlines(now)
            if now - last_cancel_check >= 1.0:
                last_cancel_check = now
                with contextlib.suppress(redis.RedisError):
                    self._enforce_cancels()
            if self.opts.memory_mb:
                self._enforce_memory()
            time.sleep(WATCHDOG_S)

    def _heartbeat_all(self) -> None:
        stamp = utcformat(datetime.now(UTC))
        with self._lock:
            running = list(self._running.values())
        pipe = self.connection.pipeline(transaction=False)
        ttl = self.worker_ttl + 60
        pipe.hset(
            self.key,
            mapping={
                "last_heartbeat": stamp,
                "acmeq_jobs": self.jobs_done,
                "acmeq_rss_mb": round(self._rss_mb(), 1),
            },
        )
        pipe.expire(self.key, ttl)
        pipe.expire(self.executions_key, ttl)
        for item in running:
            pipe.hset(item.job.key, "last_heartbeat", stamp)
            pipe.hset(item.execution.key, "last_heartbeat", time.time())
        pipe.execute()

    def _enforce_deadlines(self, now: float) -> None:
        if self.opts.mode != "threads":
            return  # inline: SIGALRM; fork: the parent's wait loop
        with self._lock:
            overdue = [
                r
                for r in self._running.values()
                if r.deadline and now > r.deadline and r.performing
            ]
        for item in overdue:
            item.deadline = 0.0
            raise_in_thread(item.thread_id, JobTimeoutException)

    def _enforce_cancels(self) -> None:
        """Stop running jobs whose cancel grace period is over (`acmeq job cancel`)."""
        with self._lock:
            running = {r.job.id: r for r in self._running.values()}
        if not running:
            return
        from acmeq.progress import JobCancelled, stop_requested

        now = time.monotonic()
        for job_id in stop_requested(self.connection, running) - self._force_stop:
            # A tracked job is stopped by its own tracker when the grace period ends; the worker
            # steps in only for a job still running FORCE_STOP_AFTER_S later (an untracked job).
            first = self._stop_seen.setdefault(job_id, now)
            if now - first < FORCE_STOP_AFTER_S:
                continue
            item = running[job_id]
            self._force_stop.add(job_id)
            log.warning("job %s did not stop after its cancel grace period: stopping it", job_id)
            if self._horse_pid:
                continue  # fork: the parent's wait loop kills the horse
            if item.performing:
                raise_in_thread(item.thread_id, JobCancelled)
        for job_id in list(self._stop_seen):
            if job_id not in running:
                del self._stop_seen[job_id]

    def _enforce_memory(self) -> None:
        rss = self._rss_mb()
        if rss <= self.opts.memory_mb * MEMORY_HARD_FACTOR:
            return
        reason = (
            f"MemoryLimitExceeded: memory limit {self.opts.memory_mb} MB exceeded "
            f"(RSS {rss:.0f} MB)"
        )
        log.error("%s: failing the running jobs and exiting", reason)
        if self._horse_pid:
            # Fork: the parent is free; it records the failure when it reaps the child.
            self._memory_reason = reason
            with contextlib.suppress(OSError):
                os.kill(self._horse_pid, signal.SIGKILL)
            return
        with self._lock:
            running = list(self._running.values())
        for item in running:
            # A memory hog fails for good: retrying would only kill the next worker too.
            with contextlib.suppress(Exception):
                self._record_failure(item.job, item.execution, reason, retry=False)
        with contextlib.suppress(redis.RedisError):
            self.register_death()
        os._exit(int(WorkerExit.MEMORY_LIMIT))


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process; returns a :class:`WorkerExit` code."""
    parser = argparse.ArgumentParser(prog="acmeq.worker")
    parser.add_argument("options", help="WorkerOptions as JSON")
    args = parser.parse_args(argv)
    opts = WorkerOptions.from_json(args.options)
    logging.basicConfig(
        level=opts.log_level,
        format=f"%(asctime)s worker[{os.getpid()}] {opts.queue} %(levelname)s %(message)s",
    )
    try:
        # Boot: settings, job modules and Redis. Any failure here is BOOT_ERROR, which makes the
        # supervisor halt the pool instead of respawning a worker that can never start.
        from acmeq.config.settings import process_settings
        from acmeq.queues import registry_for
        from acmeq.storage.redis_client import connect_checked

        settings = process_settings()
        registry_for(settings)
        connection = connect_checked(settings)
        worker = AcmeqWorker(opts, settings, connection)
    except Exception as exc:
        message = f"cannot boot: {type(exc).__name__}: {exc}"
        sys.stderr.write(f"acmeq worker: {message}\n")
        if opts.boot_report:
            with contextlib.suppress(OSError):
                Path(opts.boot_report).write_text(message)
        return int(WorkerExit.BOOT_ERROR)
    return int(worker.run())


if __name__ == "__main__":
    sys.exit(main())
