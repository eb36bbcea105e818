"""Redis outages under load: the master and its workers wait, lose nothing and resume by themselves.

The test runs its own redis-server with an append-only file, so that stopping and restarting it
keeps the queues, as a production Redis would. Jobs write a ledger line per run
(tests/master_jobs.py): every job must be ``finished`` and in the ledger within a minute of Redis
returning, with no restart by hand.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from master_support import (
    FAULTS_CONFIG,
    MasterStarter,
    assert_every_job_completed,
    enqueue_ledger,
    enqueuer_for,
    ledger_counts,
    live_workers,
    statuses,
    unfinished,
)

from acmeq.storage.redis_client import find_redis_server

from conftest import free_port, wait_until


@pytest.fixture(autouse=True)
def acmeq_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job_modules: str) -> Path:
    path = tmp_path / "acmeq.toml"
    path.write_text(FAULTS_CONFIG)
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "sample_jobs,master_jobs")
    return path


@pytest.fixture
def start_master(redis_url: str, tmp_path: Path) -> Iterator[MasterStarter]:
    starter = MasterStarter(tmp_path, redis_url)
    yield starter
    starter.cleanup()


# -- Redis outages ---------------------------------------------------------------------------------


class RestartableRedis:
    """A private redis-server with an append-only file, stopped and started on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = find_redis_server()
        assert binary is not None
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until("redis-server to answer", lambda: _pings(client), timeout=20)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # a clean shutdown: the append-only file is complete
        self.proc.wait(timeout=20)

    def url(self, db: int = 1) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def outage_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    workdir = tmp_path / "redis-aof"
    workdir.mkdir()
    server = RestartableRedis(workdir)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.stop()


LONG_OUTAGE = pytest.mark.skipif(
    not os.environ.get("ACMEQ_LONG_TESTS"),
    reason="a 2-minute Redis outage: set ACMEQ_LONG_TESTS=1 (CI does)",
)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seconds", [5, 20, pytest.param(120, marks=LONG_OUTAGE)])
def test_a_redis_outage_under_load_loses_nothing_and_drains_without_a_restart(
    seconds: int,
    outage_redis: RestartableRedis,
    start_master: MasterStarter,
    acmeq_toml: Path,
    tmp_path: Path,
) -> None:
    # Given a master serving an inline, a threads x4 and a fork pool on a Redis of its own
    url = outage_redis.url()
    client = redis.Redis.from_url(url)
    master = start_master("outage", "outage-host", env={"REDIS_URL": url})
    wait_until("three workers", lambda: len(client.smembers("rq:workers")) == 3, timeout=60)
    # and 390 jobs of 30 ms being worked on (fewer on fork, the slowest model)
    ledger = tmp_path / "ledger.txt"
    counts = {"notifications": 150, "payments": 200, "reports": 40}
    tokens = enqueue_ledger(enqueuer_for(client, acmeq_toml), ledger, counts, 0.03)
    wait_until("work under way", lambda: sum(ledger_counts(ledger).values()) >= 60, timeout=60)
    workers_before = {w.pid for w in live_workers(master)}

    # When Redis stops for a while and comes back
    outage_redis.stop()
    time.sleep(seconds)
    outage_redis.start()
    back = time.monotonic()

    # Then every job finishes within a minute of Redis returning, with no restart by hand
    wait_until(
        "every job finished after the outage",
        lambda: (
            statuses(client, list(tokens.values()))["finished"] == len(tokens)
            or print(unfinished(client, tokens, ledger))
        ),
        timeout=60,
        every=2.0,
    )
    print(f"drained {time.monotonic() - back:.1f} s after Redis returned")
    assert_every_job_completed(client, ledger, tokens)
    # and the master never stopped, logged the outage once and its end
    assert master.proc.poll() is None
    log = master.log()
    master_lines = [line for line in log.splitlines() if "acmeq.master[" in line]
    assert sum("Redis unreachable (" in line for line in master_lines) == 1, log
    assert "Redis is back after" in log
    assert "halted" not in log
    # and the pools are whole again (workers kept their processes or were replaced)
    wait_until("three workers again", lambda: len(live_workers(master)) == 3, timeout=30)
    kept = workers_before & {w.pid for w in live_workers(master)}
    print(f"workers kept through the outage: {len(kept)}/3")
