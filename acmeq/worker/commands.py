"""RQ's worker commands over pub/sub (``rq.command.send_*``), handled as RQ's workers do.

The worker subscribes to ``rq:pubsub:<worker name>`` at start (as RQ's ``bootstrap()`` does)
and runs the handlers in redis-py's pub/sub thread:

- ``shutdown``: a graceful stop (RQ's worker treats the SIGINT it sends itself as one);
- ``stop-job`` / ``stop-execution``: the job ends STOPPED (failed registry, never retried) and
  its ``on_stopped`` callback runs. Fork: the horse is killed, as in RQ. Inline and threads:
  the job is interrupted (RQ's SimpleWorker cannot stop a job; acmeq can, documented);
- ``kill-horse``: fork: the horse is killed and the job fails as a dead horse's job does in
  RQ; other models have no horse and ignore it, as RQ's SimpleWorker does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from acmeq.worker.base import StopJobRequested

if TYPE_CHECKING:
    from acmeq.worker.recording import RecordingWorker

log = logging.getLogger("acmeq.worker")


def handle(worker: RecordingWorker, message: dict[str, Any]) -> None:
    """Handle one pub/sub message (redis-py's message dict)."""
    try:
        payload = json.loads(message["data"])
        command = payload.get("command")
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring a malformed worker command: %r", message.get("data"))
        return
    log.info("worker command: %s", payload)
    if command == "shutdown":
        worker.request_stop_graceful()
    elif command in ("stop-job", "stop-execution"):
        stop_job(worker, str(payload.get("job_id", "")), payload.get("execution_id"))
    elif command == "kill-horse":
        kill_horse(worker)
    else:
        log.warning("ignoring unknown worker command %r", command)


def stop_job(worker: RecordingWorker, job_id: str, execution_id: str | None) -> None:
    for item in worker.running():
        if item.job.id != job_id or item.claimed:
            continue
        if execution_id and item.execution.id != execution_id:
            continue
        worker._stop_job_ids.add(job_id)
        if worker._horse_pid:
            with contextlib.suppress(OSError):
                os.kill(worker._horse_pid, signal.SIGKILL)
        elif item.performing:
            worker.interrupt(item, StopJobRequested)
        return
    log.warning("not running job %s: stop command ignored", job_id)


def kill_horse(worker: RecordingWorker) -> None:
    if not worker._horse_pid:
        log.info("no work horse: kill-horse command ignored")
        return
    worker._killed_horse = True
    with contextlib.suppress(OSError):
        os.kill(worker._horse_pid, signal.SIGKILL)
