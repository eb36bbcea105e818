"""Bulk mail: 10,000 recipients through acmeq (2 notification worker processes) vs a bare loop.

Both sides send the same personal campaign update (text + HTML, UTF-8) to a local aiosmtpd
server that runs in a process of its own and accepts everything:

- **peer**: one Python loop that builds each message with ``email.mime`` and calls
  ``smtplib.SMTP.send_message`` over one connection: the floor for "sending mail from Python",
  with no queue, no templates per locale, no idempotency;
- **acmeq**: ``send_bulk_notification`` for a campaign with 10,000 employees (SQLite database,
  private redis-server) is run by a bulk worker (the fan-out: 50 ``send_email_batch`` jobs of 200,
  pipelined), then two notification worker processes (``python -m acmeq.worker``, inline, burst)
  send: each message rendered from its jinja2 template in the user's locale (en/nl/fr/de, Babel
  money and dates), claimed in SQL before the send and marked sent after it.

Prints messages/s for both and the ratio.

    .venv/bin/python bench/bulk_mail.py [--recipients 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import redis
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis import private_redis

SERVER = """
import asyncio, sys
from aiosmtpd.controller import Controller
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("aiosmtpd did not start")
    return proc


def bare_loop(port: int, n: int) -> float:
    """Messages/s of a plain smtplib loop over one connection."""
    text = "Hello {name},\n\nThanks to you we are halfway: € 5.000,00 of € 10.000,00.\n" * 3
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for i in range(n):
            msg = MIMEMultipart("alternative")
            msg["Subject"] = "Clean Water: halfway there"
            msg["From"] = "ACME Giving <noreply@acme.example>"
            msg["To"] = f"e{i:05d}@acme.example"
            body = text.format(name=f"Employee {i}")
            msg.attach(MIMEText(body, "plain", "utf-8"))
            msg.attach(MIMEText(f"<p>{body}</p>", "html", "utf-8"))
            smtp.send_message(msg)
    return n / (time.perf_counter() - start)


def seed(url: str, n: int) -> int:
    from acmeq.storage import sql
    from acmeq.storage.models import Campaign, Company, User

    engine = sql.make_engine(url)
    sql.upgrade(engine)
    now = datetime.now(UTC)
    locales = ["en", "nl", "fr", "de"]
    with engine.begin() as conn:
        company = conn.execute(
            Company.__table__.insert().values(name="Acme", currency="EUR", created_at=now)  # type: ignore[attr-defined]
        ).inserted_primary_key[0]
        users = User.__table__  # type: ignore[attr-defined]
        conn.execute(
            users.insert(),
            [
                {
                    "email": f"e{i:05d}@acme.example",
                    "name": f"Employee {i}",
                    "role": "organizer" if i == 0 else "employee",
                    "company_id": company,
                    "locale": locales[i % 4],
                    "created_at": now,
                }
                for i in range(n + 1)
            ],
        )
        organizer = conn.execute(sa.select(sa.func.min(users.c.id))).scalar_one()
        campaign = conn.execute(
            Campaign.__table__.insert().values(  # type: ignore[attr-defined]
                title="Clean Water",
                goal_minor=1_000_000,
                raised_minor=500_000,
                currency="EUR",
                status="active",
                end_date=date.today() + timedelta(days=10),
                organizer_id=organizer,
                company_id=company,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
    engine.dispose()
    return int(campaign)


def run_worker(queue: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    from acmeq.worker.options import WorkerOptions

    opts = WorkerOptions(queue=queue, burst=True, name=f"bench-{queue}")
    return subprocess.Popen(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def acmeq_side(port: int, n: int, workers: int, redis_url: str) -> dict[str, float]:
    from acmeq.config.settings import Settings
    from acmeq.queues import Enqueuer

    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/acmeq.db"
        campaign = seed(db_url, n)
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            DATABASE_URL=db_url,
            ACMEQ_STATE_DIR=tmp,
            ACMEQ_MAIL_SMTP_HOST="127.0.0.1",
            ACMEQ_MAIL_SMTP_PORT=str(port),
            ACMEQ_SCHEDULER_ENABLED="false",
        )
        os.environ.update({k: env[k] for k in ("REDIS_URL", "DATABASE_URL", "ACMEQ_STATE_DIR")})
        enqueuer = Enqueuer(Settings.load(), redis.Redis.from_url(redis_url))
        start = time.perf_counter()
        enqueuer.enqueue(
            "send_bulk_notification",
            campaign,
            "Halfway there",
            "Thanks to you we are halfway.",
            audience="employees",
            batch_size=200,
        )
        run_worker("bulk", env).wait(timeout=600)
        fanned = time.perf_counter()
        procs = [run_worker("notifications", env) for _ in range(workers)]
        for proc in procs:
            proc.wait(timeout=1800)
        done = time.perf_counter()
        engine = sa.create_engine(db_url)
        with engine.connect() as conn:
            sent = conn.execute(
                sa.text("SELECT count(*) FROM mail_sent WHERE state = 'sent'")
            ).scalar_one()
        engine.dispose()
    if sent != n:
        raise SystemExit(f"acmeq sent {sent} of {n}")
    return {
        "fanout_s": fanned - start,
        "send_s": done - fanned,
        "total_s": done - start,
        "msgs_per_s": n / (done - fanned),
        "end_to_end_per_s": n / (done - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    server = start_server(port)
    try:
        with private_redis() as redis_url:
            bare = bare_loop(port, args.recipients)
            print(f"peer  bare smtplib loop, 1 connection: {bare:8.1f} messages/s")
            ours = acmeq_side(port, args.recipients, args.workers, redis_url)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    print(
        f"acmeq {args.workers} notification workers:        {ours['msgs_per_s']:8.1f} messages/s "
        f"(send phase {ours['send_s']:.1f} s; fan-out {ours['fanout_s']:.1f} s; "
        f"end to end {ours['end_to_end_per_s']:.1f}/s)"
    )
    print(f"ratio acmeq / bare loop: {ours['msgs_per_s'] / bare:.2f}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
