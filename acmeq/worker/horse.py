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

import json
import os
import random
import signal
from typing import TYPE_CHECKING, Any, NoReturn

from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD

from acmeq.worker.osutil import set_parent_death_signal

if TYPE_CHECKING:
    from acmeq.worker.base import Running
    from acmeq.worker.process import AcmeqWorker


def run_horse(worker: AcmeqWorker, item: Running, read_fd: int, write_fd: int) -> NoReturn:
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
        reply = worker.execute(item)
        data = _encode(reply)
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _encode(reply: dict[str, Any]) -> bytes:
    try:
        return json.dumps(reply).encode()
    except (TypeError, ValueError):
        reply = dict(reply, value=UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
        return json.dumps(reply).encode()
