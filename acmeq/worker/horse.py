"""The fork model's work horse: a forked child runs one job and reports through a pipe.

As in RQ's ``Worker``, the horse runs the job under SIGALRM (``JobTimeoutException`` with RQ's
message and traceback) and records everything unusual itself through RQ's code (failures with
their retries, callbacks, webhooks, a returned ``Retry``), with the job object the job itself
saw, so ``meta`` it saved is never overwritten by a stale copy. A plain success is handed back
to the parent, whose fast path records it and takes the next job in the same round trip.

Reply (JSON through the pipe): ``{"outcome": "ok", "value": ...}`` for the parent to record, or
``{"outcome": "handled", "ok": bool, "exc": str, "runtime": s}`` when the horse recorded it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus

from acmeq.worker.osutil import set_parent_death_signal
from acmeq.worker.states import Outcome
from acmeq.worker.watchdog import timeout_message

HORSE_GRACE_S = 10  # the parent kills a horse this long after its own SIGALRM failed

if TYPE_CHECKING:
    from acmeq.worker.base import Running
    from acmeq.worker.recording import RecordingWorker


def run_horse(worker: RecordingWorker, item: Running, read_fd: int, write_fd: int) -> NoReturn:
    """The forked child: run the job, send the outcome through the pipe, exit."""
    code = 0
    try:
        os.close(read_fd)
        # Die with the worker (the kernel clears the parent-death signal on fork): a job must
        # never outlive the worker that the master will declare dead and whose job it retries.
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        random.seed()
        worker._is_horse = True
        worker.after_fork_in_child()
        reply = worker.execute(item)
        data = _encode(reply)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def perform_forked(self: RecordingWorker, item: Running) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run the job, report through the pipe, never return
        run_horse(self, item, read_fd, write_fd)
    os.close(write_fd)
    self._horse_pid = pid
    timeout = item.timeout
    deadline = time.monotonic() + timeout + HORSE_GRACE_S if timeout > 0 else None
    timed_out = False
    chunks: list[bytes] = []
    with os.fdopen(read_fd, "rb") as pipe:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True  # its own SIGALRM did not end it: the parent does
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if self.fast_stop or item.job.id in self._force_stop:
                # A fast stop or a forced cancel that raced the fork: end the horse now.
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            ready, _, _ = select.select([pipe], [], [], 0.2)
            if ready:
                chunks.append(pipe.read())
                break
    _, status = os.waitpid(pid, 0)
    self._horse_pid = 0
    raw = b"".join(chunks)
    if raw:
        reply: dict[str, Any] = json.loads(raw)
        return reply
    return _horse_died(self, item, status, timed_out)


def _horse_died(
    self: RecordingWorker, item: Running, status: int, timed_out: bool
) -> dict[str, Any]:
    """Record the job of a horse that ended without reporting (killed, crashed)."""
    job = item.job
    memory = bool(self._memory_reason)
    if memory:
        outcome, exc_string = Outcome.MEMORY, self._memory_reason
        self._memory_reason = ""
    elif job.id in self._stop_job_ids:
        outcome, exc_string = Outcome.STOPPED, ""
    elif job.id in self._force_stop:
        outcome = Outcome.FAILED
        exc_string = "JobCancelled: stopped by force after the cancel grace period"
    elif timed_out:
        outcome = Outcome.TIMEOUT
        exc_string = f"JobTimeoutException: {timeout_message(item.timeout)}"
    else:
        outcome = Outcome.FAILED
        sig = f" (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status) else ""
        exc_string = f"Work-horse terminated unexpectedly; waitpid returned {status}{sig}; "
    try:
        # The horse may have saved meta or recorded the outcome before it died: read the
        # job afresh instead of overwriting it with this process's stale copy.
        self.redis_retry(job.refresh)
    except NoSuchJobError:
        return {"outcome": Outcome.HANDLED, "recorded": False}
    job.worker_name = self.name
    if job.get_status(refresh=False) in (JobStatus.FINISHED, JobStatus.FAILED):
        return {"outcome": Outcome.HANDLED, "recorded": False}
    job.ended_at = datetime.now(UTC)
    exc_string = self.redis_retry(
        lambda: self.record_failure_string(job, item.execution, exc_string, outcome)
    )
    reply = self._handled(item, False, exc_string)
    reply["memory"] = memory
    return reply


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply).encode()
    except (TypeError, ValueError):
        reply = dict(reply, value=UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
        return json.dumps(reply).encode()
