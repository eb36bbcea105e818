"""Permanent records of failed jobs in SQL (seed: "permanent failure tracking").

RQ's failed registry expires (failure_ttl, 7 days by default) and `acmeq failed flush` empties
it; a job that used up its tries is therefore also written to the ``failed_jobs`` table, which
keeps it after Redis forgets it. Writing is best effort from the worker's point of view: a
database outage is logged and never turns a recorded Redis failure into a crash.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from acmeq.config.settings import Settings

log = logging.getLogger("acmeq.ops.failure_log")
_warned_schema = False  # say once per process that the schema is missing, not once per job


def exception_line(exc_string: str) -> str:
    """The last line of a traceback: ``RuntimeError: boom``."""
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def record_permanent(settings: Settings, job: Any, exc_string: str, job_name: str = "") -> None:
    """Insert one ``failed_jobs`` row for a job that will not be retried."""
    try:
        from acmeq.storage.models import FailedJob
        from acmeq.storage.sql import engine_for

        # RQ does not count tries; the expanded backoff does: each retry used one delay.
        retried = len(job.retry_intervals or []) - (job.retries_left or 0)
        row = {
            "job_id": job.id,
            "queue": job.origin or "",
            "job_name": (job_name or job.description or job.func_name or "?")[:200],
            "args": {"args": list(job.args or ()), "kwargs": dict(job.kwargs or {})},
            "exception": exception_line(exc_string)[:2000],
            "traceback": exc_string,
            "attempts": max(retried, 0) + 1,
            "enqueued_at": job.enqueued_at,
            "failed_at": datetime.now(UTC),
        }
        with engine_for(settings).begin() as conn:
            conn.execute(FailedJob.__table__.insert().values(**row))  # type: ignore[attr-defined]
    except Exception as exc:  # the Redis record stands; the SQL copy is best effort
        global _warned_schema
        if "no such table" in str(exc) or "does not exist" in str(exc):
            if not _warned_schema:
                _warned_schema = True
                log.error(
                    "failed jobs are not recorded in SQL: the database is not migrated "
                    "(run 'acmeq db upgrade')"
                )
            return
        log.error("could not record failed job %s in the database: %s", job.id, exc)
