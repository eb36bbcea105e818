"""Chaos: Redis (AOF, appendfsync everysec) restarted mid-run. The master, its workers and the
receiver keep running (same pids): the receiver answers 503 while Redis is down, deliveries
refused then are redelivered (as Stripe does), and every acknowledged webhook completes its
donation exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_support import Receiver
from master_support import MasterStarter
from payments_support import PayEnv, add_donation, count, pay, row, stripe_event

from acmeq.storage.models import Campaign
from acmeq.storage.redis_client import find_redis_server

from conftest import free_port, wait_for_redis, wait_until
from db_support import POSTGRES_ENV

__all__ = ["pay"]

pytestmark = [pytest.mark.chaos]
N = 60
CONFIG = """
[queues.payments]
tries = 25
backoff = [0]

[profiles.chaos.supervisors.pay]
queues = ["payments"]
balance = "off"
min_processes = 2
max_processes = 2
mode = "inline"
"""


class AofRedis:
    """A redis-server with AOF (everysec) that can be stopped and started on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        binary = find_redis_server()
        assert binary is not None
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.proc = subprocess.Popen(
            [binary, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_redis(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path / "aof")
    yield server
    server.stop()


@pytest.mark.parametrize(
    "database_url", ["postgres" if os.environ.get(POSTGRES_ENV) else "sqlite"], indirect=True
)
@pytest.mark.timeout(240)
def test_redis_restart_mid_run(
    pay: PayEnv, aof_redis: AofRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", aof_redis.url)
    (tmp_path / "acmeq.toml").write_text(CONFIG)
    s = pay.seeded
    rng = random.Random(15)
    amounts: dict[int, int] = {}
    for _ in range(N):
        amount = rng.randint(1, 200) * 100
        amounts[add_donation(pay.engine, s.campaign, s.outsider, amount)] = amount
    bodies = [stripe_event(d, a) for d, a in amounts.items()]

    starter = MasterStarter(tmp_path, aof_redis.url)
    try:
        master = starter("chaos", "redis-host")
        receiver = Receiver(tmp_path)
        try:
            codes = [receiver.post(b) for b in bodies[: N // 2]]
            aof_redis.stop()  # Redis goes away mid-run
            down = [receiver.post(b) for b in bodies[N // 2 : N // 2 + 5]]
            time.sleep(3)
            aof_redis.start()  # and comes back on the same port, from its AOF
            codes += down
            codes += [receiver.post(b) for b in bodies[N // 2 + 5 :]]
            # The provider redelivers what was not acknowledged.
            redelivered = 0
            for body, code in zip(bodies, codes, strict=True):
                while code != 200 and redelivered < 10 * N:
                    redelivered += 1
                    time.sleep(0.3)
                    code = receiver.post(body)
            wait_until(
                f"{N} donations completed",
                lambda: _completed(pay) >= N,
                timeout=150,
                every=0.5,
            )
            receiver_alive = receiver.proc.poll() is None
        finally:
            receiver.stop()
        master_alive = master.proc.poll() is None
    finally:
        starter.cleanup()

    acked_first = sum(c == 200 for c in codes)
    completed_once = count(
        pay.engine, "SELECT count(*) FROM audit_log WHERE action='donation.completed'"
    )
    campaign = row(pay.engine, Campaign, s.campaign)
    lost = N - _completed(pay)
    print(
        f"\nchaos redis restart: sent {N}, acknowledged first try {acked_first}, "
        f"503 while down {sum(c == 503 for c in down)}/{len(down)}, redelivered {redelivered}, "
        f"processed {completed_once}, lost {lost}"
    )
    assert all(c == 503 for c in down), down
    assert receiver_alive and master_alive  # nobody was restarted
    assert lost == 0 and completed_once == N
    assert campaign.raised_minor == sum(amounts.values())
    assert campaign.donation_count == N


def _completed(p: PayEnv) -> int:
    return count(p.engine, "SELECT count(*) FROM donations WHERE status='completed'")
