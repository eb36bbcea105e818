"""Chaos: a Sentinel failover under load. A real primary, a replica and three sentinels on
loopback ports; a master (and its workers) configured with REDIS_SENTINELS keeps running while
the sentinels promote the replica (SENTINEL FAILOVER), and finishes every job, those enqueued
before and after the failover."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from master_support import (
    FAULTS_CONFIG,
    MasterStarter,
    enqueue_ledger,
    ledger_counts,
)

from acmeq.config.settings import Settings
from acmeq.queues import Enqueuer
from acmeq.storage.redis_client import connect, find_redis_server

from conftest import fast_client, free_port, wait_for_redis, wait_until

pytestmark = [pytest.mark.chaos]
JOBS = 40


class Cluster:
    def __init__(self, workdir: Path) -> None:
        binary = str(find_redis_server())
        self.procs: list[subprocess.Popen[bytes]] = []
        self.primary, self.replica = free_port(), free_port()
        for port, extra in (
            (self.primary, []),
            (self.replica, ["--replicaof", "127.0.0.1", str(self.primary)]),
        ):
            d = workdir / f"redis-{port}"
            d.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(d),
                        "--appendonly",
                        "yes",
                        "--save",
                        "",
                        *extra,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for_redis(port, self.procs[-1])
        self.sentinels = [free_port() for _ in range(3)]
        for port in self.sentinels:
            conf = workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor queue 127.0.0.1 {self.primary} 2\n"
                "sentinel down-after-milliseconds queue 1000\n"
                "sentinel failover-timeout queue 5000\n"
            )
            self.procs.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_for_redis(port, self.procs[-1])
        wait_until(
            "replica in sync",
            lambda: fast_client(self.replica).info("replication").get("master_link_status") == "up",
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


@pytest.mark.timeout(180)
def test_failover_under_load(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_SENTINELS", ",".join(f"127.0.0.1:{p}" for p in cluster.sentinels))
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "queue")
    monkeypatch.setenv("REDIS_QUEUE_DB", "0")
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "sample_jobs,master_jobs")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    (tmp_path / "acmeq.toml").write_text(FAULTS_CONFIG)
    settings = Settings.load(tmp_path / "acmeq.toml")
    client = connect(settings, start_embedded=False)
    starter = MasterStarter(tmp_path, f"redis://127.0.0.1:{cluster.primary}/0")
    ledger = tmp_path / "ledger.txt"
    try:
        master = starter("storm", "sentinel-host")
        enqueuer = Enqueuer(settings, client)
        enqueue_ledger(enqueuer, ledger, {"notifications": JOBS}, 0.1)
        wait_until("some done", lambda: sum(ledger_counts(ledger).values()) >= 5, timeout=60)
        sentinel = fast_client(cluster.sentinels[0])
        sentinel.execute_command("SENTINEL", "FAILOVER", "queue")
        wait_until(
            "the replica promoted",
            lambda: fast_client(cluster.replica).info("replication")["role"] == "master",
            timeout=60,
        )
        time.sleep(1)
        ledger2 = tmp_path / "ledger-after.txt"
        enqueue_ledger(enqueuer, ledger2, {"notifications": JOBS}, 0.1)
        wait_until(
            "every job done after the failover",
            lambda: (
                sum(ledger_counts(ledger2).values()) >= JOBS
                and sum(ledger_counts(ledger).values()) >= JOBS
            ),
            timeout=120,
        )
        assert master.proc.poll() is None  # the master followed the new primary by itself
        wait_until(
            "the old primary demoted to a replica",
            lambda: fast_client(cluster.primary).info("replication")["role"] == "slave",
            timeout=60,
        )
        assert set(ledger_counts(ledger).values()) == {1}
        assert set(ledger_counts(ledger2).values()) == {1}
        print(
            f"\nchaos sentinel failover: {JOBS} jobs before, {JOBS} after; "
            f"done {len(ledger_counts(ledger))} + {len(ledger_counts(ledger2))}, lost 0"
        )
    finally:
        starter.cleanup()
