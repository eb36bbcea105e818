"""Helpers of :mod:`acmeq.worker.process` that do not need the worker object: the forked work horse,
thread interruption, job naming, and the progress/cancel hooks (kept apart to keep the worker
module readable)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import traceback

import redis
from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD

from acmeq.config.settings import Settings
from acmeq.queues import AcmeqJob

log = logging.getLogger("acmeq.worker")


def run_horse(job: AcmeqJob, read_fd: int, write_fd: int) -> None:
    """The forked child: run the job, send the outcome through the pipe, exit."""
    code = 0
    try:
        os.close(read_fd)
        # Die with the worker (the kernel clears the parent-death signal on fork): a job must
        # never outlive the worker that the master will declare dead and whose job it retries.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:
            os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            value = job.perform()
            try:
                data = json.dumps({"ok": True, "value": value}).encode()
            except (TypeError, ValueError):
                data = json.dumps(
                    {"ok": True, "value": UNSERIALIZABLE_RETURN_VALUE_PAYLOAD}
                ).encode()
        except BaseException:
            data = json.dumps({"ok": False, "value": format_exc()}).encode()
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def cancel_requested(connection: redis.Redis, job_id: str) -> bool:
    """Whether `acmeq job cancel` asked for this job (a cancelled job is never retried)."""
    from acmeq import progress

    try:
        return progress.cancel_requested(connection, job_id)
    except redis.RedisError:
        return False


def end_progress(
    settings: Settings, connection: redis.Redis, job_id: str, how: str, message: str
) -> None:
    """Give a tracked job's progress its final state when the job could not write it."""
    try:
        from acmeq import progress

        if how == "cancelled":
            progress.mark_cancelled(settings, job_id, message, connection=connection)
        else:
            progress.mark_abandoned(settings, [job_id], message, connection=connection)
    except Exception as exc:  # progress is best effort; the job's RQ state is already recorded
        log.debug("progress of %s not updated: %s", job_id, exc)


def job_name(job: AcmeqJob) -> str:
    """The registered name of a job's function (its RQ description is that name when acmeq
    enqueued it; anything else falls back to the function path)."""
    from acmeq.queues import _process_registry

    try:
        return _process_registry().by_path(job.func_name).name
    except Exception:
        return job.func_name or "?"


def raise_in_thread(thread_id: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def format_exc() -> str:
    return "".join(traceback.format_exception(*sys.exc_info()))
