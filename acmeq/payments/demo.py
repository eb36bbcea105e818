"""The demo's payment step: a signed Stripe event posted to a running receiver completes a
donation (campaign total and corporate match updated, confirmation e-mail in the outbox); a
duplicate delivery and a forged signature are shown being handled."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from acmeq.config.settings import Settings
from acmeq.payments.amounts import fmt
from acmeq.payments.sqlutil import CAMPAIGNS, COMPANIES, DONATIONS, USERS

DEMO_SECRET = "whsec_acmeq_demo"


def payment_demo(
    cfg: Settings, out: Any, title: str, environ: dict[str, str], cli: Callable[..., str]
) -> int:
    """Run the step; return 1 if the donation did not complete, else 0."""
    import urllib.error
    import urllib.request

    from acmeq.storage.sql import engine_for
    from acmeq.web import stripe

    out.step(title)
    engine = engine_for(cfg)
    picked = _pick(engine)
    if picked is None:
        out.line("no campaign with a matching company in its currency: nothing to show")
        return 0
    donor, company, campaign, cur = picked
    donation = _pending_donation(engine, campaign, donor, cur)
    before = _campaign(engine, campaign)
    out.line(
        f"donation {donation}: {fmt(25_00, cur)} by an employee of {company} to campaign "
        f"{campaign} (raised {fmt(before[0], cur)}, matched {fmt(before[1], cur)}), pending"
    )
    from acmeq.web.progress.demo import DEMO_SECRET as PROGRESS_SECRET
    from acmeq.web.progress.demo import progress_page

    env = dict(environ, STRIPE_WEBHOOK_SECRET=DEMO_SECRET, ACMEQ_MAIL_TRANSPORT="outbox")
    env["ACMEQ_PROGRESS_SECRET"] = PROGRESS_SECRET  # the server also streams job progress
    outbox = _outbox(cfg)
    already = set(outbox.glob("*.eml")) if outbox is not None and outbox.is_dir() else set()
    port = _free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "acmeq", "webhook", "serve", "--with-progress", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url)
        out.line(f"acmeq webhook serve is listening on {url} (GET /healthz: ok)")
        progress_page(cfg, out, url)
        body = _event(donation, campaign, cur)
        headers = {"Stripe-Signature": stripe.header_for(body, DEMO_SECRET)}
        forged = {"Stripe-Signature": stripe.header_for(body, "whsec_not_the_secret")}
        for label, hdrs in (
            ("signed event", headers),
            ("the same event again", headers),
            ("forged signature", forged),
        ):
            started = time.perf_counter()
            request = urllib.request.Request(url + "/webhooks/stripe", body, hdrs, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    status, text = reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                status, text = exc.code, exc.read().decode()
            ms = (time.perf_counter() - started) * 1000
            out.line(f"POST /webhooks/stripe ({label}): {status} {text} in {ms:.0f} ms")
        for queue in ("payments", "notifications"):
            _burst_worker(queue, env)
    finally:
        receiver.terminate()
        try:
            receiver.wait(timeout=20)
        except subprocess.TimeoutExpired:
            receiver.kill()
    after = _campaign(engine, campaign)
    with engine.connect() as conn:
        d = conn.execute(sa.select(DONATIONS).where(DONATIONS.c.id == donation)).one()
    out.line(
        f"donation {donation} is {d.status} (transaction {d.gateway_transaction_id}), matched "
        f"{fmt(d.matched_minor, cur)} by {company}; campaign {campaign} raised "
        f"{fmt(before[0], cur)} -> {fmt(after[0], cur)}, matched "
        f"{fmt(before[1], cur)} -> {fmt(after[1], cur)}"
    )
    out.line("the receiver's record of it (acmeq webhook events --limit 1):")
    out.line(cli(cfg, "webhook", "events", "--limit", "1"))
    _show_outbox(out, outbox, already)
    return 0 if d.status == "completed" else 1


def _outbox(cfg: Settings) -> Path | None:
    mail = getattr(cfg, "mail", None)  # the mail settings (issue #11), if present
    return Path(mail.outbox_path(cfg.state_dir)) if mail is not None else None


def _show_outbox(out: Any, outbox: Path | None, already: set[Path]) -> None:
    from email import message_from_bytes
    from email.header import decode_header, make_header

    if outbox is None:
        out.line("mail is not configured: the confirmation jobs were enqueued on notifications")
        return
    new = sorted(set(outbox.glob("*.eml")) - already) if outbox.is_dir() else []
    for path in new:
        msg = message_from_bytes(path.read_bytes())
        subject = str(make_header(decode_header(msg.get("Subject", ""))))
        out.line(f"outbox: {path.name}: to {msg.get('To')}: {subject}")
    if not new:
        out.line(f"no new message in the outbox {outbox}")


def _pick(engine: Any) -> tuple[int, str, int, str] | None:
    """A campaign taking donations (active if any) and an employee of a company that matches
    in its currency: (donor, company, campaign, currency)."""
    with engine.connect() as conn:
        campaigns = conn.execute(
            sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.currency)
            .where(CAMPAIGNS.c.status != "draft")
            .order_by((CAMPAIGNS.c.status != "active"), CAMPAIGNS.c.id)
        ).all()
        for campaign, currency in campaigns:
            donor = conn.execute(
                sa.select(USERS.c.id, COMPANIES.c.name)
                .select_from(USERS.join(COMPANIES, USERS.c.company_id == COMPANIES.c.id))
                .where(COMPANIES.c.currency == currency, COMPANIES.c.match_ratio_bp > 0)
                .order_by(USERS.c.id.desc())
                .limit(1)
            ).first()
            if donor is not None:
                return int(donor.id), str(donor.name), int(campaign), str(currency)
    return None


def _pending_donation(engine: Any, campaign: int, donor: int, currency: str) -> int:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        return int(
            conn.execute(
                sa.insert(DONATIONS).returning(DONATIONS.c.id),
                {
                    "campaign_id": campaign,
                    "donor_id": donor,
                    "amount_minor": 25_00,
                    "currency": currency,
                    "status": "pending",
                    "gateway": "stripe",
                    "anonymous": False,
                    "donor_locale": "en",
                    "matched_minor": 0,
                    "refunded_minor": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
        )


def _campaign(engine: Any, campaign: int) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(CAMPAIGNS.c.raised_minor, CAMPAIGNS.c.matched_minor).where(
                CAMPAIGNS.c.id == campaign
            )
        ).one()
    return int(row.raised_minor), int(row.matched_minor)


def _event(donation: int, campaign: int, currency: str) -> bytes:
    event = {
        "id": f"evt_demo_{donation}_{int(time.time())}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": f"pi_demo_{donation}",
                "object": "payment_intent",
                "amount": 25_00,
                "amount_received": 25_00,
                "currency": currency.lower(),
                "metadata": {"donation_id": str(donation), "campaign_id": str(campaign)},
            }
        },
    }
    return json.dumps(event).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the webhook receiver at {url} did not become healthy")
        time.sleep(0.2)


def _burst_worker(queue: str, env: dict[str, str]) -> None:
    from acmeq.worker.options import WorkerOptions

    opts = WorkerOptions(queue=queue, burst=True, name="demo-pay")
    subprocess.run(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env={**os.environ, **env},
        timeout=600,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
