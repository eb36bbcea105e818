"""The weekly digest: per employee, the week's donations with matched amounts and the campaigns
they follow.

``send_weekly_digest()`` without a user fans out one ``send_weekly_digest(user_id=...)`` job per
subscribed employee (deterministic job ids ``digest-<week end>-<user>``, enqueued pipelined); each
of those sends one message keyed ``digest:<week end>:<user>``, so a digest reaches an employee
once per week whatever is retried. The week is Monday to Sunday, the one before the run's day
(the default schedule runs Monday 08:00).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa

from acmeq.config.settings import Settings, process_settings

FANOUT_CHUNK = 500


def week_bounds(week_ending: str | None) -> tuple[date, date]:
    """(Monday, Sunday) of the week ending on ``week_ending``, default the last complete week."""
    if week_ending:
        end = date.fromisoformat(week_ending)
    else:
        today = datetime.now(UTC).date()
        end = today - timedelta(days=today.weekday() + 1)
    return end - timedelta(days=6), end


def _engine(settings: Settings) -> Any:
    from acmeq.storage.sql import engine_for

    return engine_for(settings)


def weekly_digest(week_ending: str | None = None, user_id: int | None = None) -> dict[str, Any]:
    settings = process_settings()
    start, end = week_bounds(week_ending)
    if user_id is None:
        return _fan_out(settings, end)
    return _send_one(settings, user_id, start, end)


def _fan_out(settings: Settings, end: date) -> dict[str, Any]:
    from acmeq.mail.bulk import _connection
    from acmeq.progress import track
    from acmeq.queues import Enqueuer, JobCall
    from acmeq.storage.models import User, UserRole

    u = User.__table__  # type: ignore[attr-defined]
    with _engine(settings).connect() as conn:
        ids = [
            int(i)
            for i in conn.execute(
                sa.select(u.c.id)
                .where(u.c.role == UserRole.EMPLOYEE.value, u.c.unsubscribed_at.is_(None))
                .order_by(u.c.id)
            ).scalars()
        ]
    enqueuer = Enqueuer(settings, _connection(settings))
    with track(total=len(ids), message=f"weekly digest for {end.isoformat()}") as progress:
        for batch in progress.batches(ids, FANOUT_CHUNK):
            enqueuer.enqueue_many(
                JobCall(
                    "send_weekly_digest",
                    kwargs={"week_ending": end.isoformat(), "user_id": uid},
                    job_id=f"digest-{end.isoformat()}-{uid}",
                )
                for uid in batch
            )
    return {"week_ending": end.isoformat(), "employees": len(ids)}


def digest_context(settings: Settings, user_id: int, start: date, end: date) -> dict[str, Any]:
    """The user's donations in [start, end] (completed ones), totals per currency, follows."""
    from acmeq.storage.models import Campaign, Donation, DonationStatus, User
    from acmeq.storage.models_mail import CampaignFollow

    u = User.__table__  # type: ignore[attr-defined]
    d = Donation.__table__  # type: ignore[attr-defined]
    c = Campaign.__table__  # type: ignore[attr-defined]
    f = CampaignFollow.__table__  # type: ignore[attr-defined]
    lo = datetime.combine(start, time.min, UTC)
    hi = datetime.combine(end + timedelta(days=1), time.min, UTC)
    counting = [s.value for s in DonationStatus if s.counts_towards_total]
    with _engine(settings).connect() as conn:
        user = conn.execute(
            sa.select(u.c.email, u.c.name, u.c.locale, u.c.unsubscribed_at).where(u.c.id == user_id)
        ).first()
        if user is None:
            return {}
        rows = conn.execute(
            sa.select(c.c.title, d.c.amount_minor, d.c.currency, d.c.matched_minor)
            .select_from(d.join(c, c.c.id == d.c.campaign_id))
            .where(
                d.c.donor_id == user_id,
                d.c.status.in_(counting),
                d.c.completed_at >= lo,
                d.c.completed_at < hi,
            )
            .order_by(d.c.completed_at)
        ).all()
        followed = conn.execute(
            sa.select(c.c.title, c.c.raised_minor, c.c.goal_minor, c.c.currency, c.c.end_date)
            .select_from(f.join(c, c.c.id == f.c.campaign_id))
            .where(f.c.user_id == user_id)
            .order_by(c.c.title)
        ).all()
    donations = [
        {
            "campaign_title": r.title,
            "amount_minor": int(r.amount_minor),
            "currency": r.currency,
            "matched_minor": int(r.matched_minor),
        }
        for r in rows
    ]
    totals: dict[str, dict[str, Any]] = {}
    for item in donations:
        t = totals.setdefault(
            item["currency"], {"currency": item["currency"], "amount_minor": 0, "matched_minor": 0}
        )
        t["amount_minor"] += item["amount_minor"]
        t["matched_minor"] += item["matched_minor"]
    return {
        "user": dict(user._mapping),
        "week_start": start.isoformat(),
        "week_end": end.isoformat(),
        "donations": donations,
        "totals": sorted(totals.values(), key=lambda t: t["currency"]),
        "followed": [
            {
                "title": r.title,
                "raised_minor": int(r.raised_minor),
                "goal_minor": int(r.goal_minor),
                "currency": r.currency,
                "end_date": r.end_date.isoformat() if r.end_date else None,
            }
            for r in followed
        ],
    }


def _send_one(settings: Settings, user_id: int, start: date, end: date) -> dict[str, Any]:
    from acmeq.mail.sending import compose, current_attempt, deliver
    from acmeq.mail.transport import transport_for

    data = digest_context(settings, user_id, start, end)
    if not data:
        return {"user_id": user_id, "skipped": "no such user"}
    user = data.pop("user")
    if user["unsubscribed_at"] is not None:
        return {"user_id": user_id, "skipped": "unsubscribed"}
    key = f"digest:{end.isoformat()}:{user_id}"
    out = compose(
        settings,
        to=[user["email"]],
        template="weekly_digest",
        context={"user_name": user["name"], **data},
        locale=user["locale"],
    )
    payload = {
        "to": out.to,
        "subject": out.subject,
        "text": out.text,
        "html": out.html,
        "locale": out.locale,
        "message_key": key,
    }
    from acmeq.mail.store import mail_engine

    result = deliver(
        mail_engine(settings), transport_for(settings), out, key, current_attempt(), payload
    )
    return {"user_id": user_id, "message_key": key, "sent": len(result["sent"])}
