"""Named states of the worker: execution models, job outcomes, stop modes, fast-path replies,
and the one default job timeout (RQ's ``Queue.DEFAULT_TIMEOUT``, passed to the Lua scripts)."""

from __future__ import annotations

from enum import StrEnum

from rq import Queue

# A job without its own timeout gets RQ's default (180 s); the start script receives it as an
# argument so that Python and Lua cannot disagree.
DEFAULT_JOB_TIMEOUT_S: int = int(Queue.DEFAULT_TIMEOUT)


class ExecutionModel(StrEnum):
    """How a worker process runs its jobs (``WorkerOptions.mode``)."""

    INLINE = "inline"  # in the worker process, SIGALRM timeouts
    THREADS = "threads"  # up to ``concurrency`` jobs at once in threads
    FORK = "fork"  # each job in a forked work horse


class Outcome(StrEnum):
    """How one run of a job ended, as the worker records it."""

    OK = "ok"  # returned; recorded by the fast path when the job is plain
    FAILED = "failed"  # raised (or its horse died): RQ's failure handling, retried per tries
    TIMEOUT = "timeout"  # past its deadline: failed with JobTimeoutException, retried per tries
    MEMORY = "memory"  # drove the process past its hard memory limit: failed for good
    STOPPED = "stopped"  # stopped on request (RQ's stop-job command): STOPPED, never retried
    HANDLED = "handled"  # already recorded through RQ's own code (a fork horse did it)


class StopMode(StrEnum):
    """How the worker was asked to stop."""

    NONE = "none"
    GRACEFUL = "graceful"  # SIGTERM or RQ's shutdown command: running jobs finish
    FAST = "fast"  # second SIGTERM or SIGINT: running jobs are interrupted and retried


class Reply(StrEnum):
    """What the fast-path scripts answer (the first element of their reply)."""

    JOB = "job"  # a job was taken and started: run it
    EMPTY = "empty"  # the queue is empty
    PAUSED = "paused"  # the queue, its supervisor or RQ as a whole is paused
    GONE = "gone"  # the id taken has no job hash (deleted meanwhile): skipped
    SLOW = "slow"  # finish declined (the job has dependents): RQ's own code must record it
    DONE = "done"  # finish recorded, no next job asked for
