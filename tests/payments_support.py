"""Helpers of the payments tests: seed data, a fake provider API, a receiver in a thread,
signed events and burst workers (real processes)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.storage.models import Campaign, Company, Donation, User
from acmeq.web import paypal as paypal_verify
from acmeq.web import stripe as stripe_verify
from acmeq.worker.options import WorkerOptions

from conftest import free_port, wait_until

TESTS = Path(__file__).resolve().parent
STRIPE_SECRET = "whsec_test_secret"
MOLLIE_SECRET = "mollie_test_secret"
PAYPAL_WEBHOOK_ID = "WH-TEST-1"


# -- data --------------------------------------------------------------------------------------


@dataclass
class Seeded:
    company: int
    organizer: int
    employee: int
    employee2: int
    outsider: int
    campaign: int


def seed(
    engine: Engine,
    *,
    ratio_bp: int = 10_000,
    cap_donation: int | None = 50_00,
    cap_year: int | None = 80_00,
    goal: int = 1_000_00,
) -> Seeded:
    """A company matching 1:1 (caps: 50 EUR per donation, 80 EUR per employee-year), two of
    its employees, an outsider and a campaign with a 1,000 EUR goal."""
    with engine.begin() as conn:
        company = conn.execute(
            sa.insert(Company.__table__).returning(Company.__table__.c.id),  # type: ignore[attr-defined]
            {
                "name": "Acme",
                "match_ratio_bp": ratio_bp,
                "match_cap_per_donation_minor": cap_donation,
                "match_cap_per_employee_year_minor": cap_year,
                "currency": "EUR",
                "created_at": datetime.now(UTC),
            },
        ).scalar_one()
        users = []
        for email, company_id in (
            ("org@example.org", None),
            ("emp@example.org", company),
            ("emp2@example.org", company),
            ("out@example.org", None),
        ):
            users.append(
                conn.execute(
                    sa.insert(User.__table__).returning(User.__table__.c.id),  # type: ignore[attr-defined]
                    {
                        "email": email,
                        "name": email.split("@")[0],
                        "role": "employee",
                        "company_id": company_id,
                        "locale": "en",
                        "created_at": datetime.now(UTC),
                    },
                ).scalar_one()
            )
        campaign = conn.execute(
            sa.insert(Campaign.__table__).returning(Campaign.__table__.c.id),  # type: ignore[attr-defined]
            {
                "title": "Clean water",
                "description": "",
                "goal_minor": goal,
                "currency": "EUR",
                "raised_minor": 0,
                "matched_minor": 0,
                "donation_count": 0,
                "status": "active",
                "organizer_id": users[0],
                "created_at": datetime.now(UTC),
                "updated_at": datetime.now(UTC),
            },
        ).scalar_one()
    return Seeded(company, users[0], users[1], users[2], users[3], campaign)


def add_donation(
    engine: Engine,
    campaign: int,
    donor: int | None,
    amount: int,
    gateway: str = "stripe",
    tx: str | None = None,
) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                sa.insert(Donation.__table__).returning(Donation.__table__.c.id),  # type: ignore[attr-defined]
                {
                    "campaign_id": campaign,
                    "donor_id": donor,
                    "amount_minor": amount,
                    "currency": "EUR",
                    "status": "pending",
                    "gateway": gateway,
                    "gateway_transaction_id": tx,
                    "anonymous": False,
                    "donor_locale": "en",
                    "matched_minor": 0,
                    "refunded_minor": 0,
                    "created_at": datetime.now(UTC),
                    "updated_at": datetime.now(UTC),
                },
            ).scalar_one()
        )


def row(engine: Engine, table: Any, id_: int) -> Any:
    t = table.__table__
    with engine.connect() as conn:
        return conn.execute(sa.select(t).where(t.c.id == id_)).one()


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


# -- events ------------------------------------------------------------------------------------


def stripe_event(
    donation: int,
    amount: int,
    *,
    kind: str = "payment_intent.succeeded",
    event_id: str | None = None,
    tx: str | None = None,
    pad_to: int = 0,
    refunded: int = 0,
) -> bytes:
    tx = tx or f"pi_{donation}"
    if kind == "charge.refunded":
        obj: dict[str, Any] = {
            "id": f"ch_{donation}",
            "object": "charge",
            "payment_intent": tx,
            "amount": amount,
            "amount_refunded": refunded,
            "currency": "eur",
            "metadata": {"donation_id": str(donation)},
        }
    else:
        obj = {
            "id": tx,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": amount,
            "currency": "eur",
            "metadata": {"donation_id": str(donation)},
        }
    event = {
        "id": event_id or f"evt_{donation}_{kind.replace('.', '_')}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }
    body = json.dumps(event, separators=(",", ":"))
    if pad_to and len(body) < pad_to:  # realistic size: Stripe events carry much more
        event["data"]["object"]["description"] = "x" * (pad_to - len(body) - 20)
        body = json.dumps(event, separators=(",", ":"))
    return body.encode()


def stripe_headers(
    body: bytes, secret: str = STRIPE_SECRET, t: int | None = None
) -> dict[str, str]:
    return {
        "Stripe-Signature": stripe_verify.header_for(body, secret, t),
        "Content-Type": "application/json",
    }


@dataclass
class PaypalKeys:
    key: rsa.RSAPrivateKey
    cert_path: Path

    def headers(
        self,
        body: bytes,
        *,
        cert_url: str = "https://api.paypal.com/v1/notifications/certs/CERT-1",
        algo: str = "SHA256withRSA",
        webhook_id: str = PAYPAL_WEBHOOK_ID,
    ) -> dict[str, str]:
        tid, when = "tx-" + str(time.monotonic_ns()), datetime.now(UTC).isoformat()
        message = paypal_verify.message(tid, when, webhook_id, body)
        sig = self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "PAYPAL-TRANSMISSION-ID": tid,
            "PAYPAL-TRANSMISSION-TIME": when,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(sig).decode(),
            "PAYPAL-CERT-URL": cert_url,
            "PAYPAL-AUTH-ALGO": algo,
            "Content-Type": "application/json",
        }


def paypal_keys(directory: Path) -> PaypalKeys:
    """A self-signed RSA certificate standing in for PayPal's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.paypal.com")]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = directory / "paypal-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return PaypalKeys(key, path)


def paypal_event(donation: int, amount: str, kind: str = "PAYMENT.CAPTURE.COMPLETED") -> bytes:
    event = {
        "id": f"WH-{donation}-{kind}",
        "event_type": kind,
        "resource": {
            "id": f"CAP-{donation}",
            "custom_id": str(donation),
            "amount": {"value": amount, "currency_code": "EUR"},
            "status": "COMPLETED",
        },
    }
    return json.dumps(event).encode()


# -- the fake provider API -----------------------------------------------------------------------


@dataclass
class FakeProvider:
    """Stripe, Mollie and PayPal APIs on one loopback port, with scripted failures."""

    server: ThreadingHTTPServer
    mollie_payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer refunds with first
    paypal_verify_ok: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def refund_calls(self) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
        return [c for c in self.calls if "refund" in c[1]]


def start_fake_provider() -> FakeProvider:
    fake: FakeProvider

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, data: Any) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> dict[str, Any]:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Type", "").startswith("application/json"):
                return json.loads(raw or b"{}")
            from urllib.parse import parse_qsl

            return dict(parse_qsl(raw.decode()))

        def do_GET(self) -> None:
            fake.calls.append(("GET", self.path, {}, dict(self.headers)))
            if self.path.startswith("/v2/payments/"):
                payment = fake.mollie_payments.get(self.path.rsplit("/", 1)[-1])
                if payment is None:
                    self._reply(404, {"status": 404, "detail": "No payment exists with token"})
                else:
                    self._reply(200, payment)
                return
            self._reply(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = self._body()
            fake.calls.append(("POST", self.path, body, dict(self.headers)))
            if "refund" in self.path and fake.fail_next:
                status = fake.fail_next.pop(0)
                self._reply(status, {"error": {"message": f"scripted {status}"}})
                return
            if self.path == "/v1/refunds":
                self._reply(200, {"id": f"re_{len(fake.calls)}", "status": "succeeded"})
            elif self.path.startswith("/v2/payments/") and self.path.endswith("/refunds"):
                self._reply(201, {"id": f"re_m{len(fake.calls)}", "status": "pending"})
            elif self.path == "/v1/oauth2/token":
                self._reply(200, {"access_token": "A21", "expires_in": 3600})
            elif self.path.endswith("/refund"):
                self._reply(201, {"id": f"PPR-{len(fake.calls)}", "status": "COMPLETED"})
            elif self.path == "/v1/notifications/verify-webhook-signature":
                status = "SUCCESS" if fake.paypal_verify_ok else "FAILURE"
                self._reply(200, {"verification_status": status})
            else:
                self._reply(404, {"error": {"message": "not found"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake = FakeProvider(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake


# -- the receiver and workers --------------------------------------------------------------------


@dataclass
class RunningReceiver:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{self.url}/webhooks/{provider}", content=body, headers=headers, timeout=10
        )

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def receiver(settings: Settings) -> Iterator[RunningReceiver]:
    """The real receiver app on uvicorn, in a thread of the test process, on a free port."""
    from acmeq.web.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until("receiver started", lambda: server.started, timeout=15)
    running = RunningReceiver(f"http://127.0.0.1:{port}", server, thread)
    try:
        yield running
    finally:
        running.stop()


def worker_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(overrides)
    return env


def start_worker(
    queue: str = "payments", burst: bool = True, **env: str
) -> subprocess.Popen[bytes]:
    opts = WorkerOptions(queue=queue, mode="inline", burst=burst, name="pay")
    return subprocess.Popen(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=worker_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def drain(queue: str = "payments", timeout: float = 60, **env: str) -> str:
    """Run a burst worker until the queue is empty; return its stderr."""
    proc = start_worker(queue, burst=True, **env)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return err.decode(errors="replace")


# -- the fixture -------------------------------------------------------------------------------


@dataclass
class PayEnv:
    settings: Settings
    engine: Engine
    seeded: Seeded
    fake: FakeProvider
    paypal: PaypalKeys
    env: dict[str, str]

    def reload(self, **env: str) -> Settings:
        """Settings with some environment variables changed (the fixture's stay)."""
        return Settings.load(env={**os.environ, **env})


@pytest.fixture
def pay(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[PayEnv]:
    """A migrated database with seed data, a private Redis, a fake provider API and the payment
    settings (secrets, webhook id, local PayPal certificate, API base URLs) in the environment."""
    from acmeq.storage import sql

    fake = start_fake_provider()
    keys = paypal_keys(tmp_path)
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_WEBHOOK_SECRET": f"{STRIPE_SECRET},whsec_rotated_in",
        "MOLLIE_WEBHOOK_SECRET": MOLLIE_SECRET,
        "PAYPAL_WEBHOOK_ID": PAYPAL_WEBHOOK_ID,
        "ACMEQ_PAYPAL_CERT_FILE": str(keys.cert_path),
        "STRIPE_API_BASE": fake.url,
        "MOLLIE_API_BASE": fake.url,
        "PAYPAL_API_BASE": fake.url,
        "STRIPE_SECRET_KEY": "sk_test_1",
        "MOLLIE_API_KEY": "test_1",
        "PAYPAL_CLIENT_ID": "client",
        "PAYPAL_CLIENT_SECRET": "secret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load()
    engine = sql.make_engine(database_url)
    sql.upgrade(engine)
    try:
        yield PayEnv(settings, engine, seed(engine), fake, keys, env)
    finally:
        fake.server.shutdown()
        engine.dispose()
        sql.dispose_engines()
