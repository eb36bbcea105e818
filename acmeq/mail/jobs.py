"""The bodies of the mail jobs that send: one message (``send_email``) and a batch of personal
messages to users (``send_email_batch``, the unit of a bulk fan-out, reminders).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import sqlalchemy as sa

from acmeq.config.settings import Settings, process_settings
from acmeq.errors import MailError, UsageError
from acmeq.mail import PRIORITIES
from acmeq.mail.render import render, resolve_locale
from acmeq.mail.sending import Attempt, Outgoing, Pending, compose, current_attempt, deliver
from acmeq.mail.transport import transport_for


def _engine(settings: Settings) -> Any:
    from acmeq.mail.store import mail_engine

    return mail_engine(settings)


def run_send_email(**kwargs: Any) -> dict[str, Any]:
    """``send_email``: compose, then deliver once per recipient (see :func:`deliver`)."""
    settings = process_settings()
    priority = kwargs.get("priority") or "normal"
    if priority not in PRIORITIES:
        raise UsageError(f"unknown mail priority {priority!r}; expected high, normal, low, bulk")
    rerouted = _reroute(priority, kwargs)
    if rerouted is not None:
        return {"rerouted_to": rerouted}
    attempt = current_attempt()
    key = kwargs.get("message_key") or (
        f"job:{attempt.job_id}" if attempt.job_id else f"local:{uuid4().hex}"
    )
    out = compose(
        settings,
        to=kwargs["to"],
        subject=kwargs.get("subject"),
        template=kwargs.get("template"),
        context=kwargs.get("context"),
        locale=kwargs.get("locale"),
        cc=kwargs.get("cc"),
        bcc=kwargs.get("bcc"),
        reply_to=kwargs.get("reply_to"),
        attachments=kwargs.get("attachments"),
        text=kwargs.get("text"),
        html=kwargs.get("html"),
    )
    payload = {k: v for k, v in kwargs.items() if v is not None}
    payload["message_key"] = key
    result = deliver(_engine(settings), transport_for(settings), out, key, attempt, payload)
    return _summary(result)


def _reroute(priority: str, kwargs: dict[str, Any]) -> str | None:
    """``acmeq.enqueue("send_email", ..., priority="bulk")`` lands on notifications (the job's
    queue); move it to bulk, where its priority says it belongs. Returns the new job id."""
    from rq import get_current_job

    from acmeq.mail import BULK_PRIORITIES

    job = get_current_job()
    if job is None or priority not in BULK_PRIORITIES or job.origin == "bulk":
        return None
    from acmeq.queues import Enqueuer

    moved = Enqueuer(process_settings(), job.connection).enqueue("send_email_bulk", **kwargs)
    return str(moved.id)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "message_key": result["message_key"],
        "sent": len(result["sent"]),
        "already_sent": len(result["already_sent"]),
        "uncertain": len(result["uncertain"]),
        "refused": len(result["refused"]),
    }


def users_by_id(settings: Settings, user_ids: list[int]) -> dict[int, dict[str, Any]]:
    """E-mail, name and locale of these users, unsubscribed ones left out."""
    from acmeq.storage.models import User

    users = User.__table__  # type: ignore[attr-defined]
    with _engine(settings).connect() as conn:
        rows = conn.execute(
            sa.select(users.c.id, users.c.email, users.c.name, users.c.locale).where(
                users.c.id.in_(user_ids), users.c.unsubscribed_at.is_(None)
            )
        )
        return {int(r.id): dict(r._mapping) for r in rows}


def run_send_batch(
    template: str,
    message_key: str,
    user_ids: list[int],
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``send_email_batch``: one personal message per user, rendered in the user's locale.

    The key of each message is ``message_key`` (claims are per recipient), so a batch that is
    retried, or enqueued twice, sends nobody anything twice. A failure before the last try fails
    the batch (it is retried with the queue's backoff and skips who already got it); on the last
    try each failure is recorded and the batch carries on.
    """
    settings = process_settings()
    engine = _engine(settings)
    transport = transport_for(settings)
    attempt = current_attempt()
    users = users_by_id(settings, user_ids)
    totals = {"sent": 0, "already_sent": 0, "uncertain": 0, "refused": 0, "failed": 0}
    pending = Pending()
    try:
        for user_id in user_ids:
            user = users.get(user_id)
            if user is None:
                continue  # unsubscribed or deleted since the fan-out
            out = _personal(settings, template, user, context or {})
            payload = {
                "to": out.to,
                "subject": out.subject,
                "text": out.text,
                "html": out.html,
                "locale": out.locale,
                "message_key": message_key,
            }
            try:
                result = deliver(engine, transport, out, message_key, attempt, payload, pending)
            except MailError:
                if not attempt.last:
                    raise
                totals["failed"] += 1  # recorded by deliver; the others still get theirs
                continue
            for name, value in _summary(result).items():
                if name != "message_key":
                    totals[name] += value
    finally:
        pending.flush(engine)  # the last message's "sent" mark
    return totals


def _personal(
    settings: Settings, template: str, user: dict[str, Any], context: dict[str, Any]
) -> Outgoing:
    locale = resolve_locale(user.get("locale"), settings.mail.default_locale)
    rendered = render(template, {**context, "user_name": user["name"]}, locale)
    out = compose(
        settings,
        to=[user["email"]],
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        locale=rendered.locale,
    )
    out.template = template
    return out


__all__ = ["Attempt", "run_send_batch", "run_send_email", "users_by_id"]
