"""The worker's state shared by its parts: options, the fast path, the running jobs, the stop
flags, the metrics buffer, the liveness file and the Redis outage tracker.

:class:`WorkerBase` is an RQ ``SimpleWorker`` (so RQ's own success, failure, retry, callback and
webhook code runs on it unchanged); :mod:`acmeq.worker.recording` and
:mod:`acmeq.worker.process` build on it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
import redis
from rq import SimpleWorker
from rq.executions import Execution
from rq.serializers import JSONSerializer
from rq.timeouts import (
    BaseDeathPenalty,
    JobTimeoutException,
    TimerDeathPenalty,
    UnixSignalDeathPenalty,
)

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.constants import WorkerExit
from acmeq.errors import MemoryLimitExceeded as MemoryLimitExceeded
from acmeq.errors import ShutdownInterrupt as ShutdownInterrupt
from acmeq.errors import StopJobRequested as StopJobRequested
from acmeq.queues import AcmeqJob
from acmeq.worker.fastpath import FastPath
from acmeq.worker.liveness import Liveness
from acmeq.worker.metrics_buffer import MetricsBuffer
from acmeq.worker.options import WorkerOptions
from acmeq.worker.osutil import raise_in_thread
from acmeq.worker.outage import Outage
from acmeq.worker.states import DEFAULT_JOB_TIMEOUT_S, ExecutionModel, StopMode

T = TypeVar("T")


class AnyThreadDeathPenalty(BaseDeathPenalty):
    """RQ's timeouts in any thread: SIGALRM in the main thread (as RQ's workers), a timer that
    raises asynchronously elsewhere (callbacks of threads-mode jobs run in job threads)."""

    def __init__(self, timeout: Any, exception: Any = JobTimeoutException, **kwargs: Any) -> None:
        super().__init__(timeout, exception, **kwargs)  # type: ignore[no-untyped-call]
        cls = (
            UnixSignalDeathPenalty
            if threading.current_thread() is threading.main_thread()
            else TimerDeathPenalty
        )
        self._impl = cls(timeout, exception, **kwargs)

    def setup_death_penalty(self) -> None:
        self._impl.setup_death_penalty()  # type: ignore[no-untyped-call]

    def cancel_death_penalty(self) -> None:
        self._impl.cancel_death_penalty()  # type: ignore[no-untyped-call]


@dataclass
class Running:
    """A job this process is running."""

    job: AcmeqJob
    execution: Execution
    thread_id: int
    timeout: int  # s; <= 0: none
    deadline: float  # monotonic; 0: no timeout
    started_ts: float
    rss_at_start: float = 0.0  # MB (threads: the culprit of a memory hog grew the most)
    slow: bool = False  # needs RQ's success handling (callbacks, webhooks, repeats ...)
    performing: bool = False  # inside the job function (a fast stop may interrupt it)
    # Set by whoever records the outcome first (the job's thread, or the watchdog at a
    # deadline / memory kill in threads mode); the other side then records nothing.
    claimed: bool = False
    abandoned_at: float = 0.0  # monotonic: the watchdog failed it; its thread should end
    interrupts: list[str] = field(default_factory=list)


class WorkerBase(SimpleWorker):
    """An RQ worker for one queue; the state every part of acmeq's worker shares."""

    death_penalty_class = AnyThreadDeathPenalty
    _main_interrupt: tuple[type[BaseException], str] | None = None

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
        self.mode = ExecutionModel(opts.mode)
        self.settings = settings
        pause = [keys.paused_queue(opts.queue)]
        if opts.master and opts.supervisor:
            pause.append(keys.paused_supervisor(opts.master, opts.supervisor))
        self.fast = FastPath(connection, opts.queue, self.name, pause, opts.timeout)
        # Every pooled connection carries the worker's name (RQ names only the first), so
        # `CLIENT LIST` shows which worker holds a blocking BLMOVE or a slow script.
        connection.connection_pool.connection_kwargs["client_name"] = self.name
        self.queue_obj = self.queues[0]
        self.process = psutil.Process()
        self.started_mono = time.monotonic()
        self.jobs_done = 0
        self.jobs_taken = 0
        self.exit_code = WorkerExit.OK
        self.stop_mode = StopMode.NONE
        self._stop = threading.Event()  # graceful: take no new job
        self._lock = threading.Lock()
        self._running: dict[str, Running] = {}  # execution id -> running job
        self._memory_reason = ""  # set by the watchdog when it killed a forked job for memory
        self._force_stop: set[str] = set()  # jobs being stopped by force after a cancel
        self._stop_seen: dict[str, float] = {}  # job id -> when its stop request was first seen
        self._stop_job_ids: set[str] = set()  # RQ stop-job commands received
        self._killed_horse = False  # RQ kill-horse command received
        self._rq_lock = threading.Lock()  # RQ's _stopped_job_id is one field per worker
        self.metrics = MetricsBuffer(
            settings.metrics_minute_retention, settings.metrics_hour_retention
        )
        self.liveness = Liveness(opts.heartbeat_file)
        self._exec_prefix = os.urandom(8).hex()
        self._exec_counter = itertools.count(1)
        self.outage = Outage(self._stop, self.liveness.alive)

    def after_fork_in_child(self) -> None:
        """A forked child inherits locks another thread may have held at the fork: new ones."""
        self._lock = threading.Lock()
        self._rq_lock = threading.Lock()
        self._exec_prefix = os.urandom(8).hex()  # the horse must not reuse its parent's ids
        self.metrics = MetricsBuffer()
        self.outage = Outage(self._stop, self.liveness.alive)

    def request_stop_graceful(self) -> None:
        if self.stop_mode == StopMode.NONE:
            self.stop_mode = StopMode.GRACEFUL
        self._stop.set()

    def interrupt(self, item: Running, exc: type[BaseException], message: str = "") -> None:
        """Raise ``exc`` inside a running job (its thread; the main thread through SIGUSR1,
        which also breaks a blocking sleep)."""
        if item.thread_id == threading.main_thread().ident:
            self._main_interrupt = (exc, message or exc.__name__)
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise_in_thread(item.thread_id, exc)

    def redis_retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` until Redis answers (recording a job's outcome must not be lost to a
        short outage); gives up only on a fast stop."""
        while True:
            try:
                result = fn()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self.fast_stop:
                    raise
                self.outage.wait(exc, interruptible=False)
                continue
            self.outage.ok()
            return result

    @property
    def fast_stop(self) -> bool:
        return self.stop_mode == StopMode.FAST

    def timeout_of(self, job: AcmeqJob) -> int:
        """The job's timeout in this worker (the override, the job's own, or the default)."""
        return int(self.opts.timeout or job.timeout or DEFAULT_JOB_TIMEOUT_S)

    def rss_mb(self) -> float:
        rss = self.process.memory_info().rss
        if self.mode == ExecutionModel.FORK:
            with contextlib.suppress(psutil.Error):
                rss = max([rss] + [c.memory_info().rss for c in self.process.children()])
        return float(rss) / (1024 * 1024)

    def running(self) -> list[Running]:
        with self._lock:
            return list(self._running.values())

    def claim(self, item: Running) -> bool:
        """Take the right to record ``item``'s outcome (exactly one side gets it)."""
        with self._lock:
            if item.claimed:
                return False
            item.claimed = True
            return True
