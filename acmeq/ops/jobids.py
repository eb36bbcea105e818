"""Job ids as people type them: the full id, or a unique prefix of at least six characters.

Tables print ids whole, but nobody retypes 36 characters: as with git's commit ids, every
command that takes a job id accepts a prefix that names exactly one job. A command resolves the
id first, then looks the job up as before::

    from acmeq.ops.jobids import redis_source, resolve_job_id, sql_source

    job_id = resolve_job_id(job_id, redis_source(connection), sql_source(engine, "failed_jobs"))

- an id that is a job's full id is that job (even if it is also a prefix of a longer id);
- shorter than :data:`MIN_PREFIX` characters, the text is returned unchanged (the caller's own
  "not found" error then names it);
- a prefix that matches one job is that job's id; several: :class:`AmbiguousJobIdError`
  (exit 2) naming a few of them; none: returned unchanged (the caller says "not found").

A *source* is any ``(prefix, limit) -> ids starting with prefix`` function: Redis job hashes
(``rq:job:<id>``), or an id column of a SQL table (progress records, the failed_jobs table, a
feature's own table). Sources that fail (database down or not migrated) are skipped: the
resolver is a convenience and must never be the reason a command fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import redis

from acmeq import keys
from acmeq.errors import AcmeqError, AmbiguousJobIdError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

MIN_PREFIX = 6  # as short as git allows abbreviated ids to be typed, long enough to be unique
SHOWN = 5  # matches named in an ambiguity error
JOB_KEY = keys.JOB_PREFIX  # RQ's job hash: rq:job:<id> (ids never contain ':')

IdSource = Callable[[str, int], list[str]]


def resolve_job_id(job_id: str, *sources: IdSource) -> str:
    """The full id of the one job ``job_id`` names (see the module docstring)."""
    if len(job_id) < MIN_PREFIX:
        return job_id
    matches: list[str] = []
    for source in sources:
        try:
            found = source(job_id, SHOWN + 1)
        except (redis.RedisError, OSError, AcmeqError, ImportError):
            continue
        except Exception as exc:  # SQLAlchemy errors, without importing SQLAlchemy here
            if type(exc).__module__.startswith("sqlalchemy"):
                continue
            raise
        for match in found:
            if match == job_id:
                return job_id
            if match not in matches:
                matches.append(match)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousJobIdError(job_id, sorted(matches), SHOWN)
    return job_id


def resolve_job_ids(job_ids: Iterable[str], *sources: IdSource) -> list[str]:
    """:func:`resolve_job_id` for each id, in order."""
    return [resolve_job_id(job_id, *sources) for job_id in job_ids]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def redis_source(connection: redis.Redis, scan_count: int = 2000) -> IdSource:
    """Ids of the jobs Redis holds (``rq:job:<id>`` hashes): EXISTS first, then one SCAN."""

    def ids(prefix: str, limit: int) -> list[str]:
        if connection.exists(JOB_KEY + prefix):
            return [prefix]
        found: list[str] = []
        pattern = JOB_KEY + _glob_escape(prefix) + "*"
        for key in connection.scan_iter(match=pattern, count=scan_count):
            job_id = (key.decode() if isinstance(key, bytes) else str(key))[len(JOB_KEY) :]
            if ":" in job_id or job_id in found:  # rq:job:<id>:dependents and the like
                continue
            found.append(job_id)
            if len(found) >= limit:
                break
        return found

    return ids


def sql_source(
    engine: Engine, table: str, column: str = "id", *, user_id: int | None = None
) -> IdSource:
    """Ids in ``table.column`` (optionally only rows whose ``user_id`` is ``user_id``)."""

    def ids(prefix: str, limit: int) -> list[str]:
        import sqlalchemy as sa

        col: sa.ColumnClause[str] = sa.column(column)
        stmt = (
            sa.select(col)
            .select_from(sa.table(table))
            .where(col.startswith(prefix, autoescape=True))
            .distinct()
            .limit(limit)
        )
        if user_id is not None:
            stmt = stmt.where(sa.column("user_id") == user_id)
        with engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(stmt)]

    return ids


PROGRESS_TABLE = "job_progress"  # acmeq.storage.models.JobProgress (id: the RQ job id)
FAILED_TABLE = "failed_jobs"  # acmeq.storage.models.FailedJob (job_id)
