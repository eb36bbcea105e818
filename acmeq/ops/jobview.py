"""One job as `acmeq job show` and `acmeq failed show` print it, arguments masked.

Read from the job's RQ hash and results stream (status, queue, function, arguments, times,
result or exception, retries left, worker). A failed job that Redis has forgotten (its failure
TTL passed, or `acmeq failed flush` deleted it) is read from its permanent SQL record instead.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq.exceptions import NoSuchJobError
from rq.results import Result
from rq.serializers import JSONSerializer

from acmeq import keys, pii
from acmeq.allowlist import JobRegistry
from acmeq.config.settings import Settings
from acmeq.errors import JobNotFoundError
from acmeq.ops.failed import iso, resolve_name
from acmeq.ops.failure_log import exception_line
from acmeq.queues import AcmeqJob, registry_for


@dataclass
class JobDetail:
    """One job as `job show` and `failed show` print it; arguments and texts are masked."""

    id: str
    source: str  # "redis", or "database" for a failed job Redis has forgotten
    status: str
    queue: str
    job: str
    function: str
    args: dict[str, Any]
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str = ""
    retries_left: int | None = None
    tries: int | None = None  # the queue's tries
    attempts: int | None = None  # failed jobs: tries used, operator retries included
    result: Any = None
    exception: str = ""
    traceback: str = ""
    scheduled_for: datetime | None = None
    expires_at: datetime | None = None  # when Redis forgets the job

    @property
    def runtime_s(self) -> float | None:
        if self.started_at and self.ended_at:
            return round((self.ended_at - self.started_at).total_seconds(), 3)
        return None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "status": self.status,
            "queue": self.queue,
            "job": self.job,
            "function": self.function,
            "args": self.args,
            "enqueued_at": iso(self.enqueued_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "runtime_s": self.runtime_s,
            "worker": self.worker or None,
            "retries_left": self.retries_left,
            "tries": self.tries,
            "attempts": self.attempts,
            "result": self.result,
            "exception": self.exception or None,
            "traceback": self.traceback or None,
            "scheduled_for": iso(self.scheduled_for),
            "expires_at": iso(self.expires_at),
        }
        if self.status == "failed":
            out["failed_at"] = out["ended_at"]
        return out


def _param_names(registry: JobRegistry, name: str, count: int) -> list[str]:
    """Names of a registered job's first ``count`` positional parameters (``*rest`` repeated),
    so positional arguments are masked by their parameter's name."""
    if name not in registry:
        return []
    try:
        params = list(inspect.signature(registry.get(name).func).parameters.values())
    except (TypeError, ValueError):
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = [p.name for p in params if p.kind == p.VAR_POSITIONAL]
    return names + rest * max(count - len(names), 0)


def job_detail(settings: Settings, connection: redis.Redis, job_id: str) -> JobDetail:
    """Everything Redis knows about one job; :class:`JobNotFoundError` if it knows nothing."""
    try:
        job = AcmeqJob.fetch(job_id, connection=connection)
    except (NoSuchJobError, ValueError):
        raise JobNotFoundError(
            f"job {job_id!r} not found (never enqueued, or Redis has forgotten it)"
        ) from None
    registry = registry_for(settings)
    try:
        func_path, args, kwargs = job.func_name or "", list(job.args), dict(job.kwargs)
    except Exception:  # pickled or damaged payload: show what can be shown
        func_path, args, kwargs = "", [], {}
    name, path = resolve_name(registry, job.description or "", func_path)
    try:
        results = Result.all(job, serializer=JSONSerializer)
    except Exception:
        results = []
    latest = results[0] if results else None
    status = job.get_status(refresh=False)
    detail = JobDetail(
        id=job.id,
        source="redis",
        status=str(status.value if status is not None else "unknown"),
        queue=job.origin,
        job=name,
        function=path,
        args=pii.mask_call(args, kwargs, _param_names(registry, name, len(args))),
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        worker=job.worker_name or (latest.worker_name if latest else ""),
        retries_left=job.retries_left,
        tries=settings.queues[job.origin].tries if job.origin in settings.queues else None,
    )
    if latest is not None and latest.exc_string:
        detail.traceback = pii.mask_text(latest.exc_string)
        detail.exception = pii.mask_text(exception_line(latest.exc_string))
    elif latest is not None and latest.type == Result.Type.SUCCESSFUL:
        detail.result = pii.mask(latest.return_value)
    if detail.status == "failed":
        retried = len(job.retry_intervals or []) - (job.retries_left or 0)
        final_failures = sum(1 for r in results if r.type == Result.Type.FAILED)
        detail.attempts = max(retried, 0) + max(final_failures, 1)
    if detail.status == "scheduled":
        when = connection.zscore(keys.scheduled(job.origin), job.id)
        detail.scheduled_for = datetime.fromtimestamp(when, UTC) if when else None
    ttl = connection.ttl(job.key)
    if ttl and ttl > 0:
        detail.expires_at = datetime.fromtimestamp(datetime.now(UTC).timestamp() + ttl, UTC)
    return detail


def failed_detail(settings: Settings, connection: redis.Redis, job_id: str) -> JobDetail:
    """A failed job from RQ's registry or, once Redis forgot it, from the SQL record."""
    try:
        detail = job_detail(settings, connection, job_id)
    except JobNotFoundError:
        record = _sql_record(settings, job_id)
        if record is None:
            raise JobNotFoundError(
                f"failed job {job_id!r} not found (neither in Redis nor in the failed_jobs table)"
            ) from None
        return record
    in_registry = connection.zscore(keys.failed(detail.queue), job_id) is not None
    if detail.status != "failed" and not in_registry:
        raise JobNotFoundError(
            f"job {job_id!r} is not a failed job (status {detail.status}); "
            f"see acmeq job show {job_id}"
        )
    return detail


def _sql_record(settings: Settings, job_id: str) -> JobDetail | None:
    """The newest ``failed_jobs`` row of a job, as a :class:`JobDetail` (source "database")."""
    import sqlalchemy as sa
    from sqlmodel import Session, col, select

    from acmeq.storage.models import FailedJob
    from acmeq.storage.sql import engine_for

    if not settings.database_url and not settings.sqlite_path.exists():
        return None  # no database yet: do not create one just to look
    try:
        with Session(engine_for(settings)) as session:
            row = session.exec(
                select(FailedJob)
                .where(FailedJob.job_id == job_id)
                .order_by(col(FailedJob.failed_at).desc())
                .limit(1)
            ).first()
    except sa.exc.SQLAlchemyError as exc:
        reason = (str(getattr(exc, "orig", None) or exc).splitlines() or ["?"])[0]
        raise JobNotFoundError(
            f"failed job {job_id!r} not found in Redis; the failed_jobs table could not be "
            f"searched: {reason}"
        ) from None
    if row is None:
        return None
    registry = registry_for(settings)
    stored = row.args or {}
    return JobDetail(
        id=row.job_id,
        source="database",
        status="failed",
        queue=row.queue,
        job=row.job_name,
        function=registry.get(row.job_name).path if row.job_name in registry else "",
        args=pii.mask_call(
            stored.get("args", []),
            stored.get("kwargs", {}),
            _param_names(registry, row.job_name, len(stored.get("args", []))),
        ),
        enqueued_at=row.enqueued_at,
        ended_at=row.failed_at,
        attempts=row.attempts,
        exception=pii.mask_text(row.exception),
        traceback=pii.mask_text(row.traceback),
        tries=settings.queues[row.queue].tries if row.queue in settings.queues else None,
    )
