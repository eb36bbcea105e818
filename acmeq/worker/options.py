"""What a master tells a worker process it starts (``python -m acmeq.worker '<JSON>'``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker process needs besides the environment (which carries the settings)."""

    queue: str
    mode: str = "inline"  # an ExecutionModel: fork | inline | threads
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
    # The master's liveness file (gunicorn's worker tmp file): the worker sets its mtime to now
    # at least every 2 s when not running a job, and to now + the job's timeout + 5 s when it
    # starts one (inline, fork); the master kills a worker whose mtime is too old.
    heartbeat_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerOptions:
        return cls(**json.loads(text))
