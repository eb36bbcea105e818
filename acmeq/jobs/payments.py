"""Payment jobs (queue ``payments``, priority 10): thin wrappers over :mod:`acmeq.payments`.

Each is safe to run twice: the webhook event's status, the donation's conditional UPDATE and the
refund's idempotency key decide whether anything happens (docs/payments.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from acmeq.allowlist import job

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from acmeq.config.settings import Settings

log = logging.getLogger("acmeq.jobs.payments")

NOTIFICATION_JOBS = ("send_payment_confirmation", "send_organizer_notification")


def _context() -> tuple[Settings, Engine]:
    from acmeq.config.settings import process_settings
    from acmeq.storage.sql import engine_for

    settings = process_settings()
    return settings, engine_for(settings)


def _actor() -> str:
    from rq import get_current_job

    current = get_current_job()
    return f"job:{current.id}" if current is not None else "acmeq"


def _last_try() -> bool:
    from rq import get_current_job

    current = get_current_job()
    return current is None or not current.retries_left


def notify_completed(settings: Settings, donation_id: int) -> list[str]:
    """Enqueue the donor's confirmation and the organizer's notice by name; return their ids.

    A notification job that is not registered (mail not installed) is skipped with a warning:
    the donation is complete whatever the mail does.
    """
    from acmeq.queues import Enqueuer, registry_for
    from acmeq.storage.redis_client import connect

    registry = registry_for(settings)
    enqueuer: Enqueuer | None = None
    ids = []
    for name in NOTIFICATION_JOBS:
        if name not in registry:
            log.warning("job %s is not registered; donation %s gets no %s", name, donation_id, name)
            continue
        if enqueuer is None:
            enqueuer = Enqueuer(settings, connect(settings), registry)
        ids.append(enqueuer.enqueue(name, donation_id).id)
    return ids


def _fetcher(settings: Settings) -> Any:
    from acmeq.payments.gateways import gateway_for, with_retries

    def fetch(provider: str, transaction_id: str) -> dict[str, Any]:
        gateway = gateway_for(provider, settings.payments.gateways)
        return with_retries(
            lambda: gateway.fetch_payment(transaction_id), settings.payments.gateways.tries
        )

    return fetch


@job(queue="payments")
def process_payment_webhook(event_id: int) -> dict[str, Any]:
    """Turn a recorded provider event into its donation action (complete, fail, refund)."""
    from acmeq.payments import events
    from acmeq.storage.models import WebhookStatus

    settings, engine = _context()
    try:
        result = events.process_event(engine, event_id, _fetcher(settings), _actor())
    except events.PermanentEventError as exc:
        return {"event": event_id, "status": "failed", "detail": str(exc)}
    except Exception as exc:
        # Transient (database, gateway, a refund in flight): note it and let RQ retry; on the
        # last try the event is marked failed so `acmeq webhook events --status failed` shows it.
        error = f"{type(exc).__name__}: {exc}"
        try:
            if _last_try():
                events.mark_event(engine, event_id, WebhookStatus.FAILED, error)
            else:
                events.note_error(engine, event_id, error)
        except Exception:  # the database may be what failed
            log.exception("cannot record the error of webhook event %s", event_id)
        raise
    if result.completion is not None and result.completion.completed:
        notify_completed(settings, result.completion.donation_id)
    return {"event": event_id, "status": result.status, "detail": result.detail}


@job(queue="payments")
def process_donation(donation_id: int, transaction_id: str | None = None) -> dict[str, Any]:
    """Complete a pending donation once: totals, corporate match, milestones, audit, mail."""
    from acmeq.payments.donations import complete_donation

    settings, engine = _context()
    done = complete_donation(engine, donation_id, transaction_id, _actor())
    notified = notify_completed(settings, donation_id) if done.completed else []
    return {
        "donation": donation_id,
        "completed": done.completed,
        "status": done.status,
        "matched_minor": done.matched_minor,
        "milestones": list(done.milestones),
        "notifications": notified,
    }


@job(queue="payments")
def process_refund(refund_id: int) -> dict[str, Any]:
    """Send a pending refund to its gateway and apply it (match reversal, totals, audit)."""
    from acmeq.payments import refunds
    from acmeq.payments.gateways import gateway_for

    settings, engine = _context()
    gateways = settings.payments.gateways
    outcome = refunds.process_refund(
        engine,
        refund_id,
        lambda provider: gateway_for(provider, gateways),
        gateways.tries,
        _actor(),
    )
    return {
        "refund": refund_id,
        "status": outcome.status,
        "applied": outcome.applied,
        "amount_minor": outcome.amount_minor,
        "matched_reversed_minor": outcome.matched_reversed_minor,
        "error": outcome.error,
    }
