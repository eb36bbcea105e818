"""Recording verified events durably and handing them to the ``payments`` queue.

Order and failure handling (docs/payments.md, "Receiving"):

1. The events of all requests waiting at that moment are written by one writer thread per
   receiver process in **one transaction**: a multi-row ``INSERT ... ON CONFLICT (provider,
   event_id) DO NOTHING RETURNING id, provider, event_id`` (plus one SELECT for duplicates only),
   then COMMIT. This is group commit: one database round trip and one fsync per batch, never more
   than one per request, and the batch is as large as the concurrency (no artificial delay).
2. After the commit, one Redis pipeline runs a Lua script per event that enqueues
   ``process_payment_webhook(<row id>)`` with the job id ``webhook-<row id>`` only if that job
   does not exist yet.
3. Only then does each request get its 2xx (``accepted``, ``duplicate`` or ``requeued``).

If the database fails, nothing was committed and every request of the batch gets a 503. If Redis
fails after the commit, the events are recorded without a job and the requests get a 503; the
provider's retry conflicts on the insert, finds the row still ``received`` and enqueues it then
(``requeued``). ``acmeq webhook reconcile`` enqueues such events too if the provider gave up. A
duplicate of an event whose job exists (queued, running, scheduled for retry) enqueues nothing:
the job id decides, atomically, however many duplicates arrive at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.errors import StoreUnavailable as StoreUnavailable
from acmeq.queues import Enqueuer, JobCall
from acmeq.storage.models import WebhookEvent, WebhookStatus, utcnow
from acmeq.web.verify import VerifiedEvent

log = logging.getLogger("acmeq.web")

JOB_NAME = "process_payment_webhook"
EVENTS: sa.Table = WebhookEvent.__table__  # type: ignore[attr-defined]
MAX_BATCH = 200  # events per transaction (7 bound values each: far below SQLite's limit)
RECEIVED = WebhookStatus.RECEIVED.value

# Enqueues a batch of jobs, each only if its hash does not exist yet (at most one job per
# event). KEYS: queue list, set of queues. ARGV: the queue key, the number T of template
# field/value pairs, the pairs, then per job: hash key, job id, time stamp, data. Returns 1 per
# job enqueued now, 0 per job that existed. (The job hash keys are derived from the ids, like
# RQ's own scripts do; acmeq never runs on Redis Cluster.)
_ENQUEUE_IF_ABSENT = """
local t = tonumber(ARGV[2])
local template = {}
for i = 3, 2 + 2 * t do template[#template + 1] = ARGV[i] end
local out = {}
local pushed = 0
for i = 3 + 2 * t, #ARGV, 4 do
  local key, id, stamp, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('EXISTS', key) == 1 then
    out[#out + 1] = 0
  else
    redis.call('HSET', key, 'created_at', stamp, 'enqueued_at', stamp, 'data', data,
      unpack(template))
    redis.call('RPUSH', KEYS[1], id)
    pushed = pushed + 1
    out[#out + 1] = 1
  end
end
if pushed > 0 then redis.call('SADD', KEYS[2], ARGV[1]) end
return out
"""


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # recorded now and enqueued
    DUPLICATE = "duplicate"  # recorded before; its job exists or it was processed already
    REQUEUED = "requeued"  # recorded before but had no job (e.g. Redis failed): enqueued now


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    row_id: int


@dataclass(frozen=True)
class _Recorded:
    row_id: int
    inserted: bool
    status: str


def job_id_for(row_id: int) -> str:
    return f"webhook-{row_id}"


class Intake:
    """Records events and enqueues their jobs (thread-safe; the receiver uses one writer)."""

    def __init__(self, settings: Settings, engine: Engine, connection: redis.Redis) -> None:
        self.engine = engine
        self.connection = connection
        self.enqueuer = Enqueuer(settings, connection)
        self.jobdef = self.enqueuer.registry.get(JOB_NAME)
        self.queue = self.enqueuer.queue(self.jobdef.queue)
        self.script = connection.register_script(_ENQUEUE_IF_ABSENT)
        self.dialect = engine.dialect.name
        insert: Any = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._insert_stmt = (
            insert(EVENTS)
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(EVENTS.c.id, EVENTS.c.provider, EVENTS.c.event_id)
        )

    # -- SQL -------------------------------------------------------------------------------
    def _record(self, events: Sequence[VerifiedEvent]) -> list[_Recorded]:
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    return self._record_in(conn, events)
            except sa.exc.DBAPIError as exc:
                # A pooled connection the server closed is invalidated; one fresh try.
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise StoreUnavailable("database", exc) from exc
        raise AssertionError("unreachable")

    def _record_in(self, conn: sa.Connection, events: Sequence[VerifiedEvent]) -> list[_Recorded]:
        now = utcnow()
        unique: dict[tuple[str, str], VerifiedEvent] = {}
        for event in events:
            unique.setdefault((event.provider, event.event_id), event)
        rows = [
            {
                "provider": e.provider,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "status": RECEIVED,
                "payload": e.payload,
                "received_at": now,
            }
            for e in unique.values()
        ]
        # executemany of one cached statement: SQLAlchemy sends it as one multi-row INSERT
        # ("insertmanyvalues") and hands back what RETURNING gave, conflicts left out.
        inserted = {
            (r.provider, r.event_id): int(r.id) for r in conn.execute(self._insert_stmt, rows)
        }
        existing: dict[tuple[str, str], tuple[int, str]] = {}
        missing = [key for key in unique if key not in inserted]
        if missing:
            found = conn.execute(
                sa.select(EVENTS.c.id, EVENTS.c.provider, EVENTS.c.event_id, EVENTS.c.status).where(
                    sa.tuple_(EVENTS.c.provider, EVENTS.c.event_id).in_(missing)
                )
            )
            existing = {(r.provider, r.event_id): (int(r.id), str(r.status)) for r in found}
            existing = self._rearm(conn, unique, existing, now)
        out: list[_Recorded] = []
        first_seen: set[tuple[str, str]] = set()
        for event in events:
            key = (event.provider, event.event_id)
            if key in inserted:
                # A second copy in the same batch is a duplicate of the first.
                out.append(_Recorded(inserted[key], key not in first_seen, RECEIVED))
                first_seen.add(key)
            else:
                row_id, status = existing[key]
                out.append(_Recorded(row_id, False, status))
        return out

    def _rearm(
        self,
        conn: sa.Connection,
        unique: dict[tuple[str, str], VerifiedEvent],
        existing: dict[tuple[str, str], tuple[int, str]],
        now: Any,
    ) -> dict[tuple[str, str], tuple[int, str]]:
        # Mollie classic: the same payment id again means "its status changed, look again".
        ids = [
            row_id
            for key, (row_id, status) in existing.items()
            if unique[key].rearm and status != RECEIVED
        ]
        if not ids:
            return existing
        conn.execute(
            sa.update(EVENTS)
            .where(EVENTS.c.id.in_(ids))
            .values(status=RECEIVED, received_at=now, error=None, processed_at=None)
        )
        return {k: (i, RECEIVED if i in ids else s) for k, (i, s) in existing.items()}

    # -- Redis -----------------------------------------------------------------------------
    def _enqueue(self, row_ids: Sequence[int]) -> list[bool]:
        """Enqueue each event's job unless a job with its id exists; True where enqueued now.

        One EVALSHA for the whole batch: the job hashes share every field but their id, time
        stamps and data, so the shared fields travel once.
        """
        if not row_ids:
            return []
        per_job: list[Any] = []
        template: dict[Any, Any] | None = None
        try:
            for row_id in row_ids:
                job_id = job_id_for(row_id)
                # The first call builds the job template, which asks Redis for its version.
                mapping = self.enqueuer._hash(self.jobdef, JobCall(JOB_NAME, (row_id,)))
                stamp, data = mapping.pop("created_at"), mapping.pop("data")
                mapping.pop("enqueued_at")
                if template is None:
                    template = mapping
                per_job += [self.queue.job_class.key_for(job_id), job_id, stamp, data]
            assert template is not None
            flat: list[Any] = [self.queue.key, len(template)]
            for key, value in template.items():
                flat += [key, value]
            keys = [self.queue.key, self.queue.redis_queues_keys]
            return [bool(r) for r in self.script(keys=keys, args=flat + per_job)]
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", exc) from exc

    def enqueue(self, row_id: int) -> bool:
        return self._enqueue([row_id])[0]

    # -- the whole hand-over ------------------------------------------------------------------
    def accept_many(self, events: Sequence[VerifiedEvent]) -> list[Accepted]:
        """Record the events in one transaction, then enqueue their jobs in one call."""
        return self.finish(self.record(events))

    def record(self, events: Sequence[VerifiedEvent]) -> list[_Recorded]:
        """Step 1: the durable record (committed when this returns)."""
        return self._record(events)

    def finish(self, recorded: Sequence[_Recorded]) -> list[Accepted]:
        """Step 2: enqueue what needs a job; the outcome of each event."""
        wanted = sorted({r.row_id for r in recorded if r.inserted or r.status == RECEIVED})
        enqueued = dict(zip(wanted, self._enqueue(wanted), strict=True))
        out = []
        for r in recorded:
            if r.inserted:
                out.append(Accepted(Outcome.ACCEPTED, r.row_id))
            elif enqueued.pop(r.row_id, False):
                log.info("event %s was recorded without a job; enqueued now", r.row_id)
                out.append(Accepted(Outcome.REQUEUED, r.row_id))
            else:
                out.append(Accepted(Outcome.DUPLICATE, r.row_id))
        return out

    def accept(self, event: VerifiedEvent) -> Accepted:
        return self.accept_many([event])[0]


@dataclass
class _Pending:
    event: VerifiedEvent
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Accepted]


def _settle(future: asyncio.Future[Accepted], result: Accepted | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class BatchWriter:
    """Hands over whatever events are waiting, in batches (group commit), in two stages.

    One thread records a batch in SQL while a second enqueues the previous batch in Redis, so
    the database's commit and Redis' round trip overlap instead of adding up. Each request's
    reply still waits for both stages of its own batch.
    """

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._incoming: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._recorded: queue.SimpleQueue[tuple[list[_Pending], list[_Recorded]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._record_loop, name="acmeq-webhook-sql", daemon=True),
            threading.Thread(target=self._enqueue_loop, name="acmeq-webhook-redis", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    async def accept(self, event: VerifiedEvent) -> Accepted:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._incoming.put(_Pending(event, loop, future))
        return await future

    def close(self) -> None:
        self._incoming.put(None)
        for thread in self._threads:
            thread.join(timeout=10)

    def _next_batch(self) -> list[_Pending] | None:
        first = self._incoming.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                item = self._incoming.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._incoming.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _record_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                recorded = self.intake.record([p.event for p in batch])
            except Exception as exc:  # a bug must fail the requests, never hang them
                _fail(batch, exc)
                continue
            self._recorded.put((batch, recorded))
        self._recorded.put(None)

    def _enqueue_loop(self) -> None:
        while (item := self._recorded.get()) is not None:
            batch, recorded = item
            try:
                results = self.intake.finish(recorded)
            except Exception as exc:
                _fail(batch, exc)
                continue
            _settle_batch(batch, results)


def _fail(batch: Sequence[_Pending], exc: Exception) -> None:
    if not isinstance(exc, StoreUnavailable):
        log.exception("webhook batch failed")
        exc = StoreUnavailable("database", exc)
    _settle_batch(batch, [exc] * len(batch))


def _settle_batch(batch: Sequence[_Pending], results: Sequence[Accepted | BaseException]) -> None:
    """Answer a batch with one wake-up of each event loop (not one per request)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
    for pending, result in zip(batch, results, strict=True):
        by_loop.setdefault(pending.loop, []).append((pending.future, result))
    for loop, pairs in by_loop.items():
        loop.call_soon_threadsafe(_settle_all, pairs)


def _settle_all(pairs: list[tuple[Any, Any]]) -> None:
    for future, result in pairs:
        _settle(future, result)
