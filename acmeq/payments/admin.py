"""What `acmeq donation refund` calls: request a refund, then enqueue or run it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from acmeq.config.settings import Settings
from acmeq.errors import RefundError, UsageError
from acmeq.payments import refunds
from acmeq.payments.amounts import fmt, to_minor
from acmeq.payments.gateways import gateway_for
from acmeq.payments.sqlutil import DONATIONS


def refund_donation(
    settings: Settings,
    donation_id: int,
    amount: str | None,
    reason: str = "",
    key: str | None = None,
    inline: bool = False,
    actor: str = "cli",
) -> dict[str, Any]:
    """Record the refund request and enqueue ``process_refund`` (or run it with ``inline``)."""
    from acmeq.storage import sql

    engine = sql.engine_for(settings)
    sql.require_schema(engine)
    with engine.connect() as conn:
        currency = conn.execute(
            sa.select(DONATIONS.c.currency).where(DONATIONS.c.id == donation_id)
        ).scalar()
    if currency is None:
        raise RefundError(f"no donation with id {donation_id}")
    amount_minor = None
    if amount is not None:
        try:
            amount_minor = to_minor(amount, currency)
        except ValueError as exc:
            raise UsageError(f"--amount: invalid amount {amount!r} ({exc})") from None
        if amount_minor <= 0:
            raise UsageError(f"--amount: must be positive, got {amount!r}")
    request = refunds.request_refund(engine, donation_id, amount_minor, reason, key, actor)
    result: dict[str, Any] = {
        "refund_id": request.refund_id,
        "donation_id": donation_id,
        "amount_minor": request.amount_minor,
        "currency": request.currency,
        "created": request.created,
        "status": request.status,
    }
    what = f"refund {request.refund_id} of {fmt(request.amount_minor, request.currency)}"
    if not request.created:
        result["message"] = f"{what} was requested before (status {request.status}); nothing new"
        return result
    if inline:
        gw = settings.payments.gateways
        outcome = refunds.process_refund(
            engine, request.refund_id, lambda p: gateway_for(p, gw), gw.tries, actor
        )
        result.update(status=outcome.status, matched_reversed_minor=outcome.matched_reversed_minor)
        result["message"] = f"{what}: {outcome.status}" + (
            f" ({outcome.error})" if outcome.error else ""
        )
        return result
    from acmeq.queues import Enqueuer
    from acmeq.storage.redis_client import connect_checked

    job = Enqueuer(settings, connect_checked(settings)).enqueue("process_refund", request.refund_id)
    result["job_id"] = job.id
    result["message"] = f"{what} requested; job {job.id} (process_refund) enqueued on payments"
    return result
