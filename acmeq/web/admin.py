"""Operator views of received webhook events: list, replay, reconcile.

``reconcile`` is the safety net of the receiver's order (record, then enqueue): an event that was
recorded but whose job never reached Redis (Redis failed after the insert and the provider gave
up retrying) is still ``received`` and has no job; reconcile enqueues it. Running it from cron
every few minutes (or ``acmeq webhook reconcile`` by hand) closes that window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.queues import Enqueuer, JobCall
from acmeq.storage.models import WebhookStatus, utcnow
from acmeq.storage.redis_client import connect_checked
from acmeq.web.intake import EVENTS, JOB_NAME, Intake, job_id_for

PROVIDERS = ("stripe", "mollie", "paypal")


@dataclass(frozen=True)
class EventRow:
    id: int
    provider: str
    event_id: str
    event_type: str
    status: str
    received_at: datetime
    processed_at: datetime | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "status": self.status,
            "received_at": self.received_at.isoformat(),
            "processed_at": self.processed_at.isoformat() if self.processed_at else None,
            "error": self.error,
            "job_id": job_id_for(self.id),
        }


def list_events(
    engine: Engine,
    provider: str | None = None,
    status: str | None = None,
    since: timedelta | None = None,
    limit: int = 50,
) -> list[EventRow]:
    """The newest events first, filtered; UsageError naming a bad provider or status."""
    query = sa.select(
        EVENTS.c.id,
        EVENTS.c.provider,
        EVENTS.c.event_id,
        EVENTS.c.event_type,
        EVENTS.c.status,
        EVENTS.c.received_at,
        EVENTS.c.processed_at,
        EVENTS.c.error,
    )
    if provider is not None:
        if provider not in PROVIDERS:
            raise UsageError(
                f"--provider: unknown provider {provider!r}; use {', '.join(PROVIDERS)}"
            )
        query = query.where(EVENTS.c.provider == provider)
    if status is not None:
        valid = [s.value for s in WebhookStatus]
        if status not in valid:
            raise UsageError(f"--status: unknown status {status!r}; use {', '.join(valid)}")
        query = query.where(EVENTS.c.status == status)
    if since is not None:
        query = query.where(EVENTS.c.received_at >= utcnow() - since)
    query = query.order_by(EVENTS.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [EventRow(*row) for row in conn.execute(query)]


def _find(conn: sa.Connection, ref: str) -> Any:
    if ref.isdigit():
        row = conn.execute(sa.select(EVENTS).where(EVENTS.c.id == int(ref))).first()
        if row is not None:
            return row
    rows = conn.execute(sa.select(EVENTS).where(EVENTS.c.event_id == ref)).all()
    if len(rows) > 1:
        raise UsageError(f"event id {ref!r} exists for several providers; give the row id")
    if not rows:
        raise UsageError(f"no webhook event {ref!r} (give the row id or the provider's event id)")
    return rows[0]


def replay(settings: Settings, engine: Engine, ref: str) -> dict[str, Any]:
    """Set an event back to ``received`` and enqueue its job again (effects stay exactly-once)."""
    with engine.begin() as conn:
        row = _find(conn, ref)
        conn.execute(
            sa.update(EVENTS)
            .where(EVENTS.c.id == row.id)
            .values(status=WebhookStatus.RECEIVED.value, error=None, processed_at=None)
        )
    connection = connect_checked(settings)
    # A fresh job id: the first job's hash may still exist (finished, kept for result_ttl).
    job_id = f"{job_id_for(row.id)}-replay-{int(time.time() * 1000)}"
    job = Enqueuer(settings, connection).enqueue_call(JobCall(JOB_NAME, (row.id,), job_id=job_id))
    return {
        "id": row.id,
        "provider": row.provider,
        "event_id": row.event_id,
        "job_id": job.id,
        "previous_status": str(row.status),
    }


def reconcile(
    settings: Settings, engine: Engine, older_than: timedelta, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Enqueue every ``received`` event older than ``older_than`` that has no job in Redis."""
    cutoff = utcnow() - older_than
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(EVENTS.c.id, EVENTS.c.provider, EVENTS.c.event_id).where(
                (EVENTS.c.status == WebhookStatus.RECEIVED.value) & (EVENTS.c.received_at < cutoff)
            )
        ).all()
    connection = connect_checked(settings)
    intake = Intake(settings, engine, connection)
    done = []
    for row in rows:
        exists = bool(connection.exists(intake.queue.job_class.key_for(job_id_for(row.id))))
        if exists:
            continue
        if not dry_run:
            intake.enqueue(row.id)
        done.append(
            {
                "id": row.id,
                "provider": row.provider,
                "event_id": row.event_id,
                "job_id": job_id_for(row.id),
            }
        )
    return done
