"""Recording a verified event durably and handing it to the ``payments`` queue.

Order and failure handling (docs/payments.md, "Receiving"):

1. ``INSERT ... ON CONFLICT (provider, event_id) DO NOTHING RETURNING id`` in autocommit: one
   database round trip; when it returns, the event is committed.
2. Enqueue ``process_payment_webhook(<row id>)`` with the job id ``webhook-<row id>`` through one
   Lua script that writes the job only if that id does not exist yet: one Redis round trip.
3. Only then 2xx.

If Redis fails after the insert, the provider gets a 503 and retries; its retry conflicts on the
insert, finds the row still ``received`` and enqueues it then. The same "received and no job" check
is what ``acmeq webhook reconcile`` / ``replay`` run, so no recorded event is lost even if the
provider gives up. A duplicate of an event whose job exists (queued, running, retried) enqueues
nothing: the job id decides, atomically, however many duplicates arrive at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.queues import Enqueuer, JobCall
from acmeq.storage.models import WebhookEvent, WebhookStatus, utcnow
from acmeq.web.verify import VerifiedEvent

log = logging.getLogger("acmeq.web")

JOB_NAME = "process_payment_webhook"
EVENTS: sa.Table = WebhookEvent.__table__  # type: ignore[attr-defined]

# KEYS: job hash, queue list, set of queues. ARGV: job id, queue key, then the hash's field/value
# pairs. Writes the job only when its hash does not exist: at most one job per event.
_ENQUEUE_IF_ABSENT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # recorded now and enqueued
    DUPLICATE = "duplicate"  # recorded before; its job exists or it was processed already
    REQUEUED = "requeued"  # recorded before but had no job (e.g. Redis failed): enqueued now


class StoreUnavailable(Exception):
    """The database or Redis failed: the event is not (known to be) safely handed over."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what} unavailable: {type(exc).__name__}")
        self.what = what


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    row_id: int


def job_id_for(row_id: int) -> str:
    return f"webhook-{row_id}"


class Intake:
    """Records events and enqueues their jobs; one per receiver process (thread-safe)."""

    def __init__(self, settings: Settings, engine: Engine, connection: redis.Redis) -> None:
        self.engine = engine
        self.connection = connection
        self.enqueuer = Enqueuer(settings, connection)
        self.jobdef = self.enqueuer.registry.get(JOB_NAME)
        self.queue = self.enqueuer.queue(self.jobdef.queue)
        self.script = connection.register_script(_ENQUEUE_IF_ABSENT)
        self.dialect = engine.dialect.name

    # -- SQL -------------------------------------------------------------------------------
    def _insert(self, event: VerifiedEvent) -> Any:
        values = {
            "provider": event.provider,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "status": WebhookStatus.RECEIVED.value,
            "payload": event.payload,
            "received_at": utcnow(),
        }
        insert: Any = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        return (
            insert(EVENTS)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(EVENTS.c.id)
        )

    def _record(self, event: VerifiedEvent) -> tuple[int, bool, str]:
        """(row id, inserted now, status); one round trip unless it is a duplicate."""
        for attempt in (1, 2):
            try:
                with self.engine.connect() as conn:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    row_id = conn.execute(self._insert(event)).scalar()
                    if row_id is not None:
                        return int(row_id), True, WebhookStatus.RECEIVED.value
                    return self._existing(conn, event)
            except sa.exc.DBAPIError as exc:
                # A pooled connection the server closed is invalidated; one fresh try.
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise StoreUnavailable("database", exc) from exc
        raise AssertionError("unreachable")

    def _existing(self, conn: sa.Connection, event: VerifiedEvent) -> tuple[int, bool, str]:
        where = (EVENTS.c.provider == event.provider) & (EVENTS.c.event_id == event.event_id)
        row = conn.execute(sa.select(EVENTS.c.id, EVENTS.c.status).where(where)).one()
        status = str(row.status)
        if event.rearm and status != WebhookStatus.RECEIVED.value:
            # Mollie classic: the same payment id means "its status changed, look again".
            conn.execute(
                sa.update(EVENTS)
                .where(EVENTS.c.id == row.id)
                .values(status=WebhookStatus.RECEIVED.value, received_at=utcnow(), error=None)
            )
            status = WebhookStatus.RECEIVED.value
        return int(row.id), False, status

    # -- Redis -----------------------------------------------------------------------------
    def enqueue(self, row_id: int) -> bool:
        """Enqueue the event's job unless a job with its id exists; True if enqueued now."""
        job_id = job_id_for(row_id)
        keys = [self.queue.job_class.key_for(job_id), self.queue.key, self.queue.redis_queues_keys]
        try:
            # The first call builds the job template, which asks Redis for its version.
            call = JobCall(JOB_NAME, (row_id,), job_id=job_id)
            flat: list[Any] = [job_id, self.queue.key]
            for key, value in self.enqueuer._hash(self.jobdef, call).items():
                flat.extend((key, value))
            return bool(self.script(keys=keys, args=flat))
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", exc) from exc

    # -- the whole hand-over ------------------------------------------------------------------
    def accept(self, event: VerifiedEvent) -> Accepted:
        row_id, inserted, status = self._record(event)
        if inserted:
            self.enqueue(row_id)
            return Accepted(Outcome.ACCEPTED, row_id)
        if status == WebhookStatus.RECEIVED.value and self.enqueue(row_id):
            log.info("%s event %s was recorded without a job; enqueued now", event.provider, row_id)
            return Accepted(Outcome.REQUEUED, row_id)
        return Accepted(Outcome.DUPLICATE, row_id)
