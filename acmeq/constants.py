"""Names shared by every layer: exit codes and defaults (Redis keys are in :mod:`acmeq.keys`).

Exit codes are named like dramatiq's ``RET_*`` so the CLI, scripts and docs agree on them.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every ``acmeq`` command (documented in docs/cli.md)."""

    OK = 0
    FAILED = 1  # the operation ran and did not succeed (a job failed, an alert is active ...)
    USAGE = 2  # bad arguments, bad configuration, unknown queue/job/profile
    UNREACHABLE = 3  # Redis or the database cannot be reached


DEFAULT_REDIS_DB = 7  # the seed's REDIS_QUEUE_DB
DEFAULT_REDIS_PORT = 6379

# Client timeouts: a dead Redis must be reported within ~3 s (issue #2), so connecting is
# bounded tightly; reads get more room because BLMOVE-style blocking calls pass their own.
CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 30

# Horizon keeps completed jobs for an hour and failed jobs for a week (its `trim` defaults).
DEFAULT_RESULT_TTL_S = 3600
DEFAULT_FAILURE_TTL_S = 7 * 24 * 3600


class WorkerExit(IntEnum):
    """Exit codes of a worker process, read by its supervisor to decide what happens next."""

    OK = 0  # stopped on request (graceful shutdown, burst done)
    FAILED = 1  # crashed: respawn with backoff
    BOOT_ERROR = 4  # could not start (import error in a job module, bad config): halt the pool
    MEMORY_LIMIT = 5  # RSS above the queue's limit after a job (or a job blew through it): respawn
    RECYCLE = 6  # max_jobs / max_time reached: respawn at once
    # Redis could not be reached at boot: transient, respawn with backoff, never halt the pool
    REDIS_UNAVAILABLE = 7


class MasterExit(IntEnum):
    """Exit statuses of a master (`acmeq worker start`), for process managers and scripts."""

    OK = 0  # stopped on request (SIGTERM, SIGINT, `acmeq worker terminate`, burst done)
    USAGE = 2  # bad profile or configuration, name taken, job module that does not import
    UNREACHABLE = 3  # Redis unreachable at start (once running, an outage is waited out)
    HALTED = 4  # every pool halted: their workers cannot boot (the reason is in the log)
    INTERNAL_ERROR = 70  # an unexpected exception in the master's loop (sysexits EX_SOFTWARE)
