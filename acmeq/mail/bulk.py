"""Fan-out mail: campaign updates to donors or employees, weekly digests, deadline reminders.

A fan-out job only decides *who* gets a message and enqueues ``send_email_batch`` jobs (a few
hundred users each) with the pipelined :meth:`acmeq.queues.Enqueuer.enqueue_many`; the batches
send. Every message has a key (``bulk:<campaign>:<run>``, ``reminder:<campaign>:<day>``,
``digest:<week end>:<user>``) and the per-recipient claims in SQL make each send happen once, so
a fan-out or a batch that is retried, killed or enqueued twice never mails anyone twice. Batch
job ids are deterministic and the fan-out remembers in Redis how many batches it enqueued, so a
retried fan-out resumes instead of enqueuing everything again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import uuid4

import redis
import sqlalchemy as sa

from acmeq import keys
from acmeq.config.settings import Settings, process_settings
from acmeq.errors import UsageError
from acmeq.mail import BULK_PRIORITIES, PRIORITIES

FANOUT_TTL_S = 7 * 86400
ENQUEUE_CHUNK = 20  # batches per enqueue_many call (one pipeline per queue chunk)


def _engine(settings: Settings) -> Any:
    from acmeq.storage.sql import engine_for

    return engine_for(settings)


def _connection(settings: Settings) -> redis.Redis:
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        return job.connection
    from acmeq.storage.redis_client import connect

    return connect(settings)


def batch_job(priority: str) -> str:
    if priority not in PRIORITIES:
        raise UsageError(f"unknown mail priority {priority!r}; expected high, normal, low, bulk")
    return "send_email_batch_bulk" if priority in BULK_PRIORITIES else "send_email_batch"


def _run_id(given: str | None) -> str:
    from rq import get_current_job

    job = get_current_job()
    return given or (job.id if job is not None else uuid4().hex)


def fan_out(
    settings: Settings,
    *,
    run: str,
    template: str,
    message_key: str,
    user_ids: Sequence[int],
    context: dict[str, Any],
    batch_size: int,
    priority: str,
    message: str,
    tracker: Any = None,
) -> dict[str, Any]:
    """Enqueue ``send_email_batch`` jobs for ``user_ids`` in batches, with progress; resumable.

    Progress counts users whose batch is enqueued; pass ``tracker`` to count into one that is
    already open (several fan-outs in one job).
    """
    from acmeq.progress import track

    if tracker is None:
        with track(total=len(user_ids), message=message) as progress:
            return fan_out(
                settings,
                run=run,
                template=template,
                message_key=message_key,
                user_ids=user_ids,
                context=context,
                batch_size=batch_size,
                priority=priority,
                message=message,
                tracker=progress,
            )
    return _enqueue_batches(
        settings, run, template, message_key, user_ids, context, batch_size, priority, tracker
    )


def _enqueue_batches(
    settings: Settings,
    run: str,
    template: str,
    message_key: str,
    user_ids: Sequence[int],
    context: dict[str, Any],
    batch_size: int,
    priority: str,
    progress: Any,
) -> dict[str, Any]:
    from acmeq.queues import Enqueuer, JobCall

    connection = _connection(settings)
    enqueuer = Enqueuer(settings, connection)
    name = batch_job(priority)
    done_key = keys.mail_fanout(run)
    start = int(connection.get(done_key) or 0)
    batches = [list(user_ids[i : i + batch_size]) for i in range(0, len(user_ids), batch_size)]
    progress.advance(sum(len(b) for b in batches[:start]))
    for first in range(start, len(batches), ENQUEUE_CHUNK):
        chunk = batches[first : first + ENQUEUE_CHUNK]
        enqueuer.enqueue_many(
            JobCall(
                name,
                kwargs={
                    "template": template,
                    "message_key": message_key,
                    "user_ids": batch,
                    "context": context,
                },
                job_id=f"mailbatch-{run}-{first + n}",
            )
            for n, batch in enumerate(chunk)
        )
        connection.set(done_key, first + len(chunk), ex=FANOUT_TTL_S)
        progress.advance(sum(len(b) for b in chunk))
    return {"recipients": len(user_ids), "batches": len(batches), "resumed_at": start}


# -- campaign updates ------------------------------------------------------------------------------


def campaign_row(settings: Settings, campaign_id: int) -> dict[str, Any]:
    from acmeq.storage.models import Campaign

    c = Campaign.__table__  # type: ignore[attr-defined]
    with _engine(settings).connect() as conn:
        row = conn.execute(sa.select(c).where(c.c.id == campaign_id)).first()
    if row is None:
        raise UsageError(f"no campaign with id {campaign_id}")
    return dict(row._mapping)


def audience_ids(
    settings: Settings, campaign: dict[str, Any], audience: str
) -> tuple[list[int], int]:
    """The user ids to mail (sorted) and how many were skipped as unsubscribed."""
    from acmeq.storage.models import Donation, DonationStatus, User, UserRole

    u = User.__table__  # type: ignore[attr-defined]
    d = Donation.__table__  # type: ignore[attr-defined]
    if audience == "donors":
        counting = [s.value for s in DonationStatus if s.counts_towards_total]
        base = sa.select(sa.distinct(d.c.donor_id).label("id")).select_from(
            d.join(u, u.c.id == d.c.donor_id)
        )
        base = base.where(d.c.campaign_id == campaign["id"], d.c.status.in_(counting))
    elif audience == "employees":
        base = sa.select(u.c.id.label("id")).where(u.c.role == UserRole.EMPLOYEE.value)
        if campaign.get("company_id") is not None:
            base = base.where(u.c.company_id == campaign["company_id"])
    else:
        raise UsageError(f"unknown audience {audience!r}; expected donors or employees")
    with _engine(settings).connect() as conn:
        everyone = conn.execute(sa.select(sa.func.count()).select_from(base.subquery()))
        total = int(everyone.scalar_one())
        subscribed = base.where(u.c.unsubscribed_at.is_(None))
        ids = sorted(int(i) for i in conn.execute(subscribed).scalars())
    return ids, total - len(ids)


def _campaign_context(campaign: dict[str, Any]) -> dict[str, Any]:
    end = campaign.get("end_date")
    return {
        "campaign_title": campaign["title"],
        "raised_minor": int(campaign["raised_minor"]),
        "goal_minor": int(campaign["goal_minor"]),
        "currency": campaign["currency"],
        "end_date": end.isoformat() if isinstance(end, date) else end,
    }


def bulk_notification(
    campaign_id: int,
    subject: str,
    body: str,
    audience: str = "donors",
    batch_size: int | None = None,
    priority: str = "normal",
    run_id: str | None = None,
) -> dict[str, Any]:
    """``send_bulk_notification``: a campaign update to its donors or to all employees."""
    settings = process_settings()
    campaign = campaign_row(settings, campaign_id)
    ids, unsubscribed = audience_ids(settings, campaign, audience)
    run = _run_id(run_id)
    context = {**_campaign_context(campaign), "headline": subject, "body": body}
    result = fan_out(
        settings,
        run=run,
        template="bulk_notification",
        message_key=f"bulk:{campaign_id}:{run}",
        user_ids=ids,
        context=context,
        batch_size=batch_size or settings.mail.bulk_batch_size,
        priority=priority,
        message=f"campaign update to {len(ids)} {audience}",
    )
    return {"campaign_id": campaign_id, "run": run, "unsubscribed_skipped": unsubscribed, **result}


# -- reminders -------------------------------------------------------------------------------------


def reminders(days: int = 3, today: str | None = None, priority: str = "normal") -> dict[str, Any]:
    """``send_reminders``: campaigns ending within ``days`` days, to employees not yet donating.

    The message key is ``reminder:<campaign>:<day>``: a second run on the same day (a retry, a
    manual `schedule run`, two schedules) reaches nobody twice.
    """
    from acmeq.storage.models import Campaign, CampaignStatus

    settings = process_settings()
    day = date.fromisoformat(today) if today else datetime.now(UTC).date()
    c = Campaign.__table__  # type: ignore[attr-defined]
    engine = _engine(settings)
    with engine.connect() as conn:
        campaigns = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(c).where(
                    c.c.status == CampaignStatus.ACTIVE.value,
                    c.c.end_date >= day,
                    c.c.end_date <= day + timedelta(days=days),
                )
            )
        ]
    from acmeq.progress import track

    summary: list[dict[str, Any]] = []
    with track(message=f"reminders for {len(campaigns)} campaigns") as progress:
        for campaign in campaigns:
            summary.append(_remind(settings, engine, campaign, day, priority, progress))
    return {"day": day.isoformat(), "campaigns": summary}


def _remind(
    settings: Settings,
    engine: Any,
    campaign: dict[str, Any],
    day: date,
    priority: str,
    progress: Any,
) -> dict[str, Any]:
    from acmeq.storage.models import Donation, User, UserRole

    u = User.__table__  # type: ignore[attr-defined]
    d = Donation.__table__  # type: ignore[attr-defined]
    donated = sa.select(d.c.donor_id).where(
        d.c.campaign_id == campaign["id"], d.c.donor_id.is_not(None)
    )
    stmt = sa.select(u.c.id).where(
        u.c.role == UserRole.EMPLOYEE.value,
        u.c.unsubscribed_at.is_(None),
        u.c.id.not_in(donated),
    )
    if campaign.get("company_id") is not None:
        stmt = stmt.where(u.c.company_id == campaign["company_id"])
    with engine.connect() as conn:
        ids = sorted(int(i) for i in conn.execute(stmt).scalars())
    context = {**_campaign_context(campaign), "days_left": (campaign["end_date"] - day).days}
    progress.set_total(progress.total + len(ids))
    result = fan_out(
        settings,
        run=f"reminder-{campaign['id']}-{day.isoformat()}",
        template="reminder",
        message_key=f"reminder:{campaign['id']}:{day.isoformat()}",
        user_ids=ids,
        context=context,
        batch_size=settings.mail.bulk_batch_size,
        priority=priority,
        message=f"reminders for campaign {campaign['id']}",
        tracker=progress,
    )
    return {"campaign_id": campaign["id"], **result}
