"""Mail: one transport (SMTP or an outbox directory) for jobs and alerts, templates, sends.

Other modules call :func:`enqueue_email`; it picks the queue by priority (high/normal ->
``notifications``, low/bulk -> ``bulk``).
"""

from __future__ import annotations

from typing import Any

BULK_PRIORITIES = frozenset({"low", "bulk"})
PRIORITIES = frozenset({"high", "normal", "low", "bulk"})


def job_name_for(priority: str) -> str:
    """The registered job that sends at this priority (its queue follows from it)."""
    from acmeq.errors import UsageError

    if priority not in PRIORITIES:
        raise UsageError(
            f"unknown mail priority {priority!r}; expected one of high, normal, low, bulk"
        )
    return "send_email_bulk" if priority in BULK_PRIORITIES else "send_email"


def enqueue_email(
    to: list[str] | str,
    subject: str | None = None,
    template: str | None = None,
    *,
    context: dict[str, Any] | None = None,
    locale: str = "en",
    cc: list[str] | None = None,
    bcc: list[str] | None = None,
    reply_to: str | None = None,
    attachments: list[str] | None = None,
    text: str | None = None,
    html: str | None = None,
    priority: str = "normal",
    message_key: str | None = None,
) -> str:
    """Enqueue one e-mail (job ``send_email``) on the queue its priority picks; return the job id.

    ``attachments`` are file paths readable by the workers (e.g. export files); ``context`` must
    be JSON-safe (amounts as integer minor units or strings). ``message_key`` makes the send
    idempotent across enqueues: a second job with the same key sends to nobody twice.
    """
    import acmeq

    kwargs: dict[str, Any] = {
        "to": to,
        "subject": subject,
        "template": template,
        "context": context,
        "locale": locale,
        "cc": cc,
        "bcc": bcc,
        "reply_to": reply_to,
        "attachments": attachments,
        "text": text,
        "html": html,
        "priority": priority,
        "message_key": message_key,
    }
    job = acmeq.enqueue(
        job_name_for(priority), **{k: v for k, v in kwargs.items() if v is not None}
    )
    return str(getattr(job, "id", job))


def confirmation(to: str | list[str], subject: str, text: str, **options: Any) -> str:
    """A transactional message (seed ``SendEmailJob::confirmation``): priority high."""
    return enqueue_email(to, subject, text=text, priority="high", **options)


def notification(to: str | list[str], subject: str, text: str, **options: Any) -> str:
    """An ordinary notification: priority normal (queue notifications)."""
    return enqueue_email(to, subject, text=text, priority="normal", **options)


def bulk(to: str | list[str], subject: str, text: str, **options: Any) -> str:
    """A message that may wait: priority bulk (queue bulk)."""
    return enqueue_email(to, subject, text=text, priority="bulk", **options)


__all__ = ["bulk", "confirmation", "enqueue_email", "job_name_for", "notification"]
