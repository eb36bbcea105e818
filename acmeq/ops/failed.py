"""Failed jobs: list, select, retry and flush them where RQ keeps them.

A job that used up its tries is in RQ's ``rq:failed:<queue>`` sorted set (score: when RQ forgets
it, failure time + the job's ``failure_ttl``); its hash ``rq:job:<id>`` holds the failure time
(``ended_at``) and its results stream ``rq:results:<id>`` the traceback RQ stored. Everything here
reads and writes those keys as RQ does, so ``rq info`` and rq-dashboard agree with acmeq:

- listing pages through each queue's set newest first (``ZREVRANGE``, 500 hashes per pipelined
  round trip), merges the queues by failure time, stops at ``limit`` matches and examines at most
  ``scan_cap`` entries, so ``failed list`` stays fast with 100,000 failed jobs;
- :func:`retry_failed` is ``FailedJobRegistry.requeue`` in pipelined chunks; :func:`flush_failed`
  is ``Job.delete`` for failed jobs in pipelined chunks. Both remove a job from the set first and
  only act on the jobs they removed, so two operators racing never retry a job twice;
- nothing here touches the permanent SQL record (``failed_jobs``);
  :func:`acmeq.ops.jobview.failed_detail` falls back to it when Redis has forgotten a job.

Every argument, result and exception text leaves through :mod:`acmeq.pii`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import zlib
from base64 import b64decode
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.serializers import JSONSerializer

from acmeq import keys, pii
from acmeq.allowlist import JobRegistry
from acmeq.config.settings import Settings
from acmeq.errors import AcmeqError, JobNotFoundError, UsageError
from acmeq.ops.failure_log import exception_line
from acmeq.queues import AcmeqJob, queue_spec, registry_for
from acmeq.storage.redis_client import text
from acmeq.timeparse import parse_duration, parse_when

PAGE = 500  # registry entries (and job hashes) per pipelined round trip
SCAN_CAP = 20_000  # entries `failed list` examines at most
SINCE_SLACK = timedelta(seconds=2)  # registry scores are whole seconds, set just after ended_at
_EPOCH = datetime.fromtimestamp(0, UTC)
_META = ("origin", "description", "status", "enqueued_at", "started_at", "ended_at")


# -- filters ---------------------------------------------------------------------------------------


def parse_instant(value: str, option: str) -> datetime:
    """``30m``/``2d`` (that long ago) or an ISO 8601 instant (naive: UTC)."""
    try:
        return datetime.now(UTC) - parse_duration(value, option)
    except UsageError:
        pass
    try:
        return parse_when(value, option)
    except UsageError:
        raise UsageError(
            f"{option}: invalid time {value!r}; use a duration ago (30m, 6h, 2d) or ISO 8601 "
            "(2026-05-01T09:00:00Z)"
        ) from None


@dataclass(frozen=True)
class FailedFilter:
    """Which failed jobs a command is about; empty fields match everything."""

    queues: tuple[str, ...] = ()
    jobs: frozenset[str] = frozenset()  # registered job names
    exception: str = ""  # case-insensitive substring of the (masked) exception line
    since: datetime | None = None
    before: datetime | None = None

    @property
    def narrows(self) -> bool:
        """Whether anything beyond the queues selects jobs."""
        return bool(self.jobs or self.exception or self.since or self.before)

    def time_ok(self, when: datetime | None) -> bool:
        if self.since is None and self.before is None:
            return True
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (
            self.before is None or when < self.before
        )


def make_filter(
    settings: Settings,
    queues: Sequence[str] = (),
    jobs: Sequence[str] = (),
    exception: str = "",
    since: str | None = None,
    before: str | None = None,
) -> FailedFilter:
    """Validate command-line filters: unknown queue or job, bad time -> UsageError (exit 2)."""
    names = tuple(dict.fromkeys(queue_spec(settings, q).name for q in queues))
    registry = registry_for(settings)
    job_names = frozenset(registry.get(j).name for j in jobs)
    after = parse_instant(since, "--since") if since else None
    until = parse_instant(before, "--before") if before else None
    if after and until and after >= until:
        raise UsageError(f"--since {since!r} is not before --before {before!r}")
    return FailedFilter(names, job_names, exception.strip().lower(), after, until)


# -- reading failed jobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedEntry:
    """One job in a failed registry, as `failed list` shows it (exception masked)."""

    id: str
    queue: str
    job: str
    function: str
    failed_at: datetime | None
    enqueued_at: datetime | None
    exception: str
    worker: str
    expires_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "job": self.job,
            "function": self.function,
            "failed_at": iso(self.failed_at),
            "enqueued_at": iso(self.enqueued_at),
            "exception": self.exception,
            "worker": self.worker,
            "expires_at": iso(self.expires_at),
        }


@dataclass
class FailedPage:
    """What `failed list` found: newest first, and how much it examined to find it."""

    entries: list[FailedEntry]
    examined: int
    scan_cap: int | None
    truncated: bool  # the scan cap was hit: older matches may exist


@dataclass
class _Budget:
    cap: int | None
    examined: int = 0
    truncated: bool = False

    def take(self, want: int) -> int:
        if self.cap is None:
            return want
        left = self.cap - self.examined
        if left <= 0:
            self.truncated = True
        return max(min(want, left), 0)


def iso(when: datetime | None) -> str | None:
    """ISO 8601 in UTC, for JSON."""
    return when.astimezone(UTC).isoformat() if when else None


def _date(raw: bytes | str | None) -> datetime | None:
    """A time as RQ writes it (``2026-05-01T09:00:00.123456Z``), UTC."""
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(text(raw))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _func_path(data: bytes | None) -> str:
    """The function path from a job hash's ``data`` (zlib'd JSON ``[func, instance, args, kw]``)."""
    if not data:
        return ""
    try:
        payload = json.loads(zlib.decompress(data))
        return str(payload[0])
    except Exception:  # pickled or damaged: not a job acmeq can name
        return ""


def resolve_name(registry: JobRegistry, description: str, path: str) -> tuple[str, str]:
    """(registered name, function path) of a job; unregistered jobs are named by their path."""
    if description in registry:
        jobdef = registry.get(description)
        return jobdef.name, jobdef.path
    if path:
        try:
            return registry.by_path(path).name, path
        except AcmeqError:
            return path, path
    return description or "?", path


def _exc_string(stream: list[Any]) -> tuple[str, str]:
    """(traceback, worker name) from the newest entry of a results stream (XREVRANGE COUNT 1)."""
    if not stream:
        return "", ""
    fields = {text(k): v for k, v in stream[0][1].items()}
    worker = text(fields.get("worker_name", b""))
    raw = fields.get("exc_string")
    if not raw:
        return "", worker
    try:
        return zlib.decompress(b64decode(raw)).decode(errors="replace"), worker
    except (ValueError, zlib.error):
        return "", worker


def _scan_queue(
    connection: redis.Redis,
    registry: JobRegistry,
    queue: str,
    flt: FailedFilter,
    budget: _Budget,
) -> Iterator[FailedEntry]:
    """Failed jobs of one queue matching ``flt``, newest first, a page at a time.

    Scores are failure time (whole seconds) + the queue's failure TTL, so score order is failure
    order to the second while the queue's ``failure_ttl`` is unchanged. Each page is sorted by
    the exact failure time, and ``--since`` stops the scan at the first job failed more than
    :data:`SINCE_SLACK` before it.
    """
    key = keys.failed(queue)
    start = 0
    while True:
        count = budget.take(PAGE)
        if count == 0:
            return
        rows = cast(
            list[tuple[bytes, float]],
            connection.zrevrange(key, start, start + count - 1, withscores=True),
        )
        if not rows:
            return
        start += len(rows)
        budget.examined += len(rows)
        ids = [text(member) for member, _ in rows]
        pipe = connection.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(AcmeqJob.key_for(job_id), _META)
        metas = pipe.execute()
        unnamed = [i for i, m in enumerate(metas) if m[1] is None or text(m[1]) not in registry]
        paths = dict.fromkeys(unnamed, "")
        if unnamed:
            pipe = connection.pipeline(transaction=False)
            for i in unnamed:
                pipe.hget(AcmeqJob.key_for(ids[i]), "data")
            paths = {i: _func_path(d) for i, d in zip(unnamed, pipe.execute(), strict=True)}
        older_seen = False
        candidates = []
        for i, ((_, score), meta) in enumerate(zip(rows, metas, strict=True)):
            if not any(meta):
                continue  # the hash is gone (expired or deleted): nothing left to show
            failed_at = _date(meta[5])
            if flt.since and failed_at and failed_at < flt.since:
                older_seen = older_seen or failed_at < flt.since - SINCE_SLACK
                continue
            name, path = resolve_name(registry, text(meta[1] or b""), paths.get(i, ""))
            if not flt.time_ok(failed_at) or (flt.jobs and name not in flt.jobs):
                continue
            expires = datetime.fromtimestamp(score, UTC) if score > 0 else None
            candidates.append((ids[i], name, path, failed_at, _date(meta[3]), expires))
        candidates.sort(key=lambda c: c[3] or _EPOCH, reverse=True)
        pipe = connection.pipeline(transaction=False)
        for job_id, *_ in candidates:
            pipe.xrevrange(keys.results(job_id), "+", "-", count=1)
        streams = pipe.execute() if candidates else []
        for (job_id, name, path, failed_at, enqueued_at, expires), stream in zip(
            candidates, streams, strict=True
        ):
            traceback, worker = _exc_string(stream)
            line = pii.mask_text(exception_line(traceback))
            if flt.exception and flt.exception not in line.lower():
                continue
            yield FailedEntry(
                job_id, queue, name, path, failed_at, enqueued_at, line, worker, expires
            )
        if older_seen or len(rows) < count:
            return


def _merged(
    settings: Settings, connection: redis.Redis, flt: FailedFilter, budget: _Budget
) -> Iterator[FailedEntry]:
    registry = registry_for(settings)
    queues = flt.queues or tuple(settings.queues)
    streams = [_scan_queue(connection, registry, q, flt, budget) for q in queues]

    def newest_first(entry: FailedEntry) -> float:
        return -(entry.failed_at.timestamp() if entry.failed_at else 0.0)

    return heapq.merge(*streams, key=newest_first)


def list_failed(
    settings: Settings,
    connection: redis.Redis,
    flt: FailedFilter,
    limit: int = 50,
    scan_cap: int | None = SCAN_CAP,
) -> FailedPage:
    """The newest ``limit`` failed jobs matching ``flt``, examining at most ``scan_cap``."""
    budget = _Budget(scan_cap)
    entries = list(itertools.islice(_merged(settings, connection, flt, budget), limit))
    return FailedPage(entries, budget.examined, scan_cap, budget.truncated)


def select_failed(
    settings: Settings, connection: redis.Redis, flt: FailedFilter
) -> list[FailedEntry]:
    """Every failed job matching ``flt`` (no cap: retry and flush must see them all)."""
    return list(_merged(settings, connection, flt, _Budget(None)))


def find_failed(
    settings: Settings, connection: redis.Redis, ids: Sequence[str]
) -> list[FailedEntry]:
    """The failed jobs with these ids; the first id that is not a failed job raises."""
    registry = registry_for(settings)
    wanted = list(dict.fromkeys(ids))
    pipe = connection.pipeline(transaction=False)
    for job_id in wanted:
        pipe.hmget(AcmeqJob.key_for(job_id), (*_META, "data"))
        pipe.xrevrange(keys.results(job_id), "+", "-", count=1)
    replies = pipe.execute()
    metas, streams = replies[0::2], replies[1::2]
    pipe = connection.pipeline(transaction=False)
    for job_id, meta in zip(wanted, metas, strict=True):
        pipe.zscore(keys.failed(text(meta[0] or b"")), job_id)
    scores = pipe.execute()
    entries = []
    for job_id, meta, stream, score in zip(wanted, metas, streams, scores, strict=True):
        if not any(meta):
            raise JobNotFoundError(f"failed job {job_id!r} not found")
        if score is None:
            status = text(meta[2] or b"?")
            raise JobNotFoundError(
                f"job {job_id!r} is not a failed job (status {status}); see acmeq job show {job_id}"
            )
        name, path = resolve_name(registry, text(meta[1] or b""), _func_path(meta[6]))
        traceback, worker = _exc_string(stream)
        line = pii.mask_text(exception_line(traceback))
        expires = datetime.fromtimestamp(score, UTC) if score > 0 else None
        entries.append(
            FailedEntry(
                id=job_id,
                queue=text(meta[0]),
                job=name,
                function=path,
                failed_at=_date(meta[5]),
                enqueued_at=_date(meta[3]),
                exception=line,
                worker=worker,
                expires_at=expires,
            )
        )
    return entries


# -- acting on failed jobs -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a retry or flush did: ``done`` ids, and ``gone`` ids another process took first."""

    done: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


def _chunks(entries: Sequence[FailedEntry]) -> Iterator[Sequence[FailedEntry]]:
    for start in range(0, len(entries), PAGE):
        yield entries[start : start + PAGE]


def _claim(connection: redis.Redis, chunk: Sequence[FailedEntry]) -> list[bool]:
    """Remove the jobs from their failed sets; only a job this call removed is acted on."""
    pipe = connection.pipeline(transaction=False)
    for entry in chunk:
        pipe.zrem(keys.failed(entry.queue), entry.id)
    return [bool(n) for n in pipe.execute()]


def retry_failed(connection: redis.Redis, entries: Sequence[FailedEntry]) -> Outcome:
    """Put failed jobs back on their queues, oldest failure first (RQ's requeue semantics).

    As with ``FailedJobRegistry.requeue``: status queued, ``enqueued_at`` now, started/ended
    cleared, ``retries_left`` unchanged, so a job that used up its tries gets one more try and is
    failed (and recorded in SQL) again if it raises again. Unlike RQ, the job hash loses the
    failure TTL RQ gave it: a job retried late must not expire while it waits in the queue.
    """
    outcome = Outcome()
    queues: dict[str, Queue] = {}
    for chunk in _chunks(list(reversed(entries))):
        pipe = connection.pipeline(transaction=False)
        for entry in chunk:
            pipe.hgetall(AcmeqJob.key_for(entry.id))
        raws = pipe.execute()
        claimed = _claim(connection, chunk)
        pipe = connection.pipeline()
        for entry, raw, ok in zip(chunk, raws, claimed, strict=True):
            if not ok or not raw:
                outcome.gone.append(entry.id)
                continue
            job = AcmeqJob(entry.id, connection=connection, serializer=JSONSerializer)
            job.restore(raw)
            queue = queues.get(job.origin)
            if queue is None:
                queue = queues[job.origin] = Queue(
                    job.origin, connection=connection, serializer=JSONSerializer, job_class=AcmeqJob
                )
            job.started_at = None
            job.ended_at = None
            job._exc_info = ""
            queue._enqueue_job(job, pipeline=pipe)
            pipe.persist(job.key)
            outcome.done.append(entry.id)
        pipe.execute()
    return outcome


def flush_failed(connection: redis.Redis, entries: Sequence[FailedEntry]) -> Outcome:
    """Delete failed jobs from Redis: registry entry, hash, results, executions (``Job.delete``).

    The permanent SQL record (``failed_jobs``) is kept: that is what it is for.
    """
    outcome = Outcome()
    for chunk in _chunks(entries):
        pipe = connection.pipeline(transaction=False)
        for entry in chunk:
            pipe.zrange(keys.executions(entry.id), 0, -1)
            pipe.hget(AcmeqJob.key_for(entry.id), "group_id")
        replies = pipe.execute()
        claimed = _claim(connection, chunk)
        grouped = []
        pipe = connection.pipeline()
        for i, (entry, ok) in enumerate(zip(chunk, claimed, strict=True)):
            if not ok:
                outcome.gone.append(entry.id)
                continue
            if replies[2 * i + 1]:
                grouped.append(entry.id)  # RQ's groups keep their own index: let RQ delete it
                continue
            key = AcmeqJob.key_for(entry.id)
            executions = [f"{entry.id}:{text(e)}" for e in replies[2 * i]]
            pipe.delete(
                key,
                f"{key}:dependents",
                f"{key}:dependencies",
                keys.results(entry.id),
                keys.executions(entry.id),
                *[keys.execution(c) for c in executions],
            )
            if executions:
                pipe.zrem(keys.started(entry.queue), *executions)
            outcome.done.append(entry.id)
        pipe.execute()
        for job_id in grouped:
            with contextlib.suppress(NoSuchJobError):
                AcmeqJob.fetch(job_id, connection=connection).delete()
            outcome.done.append(job_id)
    return outcome
