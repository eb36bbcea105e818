"""The demo's mail step: a payment confirmation and a campaign update land in the outbox, and
`acmeq schedule list` shows the periodic jobs with their next runs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from acmeq.config.settings import Settings


def mail_demo(
    cfg: Settings,
    out: Any,
    title: str,
    environ: dict[str, str],
    cli: Callable[..., str],
) -> int:
    """Run the step; return how many of its jobs did not finish.

    ``environ`` is the demo's environment for child processes (its Redis and database) and
    ``cli`` runs an acmeq command in it (passed in: this module does not import acmeq.demo).
    """
    from acmeq.queues import Enqueuer
    from acmeq.storage.redis_client import connect_checked
    from acmeq.storage.sql import engine_for

    out.step(title)
    outbox = cfg.mail.outbox_path(cfg.state_dir)
    before = set(outbox.glob("*.eml")) if outbox.is_dir() else set()
    donation, campaign, donors = _pick(engine_for(cfg))
    if donation is None or campaign is None:
        out.line("no completed donation in the demo data: nothing to confirm")
        return 0
    enqueuer = Enqueuer(cfg, connect_checked(cfg))
    jobs = [
        enqueuer.enqueue("send_payment_confirmation", donation),
        enqueuer.enqueue("send_organizer_notification", donation),
        enqueuer.enqueue(
            "send_bulk_notification",
            campaign,
            "Halfway to our goal",
            "Thank you: thanks to you this campaign is halfway to its goal.",
            audience="donors",
            batch_size=50,
        ),
    ]
    env = dict(environ, ACMEQ_MAIL_TRANSPORT="outbox")
    # The fan-out runs on bulk and puts its batches on notifications: drain bulk first.
    for queue in ("bulk", "notifications"):
        _burst_worker(queue, env)
    written = sorted(set(outbox.glob("*.eml")) - before)
    out.line(
        f"donation {donation}: confirmation and organizer copy; campaign {campaign}: an update "
        f"to its {donors} donors (fan-out in batches of 50)"
    )
    out.line(f"{len(written)} messages written to the outbox {outbox}")
    for path in written[:2]:
        out.line(f"  {path.name}: {_subject(path)}")
    out.line("the periodic jobs (acmeq schedule list):")
    out.line(cli(cfg, "schedule", "list"))
    statuses = [job.get_status(refresh=True) for job in jobs]
    return sum(1 for s in statuses if s != "finished")


def _pick(engine: Any) -> tuple[int | None, int | None, int]:
    """A completed donation with a donor, and the campaign with the fewest donors."""
    from acmeq.storage.models import Donation

    d = Donation.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        donation = conn.execute(
            sa.select(d.c.id)
            .where(d.c.status == "completed", d.c.donor_id.is_not(None))
            .order_by(d.c.id)
            .limit(1)
        ).scalar()
        donors = sa.func.count(sa.distinct(d.c.donor_id))
        row = conn.execute(
            sa.select(d.c.campaign_id, donors.label("n"))
            .where(d.c.status == "completed", d.c.donor_id.is_not(None))
            .group_by(d.c.campaign_id)
            .order_by(donors, d.c.campaign_id)
            .limit(1)
        ).first()
    if row is None:
        return donation, None, 0
    return donation, int(row.campaign_id), int(row.n)


def _burst_worker(queue: str, env: dict[str, str]) -> None:
    from acmeq.worker.options import WorkerOptions

    opts = WorkerOptions(queue=queue, burst=True, name="demo-mail")
    subprocess.run(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=env,
        timeout=600,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _subject(path: Path) -> str:
    msg = message_from_bytes(path.read_bytes())
    return " ".join(str(make_header(decode_header(msg.get("Subject", "")))).split())
