"""Alerts: rules measured on a real Redis, notices to a real SMTP server and a real HTTP webhook.

The SMTP server is aiosmtpd on loopback, the webhook a stdlib HTTP server on loopback; both record
what they receive. Time is moved by passing ``now`` to
:func:`acmeq.observability.alerts.engine.evaluate` (a job
enqueued a moment ago has "waited 100 s" when evaluated at ``time.time() + 100``), except in the
end-to-end tests, where real masters and workers run and evaluate by themselves.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from aiosmtpd.controller import Controller

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.constants import WorkerExit
from acmeq.errors import ConfigError
from acmeq.master.control import set_paused
from acmeq.observability.alerts import engine as alerts
from acmeq.observability.alerts.channels import mask_webhook
from acmeq.observability.alerts.notice import NoticeKind
from acmeq.observability.alerts.rules import (
    QueueState,
    Standing,
    deadman_window,
    decide,
    standing,
)
from acmeq.observability.probe import QueueSnapshot
from acmeq.queues import Enqueuer, JobCall
from acmeq.worker.process import WorkerOptions

from conftest import free_port, run_cli, wait_until

TESTS = Path(__file__).resolve().parent
T = TypeVar("T")

_ALERT_ENV = [
    "ACMEQ_SMTP_HOST",
    "ACMEQ_SMTP_PORT",
    "ACMEQ_SMTP_USER",
    "ACMEQ_SMTP_PASSWORD",
    "ACMEQ_ALERT_WEBHOOK_URL",
    # the webhook must go straight to the loopback server, not through a proxy of the host
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
]

# Small thresholds so rules fire within a test; exports fails once and for all (tries 1) and is
# critical besides payments, so sample_jobs.fail makes permanent failures of a critical queue.
CONFIG = """
[monitoring]
cooldown = 600
deadman = 120
critical_queues = ["payments", "exports"]

[queues.payments]
wait_threshold = 30
backlog_threshold = 5

[queues.exports]
tries = 1

[profiles.alerting.supervisors.money]
queues = ["payments"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.alerting.supervisors.files]
queues = ["exports"]
balance = "off"
min_processes = 1
max_processes = 1
"""


# -- real servers ---------------------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for _, m in self.messages]


class SmtpServer:
    def __init__(self) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.controller.start()
    yield server
    server.controller.stop()


class Hook:
    """A Slack-style incoming webhook on loopback that records every POST."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append(
                    {
                        "path": self.path,
                        "content_type": self.headers["Content-Type"],
                        "json": json.loads(body),
                    }
                )
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok" if hook.status == 200 else b"invalid_token")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts(self) -> list[str]:
        return [r["json"]["text"] for r in self.received]


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(autouse=True)
def _no_alert_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ALERT_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(CONFIG)
    return path


def channel_env(smtp: SmtpServer | None = None, hook: Hook | None = None) -> dict[str, str]:
    env = {}
    if smtp is not None:
        env.update(
            QUEUE_ALERT_EMAIL="ops@acme.example",
            ACMEQ_SMTP_HOST="127.0.0.1",
            ACMEQ_SMTP_PORT=str(smtp.port),
        )
    if hook is not None:
        env["ACMEQ_ALERT_WEBHOOK_URL"] = hook.url
    return env


def load(toml: Path, **env: str) -> Settings:
    return Settings.load(toml, env=dict(os.environ, **env))


def history_kinds(client: redis.Redis) -> list[tuple[str, str]]:
    """(kind, alert id) of every notice, oldest first."""
    return [(n["kind"], n["alert_id"]) for n in reversed(alerts.history(client, 100))]


# -- configuration --------------------------------------------------------------------------------


def test_alert_settings_have_defaults_env_variables_and_one_line_problems(tmp_path: Path) -> None:
    s = Settings.load(env={})
    assert s.alerts.smtp_host == "localhost" and s.alerts.smtp_port == 25
    assert s.alerts.cooldown == 900 and s.alerts.deadman == 300
    assert s.alerts.critical_queues == ("payments",)
    assert s.alerts.webhook_url is None and s.alerts.smtp_starttls is False
    backlog = {name: q.backlog_threshold for name, q in s.queues.items()}
    assert backlog == {
        "payments": 1000,
        "notifications": 5000,
        "exports": 100,
        "reports": 100,
        "maintenance": 50,
        "bulk": 50000,
    }

    s = Settings.load(
        env={
            "ACMEQ_SMTP_HOST": "smtp.acme.example",
            "ACMEQ_SMTP_PORT": "587",
            "ACMEQ_SMTP_USER": "acmeq",
            "ACMEQ_SMTP_PASSWORD": "s3cret",
            "ACMEQ_ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x",
            "QUEUE_ALERT_EMAIL": "ops@acme.example, cto@acme.example",
        }
    )
    assert (s.alerts.smtp_host, s.alerts.smtp_port, s.alerts.smtp_user) == (
        "smtp.acme.example",
        587,
        "acmeq",
    )
    assert s.alerts.smtp_password == "s3cret"
    assert s.sources["monitoring.webhook_url"] == "env ACMEQ_ALERT_WEBHOOK_URL"

    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[monitoring]\nsmtp_port = 0\nwebhook_url = 'ftp://x/secret'\ncooldown = -1\n"
        "critical_queues = ['payments', 'nope']\nalert_email = 'ops'\n"
        "[queues.payments]\nbacklog_threshold = 'many'\n"
    )
    with pytest.raises(ConfigError) as caught:
        Settings.load(bad, env={})
    assert sorted(caught.value.problems) == sorted(
        [
            f"{bad}: monitoring.alert_email: must be an email address (several: comma-separated), "
            "got 'ops'",
            f"{bad}: queues.payments.backlog_threshold: must be an integer >= 0, got 'many'",
            f"{bad}: monitoring.webhook_url: must be an http:// or https:// URL, got '***'",
            f"{bad}: monitoring.critical_queues: names unknown queue 'nope' (known: bulk, exports, "
            "maintenance, notifications, payments, reports), got ['payments', 'nope']",
            f"{bad}: monitoring.smtp_port: must be an integer from 1 to 65535, got 0",
            f"{bad}: monitoring.cooldown: must be an integer >= 0, got -1",
        ]
    )


def test_config_show_masks_the_smtp_password_and_the_webhook_url() -> None:
    result = run_cli(
        "config",
        "show",
        "--json",
        env={
            "ACMEQ_SMTP_PASSWORD": "hunter2",
            "ACMEQ_ALERT_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/tok3n",
        },
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)["values"]
    assert values["monitoring.smtp_password"] == {
        "value": "***",
        "source": "env ACMEQ_SMTP_PASSWORD",
    }
    assert values["monitoring.webhook_url"]["value"] == "***"
    assert values["queues.payments.backlog_threshold"] == {"value": 1000, "source": "default"}
    assert "hunter2" not in result.stdout and "tok3n" not in result.stdout
    assert (
        mask_webhook("https://hooks.slack.com/services/T/B/tok3n") == "https://hooks.slack.com/***"
    )


# -- the rules, pure ------------------------------------------------------------------------------


def test_a_state_alert_fires_once_reminds_after_the_cooldown_and_resolves_once() -> None:
    s = Settings.load(env={})  # payments: wait 30 s, cooldown 900 s
    spec = s.queues["payments"]

    def state(age: float | None) -> dict[str, QueueState]:
        ready = 0 if age is None else 3
        return {"payments": QueueState(spec, ready, age, 0, False, 0.0)}

    active: dict[str, dict[str, Any]] = {}

    def step(age: float | None, now: float) -> list[tuple[str, str]]:
        notices, writes, deletes = decide(s, state(age), active, now, "test")
        active.update(writes)
        for aid in deletes:
            del active[aid]
        return [(str(n.kind), n.message) for n in notices]

    # Given a job waiting 10 s, nothing happens
    assert step(10, 1000.0) == []
    # When it has waited 95 s, one FIRING notice names the value and the threshold
    assert step(95, 1000.0) == [("firing", "oldest job waited 95 s (threshold 30 s)")]
    assert active["wait:payments"]["severity"] == "critical"
    assert set(active["wait:payments"]) >= {
        "rule",
        "queue",
        "message",
        "since",
        "severity",
        "last_notified",
        "value",
        "threshold",
    }
    # and while it lasts, nothing more within the cooldown (deduplicated), but the value follows
    assert step(300, 1100.0) == []
    assert active["wait:payments"]["value"] == 300
    # after the cooldown, a reminder
    assert step(1200, 1900.0) == [("reminder", "oldest job waited 1200 s (threshold 30 s)")]
    assert step(1210, 1910.0) == []
    # Then when the queue is empty for a moment and fills again, the same alert goes on
    assert step(None, 1920.0) == []
    assert step(40, 1925.0) == []
    # and once it has been clear for 15 s, one RESOLVED notice, and nothing after it
    assert step(None, 1930.0) == []
    assert step(None, 1940.0) == []
    assert step(None, 1945.0) == [
        ("resolved", "the queue is empty; was firing for 15 min 45 s"),
    ]
    assert active == {}
    assert step(None, 1950.0) == []


# -- rules on a real Redis ------------------------------------------------------------------------


def _load(queue: str, ready: int, age: float | None = None, done: int = 0) -> QueueSnapshot:
    return QueueSnapshot(queue, ready, 0, 0, 0, 0, 0, age, False, False, 0, 0, done, 0, 0.0)


def test_status_shows_only_the_alerts_that_still_hold() -> None:
    # Given active wait, backlog and dead-man alerts on maintenance (backlog threshold 50) and a
    # failure alert on payments, stored by an evaluator that has since stopped
    s = Settings.load(env={})
    now = 1_800_000_000.0
    window = deadman_window(s, s.queues["maintenance"])
    active = {
        "wait:maintenance": {"rule": "wait", "queue": "maintenance", "message": "old"},
        "backlog:maintenance": {"rule": "backlog", "queue": "maintenance", "message": "old"},
        "deadman:maintenance": {"rule": "deadman", "queue": "maintenance", "message": "old"},
        "failed:payments": {
            "rule": "failed",
            "queue": "payments",
            "since": now - 60,
            "last_event": now - 60,
            "updated_at": now - 600,
        },
    }
    clocks = {"maintenance": {"count": 5, "since": now - window - 10}}

    def shown(load: QueueSnapshot, running: bool = False) -> dict[str, Standing]:
        return {a.id: a for a in standing(s, {"maintenance": load}, active, clocks, now, running)}

    # When 2001 jobs are still ready and none finished since the clock started
    held = shown(_load("maintenance", 2001, age=60.0, done=5))
    # Then backlog and dead-man hold, with today's numbers; wait does not (60 s < 3600 s)
    assert set(held) == {"backlog:maintenance", "deadman:maintenance", "failed:payments"}
    assert held["backlog:maintenance"].record["message"] == "2001 jobs ready (threshold 50)"
    # and the failure alert, which no probe can re-check, is stale (no evaluator runs)
    assert held["failed:payments"].stale_s == 600.0
    assert (
        shown(_load("maintenance", 2001, done=5), running=True)["failed:payments"].stale_s is None
    )

    # When the queue was cleared: only the failure alert is left
    assert set(shown(_load("maintenance", 0, done=5))) == {"failed:payments"}
    # When a job finished since the clock started: the dead-man alert no longer holds
    assert "deadman:maintenance" not in shown(_load("maintenance", 2001, done=6))
    # When the failure alert's quiet period (cooldown) is over, it is gone too
    later = standing(s, {}, active, clocks, now + s.alerts.cooldown, False)
    assert [a.id for a in later] == []


def test_wait_alert_fires_is_deduplicated_resolves_and_mails_and_posts_each_notice(
    redis_client: redis.Redis, job_modules: str, toml: Path, smtp: SmtpServer, hook: Hook
) -> None:
    toml.write_text(CONFIG.replace("deadman = 120", "deadman = 0"))  # the wait rule alone
    settings = load(toml, **channel_env(smtp, hook))
    enqueuer = Enqueuer(settings, redis_client)
    t0 = time.time()
    # Given a payments job nobody takes
    job_id = enqueuer.enqueue_many([JobCall("add", (1, 2))])[0]

    # When it has waited longer than the threshold (30 s)
    fired = alerts.evaluate(redis_client, settings, t0 + 95, evaluator="test")
    # Then one notice fires, is logged, stored as active and history, and queued for delivery
    assert [n.title for n in fired] == [
        "FIRING wait:payments — oldest job waited 95 s (threshold 30 s)"
    ]
    active = alerts.active_alerts(redis_client)
    assert [(a["id"], a["rule"], a["queue"], a["value"], a["threshold"]) for a in active] == [
        ("wait:payments", "wait", "payments", 95, 30)
    ]
    report = alerts.deliver_outbox(redis_client, settings)
    assert report.errors == [] and report.pending == 0 and len(report.sent) == 2

    # and the same condition later is not notified again (deduplicated)
    assert alerts.evaluate(redis_client, settings, t0 + 200) == []
    # but a reminder comes after the cooldown (600 s here)
    again = alerts.evaluate(redis_client, settings, t0 + 700)
    assert [n.kind for n in again] == [NoticeKind.REMINDER]

    # When the job is gone (taken by a worker), the alert resolves once, after 15 s clear
    redis_client.lrem("rq:queue:payments", 0, job_id)
    assert alerts.evaluate(redis_client, settings, t0 + 710) == []
    resolved = alerts.evaluate(redis_client, settings, t0 + 725)
    assert [n.title for n in resolved] == [
        "RESOLVED wait:payments — the queue is empty; was firing for 10 min 30 s"
    ]
    assert alerts.evaluate(redis_client, settings, t0 + 730) == []
    assert alerts.active_alerts(redis_client) == []
    assert history_kinds(redis_client) == [
        ("firing", "wait:payments"),
        ("reminder", "wait:payments"),
        ("resolved", "wait:payments"),
    ]
    alerts.deliver_outbox(redis_client, settings)

    # Then the SMTP server received one mail per notice, to the alert address
    assert smtp.inbox.subjects() == [
        "[acmeq] FIRING wait:payments — oldest job waited 95 s (threshold 30 s)",
        "[acmeq] STILL FIRING wait:payments — oldest job waited 700 s (threshold 30 s)",
        "[acmeq] RESOLVED wait:payments — the queue is empty; was firing for 10 min 30 s",
    ]
    rcpts, first = smtp.inbox.messages[0]
    assert rcpts == ["ops@acme.example"]
    assert first["From"] == "acmeq@localhost"
    body = first.get_content()
    assert "queue:      payments" in body and "threshold:  30" in body
    assert "acmeq status" in body
    # and the webhook one Slack-compatible JSON document per notice
    assert hook.texts() == smtp.inbox.subjects()
    posted = hook.received[0]
    assert posted["content_type"] == "application/json"
    assert posted["path"] == "/services/T000/B000/secret"
    attachment = posted["json"]["attachments"][0]
    assert attachment["color"] == "danger"
    assert {"title": "queue", "value": "payments", "short": True} in attachment["fields"]
    assert posted["json"]["acmeq"]["alert_id"] == "wait:payments"
    assert hook.received[2]["json"]["attachments"][0]["color"] == "good"


def test_backlog_and_dead_man_alerts(
    redis_client: redis.Redis, job_modules: str, toml: Path
) -> None:
    settings = load(toml)  # payments: backlog 5; deadman 120, so 240 s (timeout 180 + 60)
    enqueuer = Enqueuer(settings, redis_client)
    t0 = time.time()
    enqueuer.enqueue_many([JobCall("add", (i, 1)) for i in range(6)])

    # Given 6 ready jobs (threshold 5): the backlog alert fires (and wait, since they age)
    first = alerts.evaluate(redis_client, settings, t0 + 1)
    assert [n.title for n in first] == [
        "FIRING backlog:payments — 6 jobs ready (threshold 5)",
    ]
    # When nothing is processed for longer than the dead-man window (timeout 180 + 60 s)
    later = alerts.evaluate(redis_client, settings, t0 + 250)
    assert sorted(n.alert_id for n in later) == ["deadman:payments", "wait:payments"]
    deadman = next(n for n in later if n.alert_id == "deadman:payments")
    assert deadman.message == "6 jobs ready and none processed for 4 min 9 s (threshold 240 s)"
    assert deadman.threshold == 240

    # Then a job processed (the worker's counter moves) resolves the dead-man alert
    redis_client.hincrby(keys.stats("payments"), "processed", 1)
    assert alerts.evaluate(redis_client, settings, t0 + 260) == []
    after = alerts.evaluate(redis_client, settings, t0 + 275)
    assert [(n.kind, n.alert_id, n.message) for n in after] == [
        (
            NoticeKind.RESOLVED,
            "deadman:payments",
            "jobs are being processed again; was firing for 25 s",
        )
    ]
    # and a paused queue never counts as dead (its wait alert says it is paused)
    set_paused(redis_client, True, queues=["payments"])
    assert alerts.evaluate(redis_client, settings, t0 + 550) == []
    active = {a["id"]: a for a in alerts.active_alerts(redis_client)}
    assert "deadman:payments" not in active
    assert active["wait:payments"]["message"].endswith("; the queue is paused")


@pytest.mark.timeout(120)
def test_permanent_failures_on_a_critical_queue_notify_once_each_batch_then_resolve(
    redis_client: redis.Redis, job_modules: str, toml: Path, smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = load(toml, **channel_env(smtp))
    enqueuer = Enqueuer(settings, redis_client)
    # Given the evaluator has looked at the failed registries once (it starts its cursor)
    assert alerts.evaluate(redis_client, settings) == []
    # When three export jobs fail for good in a real worker (exports: 1 try, critical here)
    ids = enqueuer.enqueue_many(
        [JobCall("fail", kwargs={"message": f"card {i}"}) for i in range(3)]
    )
    run_worker(WorkerOptions(queue="exports", burst=True, name="t"), toml, tmp_path)
    assert redis_client.zcard("rq:failed:exports") == 3

    # Then one notice names them all, with their exceptions
    t = time.time()
    notices = alerts.evaluate(redis_client, settings, t)
    assert len(notices) == 1
    n = notices[0]
    assert (n.kind, n.alert_id, n.severity, n.value) == (
        NoticeKind.FIRING,
        "failed:exports",
        "critical",
        3,
    )
    assert n.message.startswith("3 exports jobs failed permanently: ")
    assert sorted(line.split(" ")[0] for line in n.details) == sorted(ids)
    assert all(": RuntimeError: card " in line for line in n.details)
    # and the same failures are never notified twice
    assert alerts.evaluate(redis_client, settings, t + 5) == []
    # and one more failure is a new notice, counted with the earlier ones
    enqueuer.enqueue_many([JobCall("fail")])
    run_worker(WorkerOptions(queue="exports", burst=True, name="t"), toml, tmp_path)
    more = alerts.evaluate(redis_client, settings, time.time() + 10)
    assert [m.message.split(" (")[0].split(":")[0] for m in more] == [
        "1 exports job failed permanently"
    ]
    assert "(4 since " in more[0].message
    # When the cooldown passes without a new failure, the alert resolves
    quiet = alerts.evaluate(redis_client, settings, time.time() + 700)
    assert [(m.kind, m.alert_id) for m in quiet] == [(NoticeKind.RESOLVED, "failed:exports")]
    alerts.deliver_outbox(redis_client, settings)
    subjects = smtp.inbox.subjects()
    assert len(subjects) == 3
    assert subjects[0].startswith("[acmeq] FIRING failed:exports — 3 exports jobs failed")
    assert "RuntimeError: card 0" in smtp.inbox.messages[0][1].get_content()
    assert subjects[2].startswith("[acmeq] RESOLVED failed:exports — no new permanent failures")


def run_worker(opts: WorkerOptions, toml: Path, tmp_path: Path) -> None:
    env = dict(os.environ, ACMEQ_CONFIG=str(toml))
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == WorkerExit.OK, proc.stderr


# -- channels: failures, retries, the lock --------------------------------------------------------


def test_a_failed_delivery_stays_in_the_outbox_and_is_retried_after_a_backoff(
    redis_client: redis.Redis, job_modules: str, toml: Path, smtp: SmtpServer, hook: Hook
) -> None:
    # Given a mail server that is down and a webhook that answers 500
    dead = dict(channel_env(smtp, hook), ACMEQ_SMTP_PORT=str(free_port()))
    settings = load(toml, **dead)
    hook.status = 500
    Enqueuer(settings, redis_client).enqueue_many([JobCall("add", (1, 2))])
    t0 = time.time()
    alerts.evaluate(redis_client, settings, t0 + 100)
    redis_client.delete("rq:queue:payments")
    alerts.evaluate(redis_client, settings, t0 + 110)
    assert alerts.evaluate(redis_client, settings, t0 + 126)  # resolved

    # When the outbox is delivered, both channels fail; each is tried once, not per notice
    report = alerts.deliver_outbox(redis_client, settings, t0 + 126)
    assert sorted(report.errors) == [
        f"email to ops@acme.example via 127.0.0.1:{dead['ACMEQ_SMTP_PORT']}: Connection refused",
        f"webhook http://127.0.0.1:{hook.server.server_address[1]}/***: "
        "HTTP 500 Internal Server Error",
    ]
    assert report.pending == 2 and len(hook.received) == 1
    channels = alerts.overview(redis_client, settings, 0)["channels"]
    assert channels["email"]["ok"] is False and channels["email"]["failures"] == 1
    # and within the backoff nothing is tried again
    assert alerts.deliver_outbox(redis_client, settings, t0 + 130).errors == []
    assert len(hook.received) == 1

    # Then when both are back, the firing and the resolved notices go out, in order
    hook.status = 200
    settings = load(toml, **channel_env(smtp, hook))
    report = alerts.deliver_outbox(redis_client, settings, t0 + 140)
    assert report.errors == [] and report.pending == 0
    assert [s.split(" — ")[0] for s in smtp.inbox.subjects()] == [
        "[acmeq] FIRING wait:payments",
        "[acmeq] RESOLVED wait:payments",
    ]
    assert [t.split(" — ")[0] for t in hook.texts()[1:]] == [
        "[acmeq] FIRING wait:payments",
        "[acmeq] RESOLVED wait:payments",
    ]
    assert redis_client.hlen(keys.ALERTS_OUTBOX) == 0
    assert alerts.overview(redis_client, settings, 0)["channels"]["email"]["ok"] is True


def test_only_the_holder_of_the_lock_evaluates(
    redis_client: redis.Redis, job_modules: str, toml: Path
) -> None:
    settings = load(toml)
    Enqueuer(settings, redis_client).enqueue_many([JobCall("add", (i, 1)) for i in range(6)])
    # Given two masters offering to evaluate
    alerts.maybe_evaluate(redis_client, settings, "master-a", background=False)
    alerts.maybe_evaluate(redis_client, settings, "master-b", background=False)
    # Then only the first took the lock and evaluated: one notice, not two
    assert alerts.lock_holder(redis_client) == "master-a"
    assert history_kinds(redis_client) == [("firing", "backlog:payments")]
    assert 0 < redis_client.pttl(keys.ALERTS_LOCK) <= alerts.LOCK_TTL_S * 1000
    # When master-a goes away (its lock expires), master-b takes over with the same state
    redis_client.delete(keys.ALERTS_LOCK)
    alerts.maybe_evaluate(redis_client, settings, "master-b", background=False)
    assert alerts.lock_holder(redis_client) == "master-b"
    assert history_kinds(redis_client) == [("firing", "backlog:payments")]
    # and with monitoring off, nobody evaluates
    off = load(toml, QUEUE_MONITORING_ENABLED="false")
    redis_client.delete(keys.ALERTS_LOCK)
    alerts.maybe_evaluate(redis_client, off, "master-c", background=False)
    assert alerts.lock_holder(redis_client) is None


# -- the commands ---------------------------------------------------------------------------------


def test_alerts_test_sends_through_each_channel_and_names_the_one_that_failed(
    smtp: SmtpServer, hook: Hook
) -> None:
    env = channel_env(smtp, hook)
    result = run_cli("alerts", "test", env=env)
    assert result.returncode == 0, result.stderr
    assert "sent: log" in result.stdout
    assert f"sent: email to ops@acme.example via 127.0.0.1:{smtp.port}" in result.stdout
    assert smtp.inbox.subjects()[0].startswith("[acmeq] TEST test:acmeq — test notice from cli:")
    assert hook.received[0]["json"]["acmeq"]["kind"] == "test"

    port = free_port()
    result = run_cli(
        "alerts", "test", "--channel", "email", env=dict(env, ACMEQ_SMTP_PORT=str(port))
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"acmeq: error: email to ops@acme.example via 127.0.0.1:{port}: Connection refused"
    )
    result = run_cli("alerts", "test", "--channel", "webhook")
    assert result.returncode == 2
    assert "the webhook channel is not configured: set ACMEQ_ALERT_WEBHOOK_URL" in result.stderr


def test_alerts_evaluate_and_list(
    redis_client: redis.Redis, job_modules: str, toml: Path, smtp: SmtpServer
) -> None:
    env = dict(channel_env(smtp), ACMEQ_CONFIG=str(toml))
    settings = load(toml, **env)
    Enqueuer(settings, redis_client).enqueue_many([JobCall("add", (i, 1)) for i in range(6)])

    # Nothing active yet: `list` exits 0
    result = run_cli("alerts", "list", env=env)
    assert result.returncode == 0, result.stderr
    assert "no active alerts" in result.stdout
    # `evaluate` notifies and delivers now
    result = run_cli("alerts", "evaluate", env=env)
    assert result.returncode == 0, result.stderr
    assert "FIRING backlog:payments — 6 jobs ready (threshold 5)" in result.stdout
    assert smtp.inbox.subjects() == ["[acmeq] FIRING backlog:payments — 6 jobs ready (threshold 5)"]
    assert alerts.lock_holder(redis_client) is None  # released after the run
    # `list` shows it and exits 1 while it is active
    result = run_cli("alerts", "list", "--json", env=env)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert [a["id"] for a in data["active"]] == ["backlog:payments"]
    assert [h["kind"] for h in data["history"]] == ["firing"]
    assert data["channels"]["email"]["ok"] is True
    table = run_cli("alerts", "list", env=env)
    assert "backlog:payments" in table.stdout and "critical" in table.stdout

    # While a master holds the lock, `evaluate` only previews
    redis_client.delete("rq:queue:payments")
    alerts.hold_lock(redis_client, "master-a")
    result = run_cli("alerts", "evaluate", env=env)
    assert result.returncode == 0, result.stderr
    assert "preview: master-a is the evaluator" in result.stdout
    assert "no new notices" in result.stdout
    assert [(a["id"], "clear_since" in a) for a in alerts.active_alerts(redis_client)] == [
        ("backlog:payments", False)
    ]
    assert len(smtp.inbox.messages) == 1

    # With monitoring off, nothing is evaluated
    result = run_cli("alerts", "evaluate", env=dict(env, QUEUE_MONITORING_ENABLED="false"))
    assert result.returncode == 0 and "monitoring is disabled" in result.stdout


# -- end to end: a real master evaluates by itself ------------------------------------------------


@pytest.fixture
def master(
    redis_url: str, job_modules: str, toml: Path, tmp_path: Path, smtp: SmtpServer, hook: Hook
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(hostname: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"master-{hostname}.log"
        env = dict(os.environ, ACMEQ_CONFIG=str(toml), **channel_env(smtp, hook))
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "acmeq", "worker", "start", "--profile", "alerting"),
                    *("--hostname", hostname, "--log-level", "INFO"),
                ],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append((proc, log_path))
        return proc

    yield start
    for proc, log_path in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        print(f"---- {log_path.name} ----\n{log_path.read_text(errors='replace')}")


@pytest.mark.timeout(120)
def test_running_masters_evaluate_alerts_by_themselves_one_at_a_time(
    master: Callable[[str], subprocess.Popen[bytes]],
    redis_client: redis.Redis,
    toml: Path,
    smtp: SmtpServer,
    hook: Hook,
) -> None:
    # Given payments waits at most 1 s before alerting, and the payments queue is paused
    toml.write_text(CONFIG.replace("wait_threshold = 30", "wait_threshold = 1"))
    settings = Settings.load(toml)
    set_paused(redis_client, True, queues=["payments"])
    job_id = Enqueuer(settings, redis_client).enqueue_many([JobCall("add", (20, 22))])[0]

    # When two masters run
    master("host-a")
    master("host-b")

    # Then one of them fires the wait alert, which reaches the mail server and the webhook
    wait_until("the wait alert to be mailed", lambda: smtp.inbox.subjects(), timeout=45)
    subject = smtp.inbox.subjects()[0]
    assert subject.startswith("[acmeq] FIRING wait:payments — oldest job waited ")
    assert subject.endswith("(threshold 1 s); the queue is paused")
    wait_until("the webhook to be called", lambda: hook.received)
    active = alerts.active_alerts(redis_client)
    assert [a["id"] for a in active] == ["wait:payments"]
    assert alerts.lock_holder(redis_client) in ("host-a", "host-b")

    # When the queue is continued, the job runs and the alert resolves, exactly once
    set_paused(redis_client, False, queues=["payments"])
    wait_until(
        "the resolved notice to be mailed",
        lambda: any("RESOLVED wait:payments" in s for s in smtp.inbox.subjects()),
        timeout=45,
    )
    assert redis_client.hget(f"rq:job:{job_id}", "status") == b"finished"
    assert alerts.active_alerts(redis_client) == []
    time.sleep(6)  # another evaluation round by whichever master holds the lock
    assert [s.split(" — ")[0] for s in smtp.inbox.subjects()] == [
        "[acmeq] FIRING wait:payments",
        "[acmeq] RESOLVED wait:payments",
    ]
    assert [t.split(" — ")[0] for t in hook.texts()] == [
        "[acmeq] FIRING wait:payments",
        "[acmeq] RESOLVED wait:payments",
    ]


def test_a_damaged_alert_record_does_not_stop_the_evaluation(
    redis_client: redis.Redis, job_modules: str, toml: Path
) -> None:
    settings = load(toml)
    # Given hand-edited records in the active hash
    damaged = '{"rule": "wait", "queue": "payments", "severity": "bogus", "since": "?"}'
    redis_client.hset(keys.ALERTS_ACTIVE, "wait:payments", damaged)
    redis_client.hset(keys.ALERTS_ACTIVE, "junk", "not json")
    t0 = time.time()
    # When the evaluator runs, it treats the readable one as an alert that has cleared
    assert alerts.evaluate(redis_client, settings, t0) == []
    resolved = alerts.evaluate(redis_client, settings, t0 + 20)
    assert [(n.kind, n.alert_id, n.severity) for n in resolved] == [
        (NoticeKind.RESOLVED, "wait:payments", "warning")
    ]
    # and leaves what it cannot read alone
    assert redis_client.hkeys(keys.ALERTS_ACTIVE) == [b"junk"]
