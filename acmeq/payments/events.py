"""Provider events -> donation actions (the body of ``process_payment_webhook``).

=========  ===========================================  ==========================================
provider   event                                        action
=========  ===========================================  ==========================================
stripe     ``payment_intent.succeeded``                 complete (transaction = PaymentIntent id)
stripe     ``payment_intent.payment_failed``            fail
stripe     ``charge.refunded``                          refund (cumulative ``amount_refunded``)
mollie     fetched payment ``paid``                     complete (+ refund if ``amountRefunded``)
mollie     fetched ``failed``/``expired``/``canceled``  fail
mollie     fetched ``refunded`` / ``amountRefunded``    refund (cumulative)
paypal     ``PAYMENT.CAPTURE.COMPLETED``                complete (transaction = capture id)
paypal     ``PAYMENT.CAPTURE.DENIED``                   fail
paypal     ``PAYMENT.CAPTURE.REFUNDED``                 refund (this refund's amount and id)
=========  ===========================================  ==========================================

The donation is found by the reference the platform put on the payment (Stripe ``metadata.
donation_id``, Mollie ``metadata.donation_id``, PayPal ``custom_id``/``invoice_id``) or, failing
that, by its gateway transaction id. Unknown event types are recorded as ``ignored``. Problems
no retry can fix (no such donation, amount or currency mismatch, malformed payload, a payment
Mollie does not know) mark the event ``failed`` with the reason: permanent failure tracking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.errors import PermanentEventError as PermanentEventError
from acmeq.errors import PermanentGatewayError
from acmeq.payments.amounts import to_minor
from acmeq.payments.donations import Completion, complete_donation, fail_donation
from acmeq.payments.refunds import provider_refund
from acmeq.payments.sqlutil import DONATIONS, EVENTS
from acmeq.storage.models import WebhookStatus, utcnow


class Action(StrEnum):
    COMPLETE = "complete"
    FAIL = "fail"
    REFUND = "refund"


@dataclass(frozen=True)
class Intent:
    """What an event asks for, provider-neutral."""

    actions: tuple[Action, ...]
    transaction_id: str
    reference: str | None  # the platform's donation id, as sent to the provider
    amount_minor: int | None = None
    currency: str | None = None
    refunded_total_minor: int | None = None  # cumulative (Stripe, Mollie)
    refund_amount_minor: int | None = None  # this refund (PayPal)
    refund_id: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class EventResult:
    status: str  # the event's status afterwards
    detail: str
    donation_id: int | None = None
    completion: Completion | None = None


FetchPayment = Callable[[str, str], dict[str, Any]]  # (provider, transaction id) -> payment


def _obj(payload: dict[str, Any], *path: str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _minor(value: Any, currency: Any) -> int:
    if not isinstance(currency, str) or len(currency) != 3:
        raise PermanentEventError(f"bad currency {currency!r}")
    try:
        return to_minor(value, currency)
    except ValueError as exc:
        raise PermanentEventError(str(exc)) from None


def _ref(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, int)) and str(value) else None


def stripe_intent(event_type: str, payload: dict[str, Any]) -> Intent | None:
    obj = _obj(payload, "data", "object")
    if not isinstance(obj, dict):
        raise PermanentEventError("event has no data.object")
    currency = str(obj.get("currency", "")).upper() or None
    reference = _ref(_obj(obj, "metadata", "donation_id"))
    if event_type in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        tx = obj.get("id")
        if not isinstance(tx, str):
            raise PermanentEventError("payment intent has no id")
        if event_type == "payment_intent.payment_failed":
            message = _obj(obj, "last_payment_error", "message")
            return Intent((Action.FAIL,), tx, reference, reason=str(message or "payment failed"))
        amount = obj.get("amount_received") or obj.get("amount")
        if not isinstance(amount, int):
            raise PermanentEventError("payment intent has no amount")
        return Intent((Action.COMPLETE,), tx, reference, amount, currency)
    if event_type == "charge.refunded":
        tx = obj.get("payment_intent")
        refunded = obj.get("amount_refunded")
        if not isinstance(tx, str) or not isinstance(refunded, int):
            raise PermanentEventError("charge has no payment_intent or amount_refunded")
        return Intent(
            (Action.REFUND,), tx, reference, currency=currency, refunded_total_minor=refunded
        )
    return None


def mollie_intent(payment: dict[str, Any]) -> Intent | None:
    tx = payment.get("id")
    if not isinstance(tx, str):
        raise PermanentEventError("Mollie payment has no id")
    status = payment.get("status")
    reference = _ref(_obj(payment, "metadata", "donation_id"))
    amount = _obj(payment, "amount", "value")
    currency = _obj(payment, "amount", "currency")
    refunded_value = _obj(payment, "amountRefunded", "value")
    refunded = _minor(refunded_value, currency) if refunded_value is not None else 0
    if status in ("paid", "refunded"):
        actions = [Action.COMPLETE]
        if refunded > 0 or status == "refunded":
            actions.append(Action.REFUND)
        total = refunded if refunded > 0 else _minor(amount, currency)
        return Intent(
            tuple(actions),
            tx,
            reference,
            _minor(amount, currency),
            str(currency).upper(),
            refunded_total_minor=total if Action.REFUND in actions else None,
        )
    if status in ("failed", "expired", "canceled"):
        return Intent((Action.FAIL,), tx, reference, reason=f"Mollie payment {status}")
    return None  # open, pending, authorized: not final yet


def paypal_intent(event_type: str, payload: dict[str, Any]) -> Intent | None:
    resource = payload.get("resource")
    if not isinstance(resource, dict):
        raise PermanentEventError("event has no resource")
    reference = _ref(resource.get("custom_id")) or _ref(resource.get("invoice_id"))
    amount = _obj(resource, "amount", "value")
    currency = _obj(resource, "amount", "currency_code")
    rid = resource.get("id")
    if not isinstance(rid, str):
        raise PermanentEventError("resource has no id")
    if event_type == "PAYMENT.CAPTURE.COMPLETED":
        return Intent((Action.COMPLETE,), rid, reference, _minor(amount, currency), str(currency))
    if event_type == "PAYMENT.CAPTURE.DENIED":
        return Intent((Action.FAIL,), rid, reference, reason="PayPal capture denied")
    if event_type == "PAYMENT.CAPTURE.REFUNDED":
        capture = _capture_of(resource) or rid
        return Intent(
            (Action.REFUND,),
            capture,
            reference,
            currency=str(currency),
            refund_amount_minor=_minor(amount, currency),
            refund_id=rid,
        )
    return None


def _capture_of(refund: dict[str, Any]) -> str | None:
    for link in refund.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "up" and isinstance(link.get("href"), str):
            return str(link["href"]).rstrip("/").rsplit("/", 1)[-1]
    return None


def interpret(
    provider: str, event_type: str, payload: dict[str, Any], fetch: FetchPayment
) -> Intent | None:
    """The provider-neutral intent of an event, or None for event types acmeq does not handle."""
    if provider == "stripe":
        return stripe_intent(event_type, payload)
    if provider == "paypal":
        return paypal_intent(event_type, payload)
    if provider == "mollie":
        payment_id = payload.get("id") if payload.get("classic") else payload.get("entityId")
        if not isinstance(payment_id, str) or not payment_id.startswith("tr_"):
            return None  # a signed event about something other than a payment
        try:
            payment = fetch("mollie", payment_id)
        except PermanentGatewayError as exc:
            raise PermanentEventError(f"Mollie does not know payment {payment_id}: {exc}") from None
        return mollie_intent(payment)
    raise PermanentEventError(f"unknown provider {provider!r}")


def find_donation(engine: Engine, provider: str, intent: Intent) -> Any:
    """The donation an intent is about; PermanentEventError if none or it does not fit."""
    columns = (
        DONATIONS.c.id,
        DONATIONS.c.gateway,
        DONATIONS.c.gateway_transaction_id,
        DONATIONS.c.amount_minor,
        DONATIONS.c.currency,
    )
    with engine.connect() as conn:
        row = None
        if intent.reference is not None and intent.reference.isdigit():
            row = conn.execute(
                sa.select(*columns).where(DONATIONS.c.id == int(intent.reference))
            ).first()
        if row is None:
            row = conn.execute(
                sa.select(*columns).where(
                    DONATIONS.c.gateway_transaction_id == intent.transaction_id
                )
            ).first()
    if row is None:
        raise PermanentEventError(
            f"no donation for reference {intent.reference!r} "
            f"/ transaction {intent.transaction_id!r}"
        )
    if str(row.gateway) != provider:
        raise PermanentEventError(f"donation {row.id} is paid with {row.gateway}, not {provider}")
    if row.gateway_transaction_id and row.gateway_transaction_id != intent.transaction_id:
        raise PermanentEventError(
            f"donation {row.id} belongs to transaction {row.gateway_transaction_id}, "
            f"not {intent.transaction_id}"
        )
    if intent.amount_minor is not None and (
        intent.amount_minor != row.amount_minor
        or (intent.currency or "").upper() != row.currency.upper()
    ):
        raise PermanentEventError(
            f"amount mismatch for donation {row.id}: paid {intent.amount_minor} {intent.currency}, "
            f"expected {row.amount_minor} {row.currency}"
        )
    return row


def mark_event(engine: Engine, event_row: int, status: WebhookStatus, error: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(EVENTS)
            .where(EVENTS.c.id == event_row)
            .values(status=status.value, error=error, processed_at=utcnow())
        )


def note_error(engine: Engine, event_row: int, error: str) -> None:
    """Record a transient error on a still-``received`` event (it will be retried)."""
    with engine.begin() as conn:
        conn.execute(sa.update(EVENTS).where(EVENTS.c.id == event_row).values(error=error[:2000]))


def process_event(
    engine: Engine, event_row: int, fetch: FetchPayment, actor: str = "acmeq"
) -> EventResult:
    """Process a recorded event once; transient errors propagate (the job is retried)."""
    with engine.connect() as conn:
        ev = conn.execute(sa.select(EVENTS).where(EVENTS.c.id == event_row)).first()
    if ev is None:
        raise PermanentEventError(f"no webhook event with id {event_row}")
    if ev.status != WebhookStatus.RECEIVED.value:
        return EventResult(str(ev.status), "already handled")
    try:
        intent = interpret(ev.provider, ev.event_type, ev.payload or {}, fetch)
        if intent is None:
            detail = f"event type {ev.event_type!r} is not handled"
            mark_event(engine, event_row, WebhookStatus.IGNORED, detail)
            return EventResult(WebhookStatus.IGNORED.value, detail)
        donation = find_donation(engine, ev.provider, intent)
    except PermanentEventError as exc:
        mark_event(engine, event_row, WebhookStatus.FAILED, str(exc))
        return EventResult(WebhookStatus.FAILED.value, str(exc))
    completion, details = _perform(engine, ev, intent, int(donation.id), actor)
    mark_event(engine, event_row, WebhookStatus.PROCESSED, None)
    return EventResult(
        WebhookStatus.PROCESSED.value, "; ".join(details), int(donation.id), completion
    )


def _perform(
    engine: Engine, ev: Any, intent: Intent, donation_id: int, actor: str
) -> tuple[Completion | None, list[str]]:
    completion = None
    details = []
    for action in intent.actions:
        if action is Action.COMPLETE:
            completion = complete_donation(engine, donation_id, intent.transaction_id, actor)
            details.append("completed" if completion.completed else f"was {completion.status}")
        elif action is Action.FAIL:
            failed = fail_donation(engine, donation_id, intent.reason, actor)
            details.append("failed" if failed else "was not pending")
        else:
            which = intent.refund_id or intent.transaction_id
            total = intent.refunded_total_minor or intent.refund_amount_minor
            key = f"{ev.provider}:{which}:{total}"
            outcome = provider_refund(
                engine,
                donation_id,
                key,
                total_refunded_minor=intent.refunded_total_minor,
                amount_minor=intent.refund_amount_minor,
                gateway_refund_id=intent.refund_id,
                actor=actor,
            )
            details.append(f"refunded {outcome.amount_minor}" if outcome else "refund known")
    return completion, details
