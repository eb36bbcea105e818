"""Cleanup of Redis data: RQ's failed registries and the app's cache/session keys.

Failed jobs are deleted exactly as `acmeq failed flush` deletes them
(:func:`acmeq.ops.failed.flush_failed`: registry entry claimed first, then the job hash, its
results stream, executions and dependency sets), so a job retried by an operator meanwhile is
never touched. Cache keys are only deleted when they have no TTL and have not been touched for
the retention period (``OBJECT IDLETIME``): a key with a TTL is Redis's to expire.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import redis

from acmeq import keys as rkeys
from acmeq.maintenance.report import CategoryResult
from acmeq.storage.redis_client import text

# RQ statuses of a job that is not finished with: its data must stay.
ACTIVE_STATUSES = frozenset({"queued", "started", "deferred", "scheduled"})


# One round trip per batch instead of one command per job: packing a thousand HGETs costs the
# client far more than the server's loop (bench/cleanup.py).
_ACTIVE_LUA = """
local found = {}
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status == 'queued' or status == 'started' or status == 'deferred'
     or status == 'scheduled' then
    found[#found + 1] = i
  end
end
return found
"""
# ended_at, status and the memory of the hash plus its results stream, per job of a page.
_FAILED_PAGE_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local meta = redis.call('HMGET', key, 'ended_at', 'status')
  local size = (redis.call('MEMORY', 'USAGE', key) or 0)
  size = size + (redis.call('MEMORY', 'USAGE', ARGV[i]) or 0)
  out[i] = {meta[1] or '', meta[2] or '', size}
end
return out
"""


def active_job_ids(connection: redis.Redis, job_ids: Iterable[str]) -> set[str]:
    """The ids among ``job_ids`` whose RQ job is still queued, scheduled, deferred or running."""
    ids = list(job_ids)
    if not ids:
        return set()
    found = cast(list[int], connection.eval(_ACTIVE_LUA, len(ids), *[rkeys.job(i) for i in ids]))
    return {ids[int(index) - 1] for index in found}


def failed_queues(connection: redis.Redis, configured: Iterable[str]) -> list[str]:
    """The configured queues plus any other queue RQ knows of (``rq:queues``)."""
    names = dict.fromkeys(configured)
    for key in cast(set[bytes], connection.smembers(rkeys.QUEUES)):
        name = text(key).removeprefix(rkeys.QUEUE_PREFIX)
        names.setdefault(name)
    return list(names)


def _date(raw: Any) -> datetime | None:
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(text(raw))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def sweep_failed_registry(
    connection: redis.Redis,
    queue: str,
    cutoff: datetime,
    result: CategoryResult,
    *,
    batch_size: int,
    dry_run: bool,
) -> None:
    """Delete the jobs in ``rq:failed:<queue>`` that failed before ``cutoff``.

    Pages through the set in index order; a page's deleted entries vanish from the set, so the
    next page starts after the entries kept so far. A job whose hash is already gone (RQ let it
    expire) leaves a dangling entry, which goes too. Each page is one read pipeline and one
    delete pipeline (timed as a transaction).
    """
    from acmeq.ops.failed import FailedEntry, flush_failed

    key = rkeys.failed(queue)
    start = 0
    while True:
        members = cast(list[bytes], connection.zrange(key, start, start + batch_size - 1))
        ids = [text(m) for m in members]
        if not ids:
            return
        with result.transaction():
            keys = [rkeys.job(job_id) for job_id in ids]
            results = [rkeys.results(job_id) for job_id in ids]
            replies = cast(
                list[list[Any]], connection.eval(_FAILED_PAGE_LUA, len(keys), *keys, *results)
            )
            doomed: list[tuple[str, int]] = []
            for job_id, (ended_at, status, size) in zip(ids, replies, strict=True):
                if text(status) in ACTIVE_STATUSES:
                    result.kept += 1  # retried meanwhile: the queue owns it now
                    continue
                failed_at = _date(ended_at)
                if failed_at is not None and failed_at >= cutoff:
                    continue
                doomed.append((job_id, int(size)))
            result.add_found(len(doomed), sum(size for _, size in doomed))
            if not dry_run and doomed:
                sizes = dict(doomed)
                entries = [_entry(job_id, queue, FailedEntry) for job_id, _ in doomed]
                outcome = flush_failed(connection, entries)
                result.add_deleted(len(outcome.done), sum(sizes[i] for i in outcome.done))
        start += len(ids) if dry_run else len(ids) - len(doomed)
        if len(ids) < batch_size:
            return


def _entry(job_id: str, queue: str, cls: Any) -> Any:
    # flush_failed only reads the id and the queue of an entry.
    return cls(job_id, queue, "", "", None, None, "", "", None)


def sweep_cache_keys(
    connection: redis.Redis,
    prefixes: Sequence[str],
    idle_seconds: int,
    result: CategoryResult,
    *,
    batch_size: int,
    dry_run: bool,
) -> None:
    """UNLINK keys under ``prefixes`` that have no TTL and were idle for ``idle_seconds``.

    SCAN, TTL, OBJECT IDLETIME and MEMORY USAGE do not touch a key's access time, so looking
    never makes a key look fresh. Under an LFU eviction policy Redis keeps no idle time: the
    category then reports that and deletes nothing.
    """
    for prefix in prefixes:
        pattern = _glob_escape(prefix) + "*"
        for keys in _scan_batches(connection, pattern, batch_size):
            with result.transaction():
                pipe = connection.pipeline(transaction=False)
                for key in keys:
                    pipe.ttl(key)
                    pipe.object("idletime", key)
                    pipe.memory_usage(key)
                try:
                    replies = pipe.execute(raise_on_error=True)
                except redis.ResponseError as exc:
                    result.error = f"cannot read key idle times ({exc}); nothing deleted"
                    return
                doomed: list[tuple[bytes, int]] = []
                for i, key in enumerate(keys):
                    ttl, idle, size = replies[3 * i : 3 * i + 3]
                    if ttl == -1 and idle is not None and int(idle) >= idle_seconds:
                        doomed.append((key, int(size or 0)))
                result.add_found(len(doomed), sum(s for _, s in doomed))
                if not dry_run and doomed:
                    pipe = connection.pipeline(transaction=False)
                    for key, _ in doomed:
                        pipe.unlink(key)
                    gone = pipe.execute()
                    done = [size for (_, size), n in zip(doomed, gone, strict=True) if n]
                    result.add_deleted(len(done), sum(done))


def _scan_batches(connection: redis.Redis, pattern: str, count: int) -> Iterable[list[bytes]]:
    batch: list[bytes] = []
    for key in connection.scan_iter(match=pattern, count=count):
        batch.append(key)
        if len(batch) >= count:
            yield batch
            batch = []
    if batch:
        yield batch


def _glob_escape(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
