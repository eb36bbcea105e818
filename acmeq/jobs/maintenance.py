"""Maintenance jobs (queue ``maintenance``, priority 1)."""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from acmeq.allowlist import job

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


@job(queue="maintenance")
def ping(echo: str = "pong") -> dict[str, Any]:
    """Report which host and process ran the job: a health check of the worker pools."""
    return {
        "echo": echo,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "monotonic": time.monotonic(),
    }


@job(queue="maintenance")
def recalculate_campaign_totals(campaign_id: int | None = None) -> dict[str, int]:
    """Recompute campaigns' raised, matched and donation totals from their donations."""
    import sqlalchemy as sa

    from acmeq.config.settings import process_settings
    from acmeq.progress import track
    from acmeq.storage.models import Campaign
    from acmeq.storage.sql import engine_for

    engine = engine_for(process_settings())
    if campaign_id is not None:
        return recalculate_totals(engine, [campaign_id])
    campaigns = Campaign.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        ids = [
            int(i)
            for i in conn.execute(sa.select(campaigns.c.id).order_by(campaigns.c.id)).scalars()
        ]
    updated = 0
    # In batches, with progress: each batch is one statement, so every campaign's totals are
    # still read and written atomically.
    with track(total=len(ids), message="recalculating campaign totals") as progress:
        for batch in progress.batches(ids, 10):
            updated += recalculate_totals(engine, batch)["updated"]
    return {"campaigns": len(ids), "updated": updated}


def recalculate_totals(engine: Engine, campaign_ids: list[int] | None = None) -> dict[str, int]:
    """Set every campaign's totals to the sums over its donations that count.

    One UPDATE with correlated sub-queries, so the totals and the donations are read in the same
    statement and a donation completed meanwhile cannot be half counted. The rule is the one
    ``Campaign`` documents: completed and partially refunded donations count, net of refunds.
    """
    import sqlalchemy as sa

    from acmeq.storage.models import Campaign, Donation, DonationStatus

    campaigns = Campaign.__table__  # type: ignore[attr-defined]
    donations = Donation.__table__  # type: ignore[attr-defined]
    counting = [s.value for s in DonationStatus if s.counts_towards_total]
    mine = sa.and_(donations.c.campaign_id == campaigns.c.id, donations.c.status.in_(counting))

    def total(expr: Any) -> Any:
        return sa.select(sa.func.coalesce(sa.func.sum(expr), 0)).where(mine).scalar_subquery()

    before = sa.select(sa.func.count()).select_from(campaigns)
    stmt = campaigns.update().values(
        raised_minor=total(donations.c.amount_minor - donations.c.refunded_minor),
        matched_minor=total(donations.c.matched_minor),
        donation_count=sa.select(sa.func.count()).where(mine).scalar_subquery(),
        updated_at=datetime.now(UTC),
    )
    if campaign_ids is not None:
        stmt = stmt.where(campaigns.c.id.in_(campaign_ids))
        before = before.where(campaigns.c.id.in_(campaign_ids))
    with engine.begin() as conn:
        changed = conn.execute(stmt).rowcount
        count = conn.execute(before).scalar_one()
    return {"campaigns": int(count), "updated": int(changed)}


def top_campaigns(engine: Engine, limit: int = 5) -> list[dict[str, Any]]:
    """The campaigns that raised most, for the demo and reports."""
    import sqlalchemy as sa

    from acmeq.storage.models import Campaign

    campaigns = Campaign.__table__  # type: ignore[attr-defined]
    stmt = (
        sa.select(
            campaigns.c.title,
            campaigns.c.currency,
            campaigns.c.raised_minor,
            campaigns.c.matched_minor,
            campaigns.c.donation_count,
        )
        .order_by(campaigns.c.raised_minor.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


@job(queue="maintenance")
def cleanup_expired_data(
    categories: list[str] | None = None,
    older_than: str | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Delete data past its retention (seed: CleanupExpiredDataJob); returns the report."""
    from acmeq.config.settings import process_settings
    from acmeq.maintenance.cleanup import run_cleanup

    report = run_cleanup(
        process_settings(),
        only=categories,
        older_than=older_than,
        dry_run=dry_run,
        batch_size=batch_size,
    )
    return report.as_dict()


@job(queue="maintenance")
def backup_database(redis: bool = False, prune: bool = True) -> dict[str, Any]:
    """Back up the database (and Redis with ``redis=True``), then apply backup retention."""
    from acmeq.config.settings import process_settings
    from acmeq.maintenance.backup import create_backup

    return create_backup(process_settings(), redis_data=redis, prune=prune).as_dict()


@job(queue="maintenance")
def metrics_snapshot(now: float | None = None) -> dict[str, int]:
    """Fold the finished metric minutes into the cumulative counters that ``/metrics`` serves.

    A Prometheus scrape folds too, but counting starts at the first fold and a minute bucket
    expires after the minute retention (a day by default): run by the ``metrics_snapshot``
    schedule (every 5 minutes), this keeps the cumulative counters complete when nothing
    scrapes. Returns the runs counted so far per queue. ``now`` is for tests (Redis' clock
    otherwise).
    """
    from rq import get_current_job

    from acmeq.config.settings import process_settings
    from acmeq.observability.prometheus import cumulative
    from acmeq.storage.redis_client import connect

    settings = process_settings()
    current = get_current_job()
    connection = current.connection if current is not None else connect(settings)
    runs: dict[str, int] = {}
    for name, value in cumulative(settings, connection, now).items():
        queue, _, rest = name.partition("|")
        if rest.startswith("rt|"):  # the runtime histogram counts every finished run once
            runs[queue] = runs.get(queue, 0) + int(value)
    return runs
