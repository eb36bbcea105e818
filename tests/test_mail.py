"""Mail: real SMTP (aiosmtpd on loopback), the outbox, templates per locale, exactly-once sends.

The SMTP server runs in this process on a free loopback port and records every message it
accepts (envelope and content). Jobs run the way production runs them: enqueued on Redis and
executed by a real master with real worker processes, which read the same acmeq.toml and
DATABASE_URL as the test.
"""

from __future__ import annotations

import email
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from master_support import MasterStarter
from sqlalchemy.engine import Engine

import acmeq.config.settings as settings_module
from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.mail import enqueue_email, store
from acmeq.mail.jobs import run_send_email
from acmeq.mail.notifications import (
    confirmation_number,
    organizer_notification,
    payment_confirmation,
    valid_confirmation_number,
)
from acmeq.mail.render import money
from acmeq.queues import Enqueuer
from acmeq.storage.models import Campaign, Company, Donation, FailedEmail, User
from acmeq.worker.options import WorkerOptions

from conftest import free_port, run_cli, wait_until

NBSP = "\u00a0"

CONFIG = """
[scheduler]
enabled = false

[queues.notifications]
backoff = [2, 2]          # 3 tries, 2 s apart (the seed's 15/30 s would make a slow test)

[profiles.mail.supervisors.notifications]
queues = ["notifications"]
balance = "off"
min_processes = 2
max_processes = 2

[profiles.mail.supervisors.bulk]
queues = ["bulk"]
balance = "off"
min_processes = 1
max_processes = 1
"""


# -- an SMTP server on loopback --------------------------------------------------------------------


@dataclass
class Received:
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> Message:
        return email.message_from_bytes(self.content, policy=default_policy)


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it accepts, or refuses every recipient."""

    refuse: bool = False
    messages: list[Received] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # envelope recipient -> messages
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse:
            with self.lock:
                self.refusals.append(time.monotonic())
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Parsed only when a test looks at it: a 10,000-message run must not wait on the server.
        with self.lock:
            self.messages.append(Received(list(envelope.rcpt_tos), envelope.content))
            self.counts.update(envelope.rcpt_tos)
        return "250 OK"

    def recipients(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def total(self) -> int:
        with self.lock:
            return len(self.messages)


@dataclass
class Smtp:
    port: int
    handler: Recorder


def _serve(handler: Recorder) -> Iterator[Smtp]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(port, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    yield from _serve(Recorder())


@pytest.fixture
def refusing_smtp() -> Iterator[Smtp]:
    yield from _serve(Recorder(refuse=True))


# -- settings, database, data ----------------------------------------------------------------------


@pytest.fixture
def mail_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: Engine, database_url: str
) -> Path:
    """acmeq.toml in the working directory, the test database as DATABASE_URL."""
    (tmp_path / "acmeq.toml").write_text(CONFIG)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setattr(settings_module, "_process_settings", None)
    return tmp_path / "acmeq.toml"


def use_smtp(monkeypatch: pytest.MonkeyPatch, server: Smtp) -> None:
    monkeypatch.setenv("ACMEQ_MAIL_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("ACMEQ_MAIL_SMTP_PORT", str(server.port))
    monkeypatch.setattr(settings_module, "_process_settings", None)


def insert(engine: Engine, model: Any, rows: list[dict[str, Any]]) -> list[int]:
    table = model.__table__
    now = datetime.now(UTC)
    for row in rows:
        for col in ("created_at", "updated_at"):
            if col in table.c:
                row.setdefault(col, now)
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
        ids = conn.execute(sa.select(table.c.id).order_by(table.c.id.desc()).limit(len(rows)))
        return sorted(int(i) for i in ids.scalars())


def seed(engine: Engine, employees: int = 3, anonymous: bool = False) -> dict[str, Any]:
    """A company, an organizer, employees (nl, de, fr ...) and one campaign with a donation."""
    [company] = insert(engine, Company, [{"name": "Acme", "currency": "EUR"}])
    [organizer] = insert(
        engine,
        User,
        [
            {
                "email": "olga@acme.example",
                "name": "Olga Organizer",
                "role": "organizer",
                "company_id": company,
                "locale": "en",
            }
        ],
    )
    locales = ["nl", "de", "fr", "en"]
    staff = insert(
        engine,
        User,
        [
            {
                "email": f"e{i:05d}@acme.example",
                "name": f"Employee {i}",
                "role": "employee",
                "company_id": company,
                "locale": locales[i % 4],
            }
            for i in range(employees)
        ],
    )
    [campaign] = insert(
        engine,
        Campaign,
        [
            {
                "title": "Clean Water",
                "goal_minor": 1_000_000,
                "currency": "EUR",
                "raised_minor": 123_456,
                "donation_count": 1,
                "status": "active",
                "end_date": date.today() + timedelta(days=2),
                "organizer_id": organizer,
                "company_id": company,
            }
        ],
    )
    [donation] = insert(
        engine,
        Donation,
        [
            {
                "campaign_id": campaign,
                "donor_id": staff[0],
                "amount_minor": 123_456,
                "currency": "EUR",
                "status": "completed",
                "gateway": "stripe",
                "anonymous": anonymous,
                "donor_locale": "nl",
                "matched_minor": 50_000,
                "completed_at": datetime.now(UTC),
            }
        ],
    )
    return {"company": company, "campaign": campaign, "donation": donation, "staff": staff}


def text_of(msg: Message) -> str:
    part = msg.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return str(part.get_content())


# -- 1. one message: attachments, cc/bcc, locale ---------------------------------------------------


def test_money_is_written_the_way_each_locale_writes_it() -> None:
    assert money(123456, "EUR", "nl") == f"€{NBSP}1.234,56"
    assert money(123456, "EUR", "de") == f"1.234,56{NBSP}€"
    assert money(123456, "EUR", "en") == "€1,234.56"
    assert money(123456, "EUR", "fr").replace("\u202f", " ").replace(NBSP, " ") == "1 234,56 €"


def test_a_message_with_an_attachment_cc_and_bcc_arrives_once_in_dutch(
    mail_env: Path, smtp: Smtp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the SMTP server as the mail transport and an export file to attach
    use_smtp(monkeypatch, smtp)
    export = tmp_path / "state" / "exports" / "donations.csv"  # where export files are kept
    export.parent.mkdir(parents=True)
    export.write_text("id,amount\n1,1234.56\n")
    context = {
        "donor_name": "Jan",
        "campaign_title": "Schoon water",
        "amount_minor": 123456,
        "currency": "EUR",
        "matched_minor": 0,
        "company_name": "Acme",
        "anonymous": False,
        "confirmation_number": "ACME-2026-0000001-81",
        "donated_at": "2026-12-01T10:00:00+00:00",
    }
    kwargs: dict[str, Any] = {
        "to": ["jan@acme.example"],
        "cc": ["finance@acme.example"],
        "bcc": ["archive@acme.example"],
        "reply_to": "giving@acme.example",
        "template": "payment_confirmation",
        "context": context,
        "locale": "nl",
        "attachments": [str(export)],
        "message_key": "test:attachment",
    }

    # When the send_email job body runs, and runs again (a retry)
    first = run_send_email(**kwargs)
    second = run_send_email(**kwargs)

    # Then the server got one message for the three recipients, and nothing the second time
    assert (first["sent"], second["sent"], second["already_sent"]) == (3, 0, 3)
    [got] = smtp.handler.messages
    assert sorted(got.rcpt_tos) == [
        "archive@acme.example",
        "finance@acme.example",
        "jan@acme.example",
    ]
    msg = got.message
    assert msg["To"] == "jan@acme.example" and msg["Cc"] == "finance@acme.example"
    assert msg["Bcc"] is None  # the blind copy is in the envelope only
    assert msg["Reply-To"] == "giving@acme.example"
    # and it is Dutch, with Dutch money
    assert msg["Subject"].startswith("Bedankt voor uw donatie aan Schoon water")
    body = text_of(msg)
    assert f"€{NBSP}1.234,56" in body and "1 december 2026" in body
    assert msg.get_body(preferencelist=("html",)) is not None  # type: ignore[attr-defined]
    # and the file is attached under its name
    [attachment] = list(msg.iter_attachments())  # type: ignore[attr-defined]
    assert attachment.get_filename() == "donations.csv"
    assert attachment.get_content() == "id,amount\n1,1234.56\n"


def test_the_outbox_is_the_default_and_mail_test_writes_to_it(
    mail_env: Path, tmp_path: Path
) -> None:
    result = run_cli("mail", "test", "ops@acme.example", "--locale", "de")
    assert result.returncode == 0, result.stderr
    assert "written to the outbox" in result.stdout
    [eml] = list((tmp_path / "state" / "outbox").glob("*.eml"))
    msg = email.message_from_bytes(eml.read_bytes(), policy=default_policy)
    assert msg["Subject"] == "acmeq-Testnachricht"
    assert msg["X-Acmeq-Envelope-To"] == "ops@acme.example"


def test_mail_test_over_an_unreachable_server_fails_in_one_line(mail_env: Path) -> None:
    port = free_port()
    result = run_cli(
        "mail",
        "test",
        "ops@acme.example",
        env={"ACMEQ_MAIL_SMTP_HOST": "127.0.0.1", "ACMEQ_MAIL_SMTP_PORT": str(port)},
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"acmeq: error: smtp 127.0.0.1:{port}: Connection refused"


def test_a_file_outside_the_allowed_directories_is_never_attached(
    mail_env: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    with pytest.raises(UsageError, match="outside the allowed directories"):
        run_send_email(to=["x@acme.example"], subject="s", text="t", attachments=[str(secret)])


def test_a_bad_address_is_a_usage_error(mail_env: Path) -> None:
    result = run_cli("mail", "test", "not-an-address")
    assert result.returncode == 2
    assert "invalid e-mail address 'not-an-address'" in result.stderr


# -- 2. donation mail -----------------------------------------------------------------------------


def test_a_confirmation_has_a_stable_checked_number_and_the_anonymous_donor_stays_unnamed(
    mail_env: Path, smtp: Smtp, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    # Given an anonymous donation by a Dutch employee
    use_smtp(monkeypatch, smtp)
    data = seed(engine, employees=1, anonymous=True)

    # When the confirmation and the organizer's copy are sent (the confirmation twice)
    first = payment_confirmation(data["donation"])
    again = payment_confirmation(data["donation"])
    organizer_notification(data["donation"])

    # Then the donor got one Dutch confirmation with a valid, stable confirmation number
    number = first["confirmation_number"]
    assert number == again["confirmation_number"] and valid_confirmation_number(number)
    assert not valid_confirmation_number(number[:-1] + str((int(number[-1]) + 1) % 10))
    donor, organizer = smtp.handler.messages
    assert donor.rcpt_tos == ["e00000@acme.example"]
    assert number in donor.message["Subject"] and f"€{NBSP}1.234,56" in text_of(donor.message)
    # and the organizer's copy names neither the donor nor their address
    assert organizer.rcpt_tos == ["olga@acme.example"]
    body = text_of(organizer.message) + str(organizer.message.get_body(("html",)))  # type: ignore[attr-defined]
    assert "An anonymous donor donated €1,234.56" in body
    assert "Employee 0" not in body and "e00000" not in body


def test_confirmation_numbers_are_unique_and_readable() -> None:
    when = datetime(2026, 5, 1, tzinfo=UTC)
    numbers = {confirmation_number(i, when) for i in range(1, 20_001)}
    assert len(numbers) == 20_000
    assert confirmation_number(123, when).startswith("ACME-2026-0000123-")


# -- 3. a refusing server: retries with the queue's backoff, then a failed-email record ----------


@pytest.mark.timeout(240)  # ~40 s alone; a master start under a loaded full suite takes long
def test_a_refused_mail_is_retried_with_backoff_then_recorded_and_can_be_resent(
    mail_env: Path,
    refusing_smtp: Smtp,
    smtp: Smtp,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    tmp_path: Path,
    engine: Engine,
) -> None:
    # Given a master with notification workers whose mail server refuses every recipient
    use_smtp(monkeypatch, refusing_smtp)
    starter = MasterStarter(tmp_path, redis_url)
    try:
        starter("mail", "mail-retry")
        # When a mail is enqueued
        job_id = enqueue_email("jan@acme.example", subject="Hello", text="Hi Jan")

        # Then after three tries, 2 s apart (queues.notifications.backoff), it is recorded
        def failed_rows() -> list[dict[str, Any]]:
            return store.list_failed(engine)

        [row] = wait_until("a failed-email record", failed_rows, timeout=60)
        assert row["attempts"] == 3 and row["status"] == "failed"
        assert row["to_address"] == "jan@acme.example" and row["job_id"] == job_id
        assert "550 5.1.1 mailbox unavailable" in row["error"]
        tries = refusing_smtp.handler.refusals
        assert len(tries) == 3
        # (RQ scores scheduled retries in whole seconds: a 2 s delay is 1-2 s)
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(tries)), tries
        client = redis.Redis.from_url(redis_url)
        assert client.hget(f"rq:job:{job_id}", "status") == b"failed"
    finally:
        starter.cleanup()

    # When the operator lists and resends it with a working server (and a worker running)
    listing = run_cli("mail", "failed", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [r["id"] for r in json.loads(listing.stdout)] == [row["id"]]
    use_smtp(monkeypatch, smtp)
    resend = run_cli("mail", "retry", str(row["id"]))
    assert resend.returncode == 0, resend.stderr
    burst = subprocess.run(
        [
            sys.executable,
            "-m",
            "acmeq.worker",
            WorkerOptions("notifications", burst=True).to_json(),
        ],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
        timeout=60,
        check=False,
    )
    # Then it arrives, and the record says it was resent
    assert burst.returncode == 0
    assert [m.rcpt_tos for m in smtp.handler.messages] == [["jan@acme.example"]]
    assert store.list_failed(engine) == []
    again = run_cli("mail", "retry", str(row["id"]))
    assert "already retried" in again.stdout


# -- 4. a 10,000-recipient fan-out, a worker killed midway ---------------------------------------


@pytest.mark.timeout(480)  # ~60 s on a quiet machine; the shared CI host is far from quiet
def test_a_bulk_mailing_to_10000_employees_survives_a_killed_worker_without_duplicates(
    mail_env: Path,
    smtp: Smtp,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    tmp_path: Path,
    engine: Engine,
) -> None:
    # Given 10,000 employees (and 3 more who unsubscribed) and a master with 2 notification
    # workers and a bulk worker, sending to the SMTP server
    use_smtp(monkeypatch, smtp)
    data = seed(engine, employees=10_000)
    gone = insert(
        engine,
        User,
        [
            {
                "email": f"gone{i}@acme.example",
                "name": "Gone",
                "role": "employee",
                "company_id": data["company"],
                "unsubscribed_at": datetime.now(UTC),
            }
            for i in range(3)
        ],
    )
    assert len(gone) == 3
    starter = MasterStarter(tmp_path, redis_url)
    try:
        master = starter("mail", "mail-bulk")
        enqueuer = Enqueuer(Settings.load(mail_env), redis.Redis.from_url(redis_url))

        # When a campaign update goes to every employee
        fanout = enqueuer.enqueue(
            "send_bulk_notification",
            data["campaign"],
            "Halfway there",
            "Thanks to you we are halfway.",
            audience="employees",
            batch_size=100,
        )
        # and a notification worker is killed with SIGKILL while mail is going out
        wait_until("2,000 sent", lambda: smtp.handler.total() >= 2000, 150, every=0.2)
        victim = _busy_notification_worker(master.workers())
        os.kill(victim.pid, signal.SIGKILL)

        # Then every subscribed employee gets the update exactly once (or, for a message the
        # killed worker was handing over, it is recorded as uncertain and not resent)
        everyone = {f"e{i:05d}@acme.example" for i in range(10_000)}

        def settled() -> bool:
            uncertain = _uncertain(engine)
            return set(smtp.handler.recipients()) | uncertain >= everyone

        wait_until("every employee mailed", settled, timeout=300, every=1.0)
        counts = smtp.handler.recipients()
        assert [r for r, n in counts.items() if n > 1] == []  # no duplicates
        assert set(counts) <= everyone  # nobody unsubscribed, nobody else
        assert len(_uncertain(engine)) <= 1  # the one a killed worker may have had in hand
        result = wait_until(
            "the fan-out's result", lambda: enqueuer.queue("bulk").fetch_job(fanout.id), 10
        ).return_value()
        assert result["unsubscribed_skipped"] == 3 and result["batches"] == 100
    finally:
        starter.cleanup()


def _busy_notification_worker(workers: list[psutil.Process]) -> psutil.Process:
    for proc in workers:
        if "notifications" in " ".join(proc.cmdline()):
            return proc
    raise AssertionError(f"no notification worker among {[w.pid for w in workers]}")


def _uncertain(engine: Engine) -> set[str]:
    table = FailedEmail.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.to_address).where(table.c.status == "uncertain"))
        return {r for r in rows.scalars()}


# -- 5. reminders and the weekly digest -----------------------------------------------------------


def _outbox(tmp_path: Path) -> list[Message]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=default_policy)
        for p in sorted((tmp_path / "state" / "outbox").glob("*.eml"))
    ]


def _burst(queue: str = "notifications") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "acmeq.worker", WorkerOptions(queue, burst=True).to_json()],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0


@pytest.mark.timeout(120)
def test_reminders_reach_employees_who_did_not_donate_once_per_campaign_and_day(
    mail_env: Path, redis_url: str, engine: Engine, tmp_path: Path
) -> None:
    # Given a campaign ending in two days, four employees of whom one donated and one unsubscribed
    data = seed(engine, employees=4)
    users = User.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            users.update()
            .where(users.c.id == data["staff"][3])
            .values(unsubscribed_at=datetime.now(UTC))
        )
    enqueuer = Enqueuer(Settings.load(mail_env), redis.Redis.from_url(redis_url))
    today = date.today().isoformat()

    # When the reminders run twice on the same day (a retry, a manual run)
    enqueuer.enqueue("send_reminders", days=3, today=today)
    enqueuer.enqueue("send_reminders", days=3, today=today)
    _burst()

    # Then the two who neither donated nor unsubscribed got one reminder each, in their language
    sent = _outbox(tmp_path)
    assert sorted(str(m["To"]) for m in sent) == ["e00001@acme.example", "e00002@acme.example"]
    by_to = {str(m["To"]): m for m in sent}
    assert by_to["e00001@acme.example"]["Subject"].startswith("Clean Water endet am")  # de
    assert "noch 2 Tag(e)" in text_of(by_to["e00001@acme.example"])
    assert by_to["e00002@acme.example"]["Subject"].startswith("Clean Water se termine le")  # fr


@pytest.mark.timeout(120)
def test_the_weekly_digest_lists_the_weeks_donations_matches_and_followed_campaigns(
    mail_env: Path, redis_url: str, engine: Engine, tmp_path: Path
) -> None:
    from acmeq.storage.models_mail import CampaignFollow

    # Given a Dutch employee who donated this week and follows the campaign, and two colleagues
    data = seed(engine, employees=3)
    with engine.begin() as conn:
        conn.execute(
            CampaignFollow.__table__.insert().values(  # type: ignore[attr-defined]
                user_id=data["staff"][0], campaign_id=data["campaign"], created_at=datetime.now(UTC)
            )
        )
    enqueuer = Enqueuer(Settings.load(mail_env), redis.Redis.from_url(redis_url))
    week_end = (date.today() + timedelta(days=6 - date.today().weekday())).isoformat()

    # When the weekly digest runs (fan-out, then one job per employee), twice
    enqueuer.enqueue("send_weekly_digest", week_ending=week_end)
    enqueuer.enqueue("send_weekly_digest", week_ending=week_end)
    _burst()

    # Then every employee got one digest, and the donor's lists the gift, the match and the follow
    sent = _outbox(tmp_path)
    assert sorted(str(m["To"]) for m in sent) == [f"e0000{i}@acme.example" for i in range(3)]
    donor = next(m for m in sent if str(m["To"]) == "e00000@acme.example")
    body = text_of(donor)
    assert f"- Clean Water: €{NBSP}1.234,56 (aangevuld: €{NBSP}500,00)" in body
    assert "Campagnes die u volgt:" in body
    other = next(m for m in sent if str(m["To"]) == "e00001@acme.example")
    assert "Sie haben diese Woche nicht gespendet." in text_of(other)


def test_priority_decides_the_queue(mail_env: Path, redis_url: str) -> None:
    # Given mail of each priority, through the helper and through the job name
    client = redis.Redis.from_url(redis_url)
    enqueue_email("a@acme.example", "high", text="x", priority="high")
    enqueue_email("b@acme.example", "bulk", text="x", priority="bulk")
    Enqueuer(Settings.load(mail_env), client).enqueue(
        "send_email", "c@acme.example", "by name", text="x", priority="low"
    )
    # Then high goes to notifications, bulk to bulk, and the job enqueued by name on
    # notifications moves itself to bulk when it runs
    assert client.llen("rq:queue:notifications") == 2 and client.llen("rq:queue:bulk") == 1
    _burst("notifications")
    assert client.llen("rq:queue:bulk") == 2
