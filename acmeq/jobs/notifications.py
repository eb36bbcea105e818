"""Notification jobs (queues ``notifications`` and ``bulk``): thin wrappers over :mod:`acmeq.mail`.

Names agreed across the project: ``send_email`` (queue chosen by priority),
``send_payment_confirmation``, ``send_organizer_notification``, ``send_bulk_notification``,
``send_weekly_digest``, ``send_reminders``.
Other modules enqueue them by name (``acmeq.enqueue("send_payment_confirmation", 5)``) or with
:func:`acmeq.mail.enqueue_email`.
"""

from __future__ import annotations

from typing import Any

from acmeq.allowlist import job


@job(queue="notifications")
def send_email(
    to: list[str] | str,
    subject: str | None = None,
    template: str | None = None,
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
) -> dict[str, Any]:
    """Send one e-mail (template per locale, attachments, cc/bcc); idempotent per recipient."""
    from acmeq.mail.jobs import run_send_email

    return run_send_email(
        to=to,
        subject=subject,
        template=template,
        context=context,
        locale=locale,
        cc=cc,
        bcc=bcc,
        reply_to=reply_to,
        attachments=attachments,
        text=text,
        html=html,
        priority=priority,
        message_key=message_key,
    )


@job(queue="bulk", name="send_email_bulk")
def send_email_bulk(**kwargs: Any) -> dict[str, Any]:
    """send_email on the bulk queue (priority low/bulk); enqueued by acmeq.mail.enqueue_email."""
    return send_email(**kwargs)


@job(queue="notifications")
def send_payment_confirmation(donation_id: int) -> dict[str, Any]:
    """Confirm a donation to its donor, in the donor's locale, with a confirmation number."""
    from acmeq.mail.notifications import payment_confirmation

    return payment_confirmation(donation_id)


@job(queue="notifications")
def send_organizer_notification(donation_id: int) -> dict[str, Any]:
    """Tell a campaign's organizer about a donation (no donor name when anonymous)."""
    from acmeq.mail.notifications import organizer_notification

    return organizer_notification(donation_id)


@job(queue="bulk")
def send_bulk_notification(
    campaign_id: int,
    subject: str,
    body: str,
    audience: str = "donors",
    batch_size: int | None = None,
    priority: str = "normal",
) -> dict[str, Any]:
    """Fan a campaign update out to its donors or all employees, in batches, with progress."""
    from acmeq.mail.bulk import bulk_notification

    return bulk_notification(
        campaign_id, subject, body, audience=audience, batch_size=batch_size, priority=priority
    )


@job(queue="notifications")
def send_email_batch(
    template: str, message_key: str, user_ids: list[int], context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Send one personal message per user (a batch of a fan-out); once per recipient."""
    from acmeq.mail.jobs import run_send_batch

    return run_send_batch(template, message_key, user_ids, context)


@job(queue="bulk", name="send_email_batch_bulk")
def send_email_batch_bulk(
    template: str, message_key: str, user_ids: list[int], context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """send_email_batch on the bulk queue (fan-outs with priority low/bulk)."""
    from acmeq.mail.jobs import run_send_batch

    return run_send_batch(template, message_key, user_ids, context)


@job(queue="notifications")
def send_weekly_digest(
    week_ending: str | None = None, user_id: int | None = None
) -> dict[str, Any]:
    """Send each employee the week's donations, matched amounts and followed campaigns."""
    from acmeq.mail.digest import weekly_digest

    return weekly_digest(week_ending=week_ending, user_id=user_id)


@job(queue="notifications")
def send_reminders(days: int = 3, today: str | None = None) -> dict[str, Any]:
    """Remind employees who have not donated of campaigns ending within ``days`` days."""
    from acmeq.mail.bulk import reminders

    return reminders(days=days, today=today)
