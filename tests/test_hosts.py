"""Several hosts: two masters (different --hostname, as on two machines) sharing one Redis.

Both appear in `acmeq worker list` and `acmeq status`; losing one master's host (kill -9 of the
master, its workers follow by PR_SET_PDEATHSIG) changes nothing of the other master: same worker
pids, same pool sizes, and it keeps serving the shared queue.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from master_support import (
    FAULTS_CONFIG,
    MasterStarter,
    alive,
    assert_every_job_completed,
    enqueue_ledger,
    enqueuer_for,
    ledger_counts,
)

from conftest import run_cli, wait_until

CONFIG = (
    FAULTS_CONFIG
    + """
[profiles.host.supervisors.main]
queues = ["notifications"]
balance = "off"
min_processes = 2
max_processes = 2
mode = "inline"
"""
)


@pytest.fixture
def acmeq_toml(tmp_path: Path) -> Path:
    path = tmp_path / "acmeq.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def starter(
    redis_url: str,
    job_modules: str,
    acmeq_toml: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MasterStarter]:
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "sample_jobs,master_jobs")
    start = MasterStarter(tmp_path, redis_url)
    yield start
    start.cleanup()


def cli_json(*args: str) -> Any:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def masters_listed() -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in cli_json("worker", "list", "--json")}


def test_two_hosts_share_one_redis_and_fail_independently(
    starter: MasterStarter, redis_client: redis.Redis, acmeq_toml: Path, tmp_path: Path
) -> None:
    a = starter("host", "host-a")
    b = starter("host", "host-b")
    wait_until("two workers per master", lambda: len(a.workers()) == 2 and len(b.workers()) == 2)

    listed = masters_listed()
    assert {"host-a", "host-b"} <= set(listed)
    for name, master in (("host-a", a), ("host-b", b)):
        assert listed[name]["hostname"] == name
        assert listed[name]["pid"] == master.pid
        assert listed[name]["status"] == "running"
    wait_until(
        "both masters publish their two processes",
        lambda: all(len(m["processes"]) == 2 for m in masters_listed().values()),
    )
    status = cli_json("status", "--json")
    shown = {m["name"]: m for m in status["masters"]}
    assert {"host-a", "host-b"} <= set(shown)
    assert shown["host-a"]["processes_total"] == shown["host-b"]["processes_total"] == 2
    text = run_cli("status")
    assert "host-a" in text.stdout and "host-b" in text.stdout

    # Jobs on the shared queue are served by both hosts.
    ledger = tmp_path / "ledger.txt"
    enqueuer = enqueuer_for(redis_client, acmeq_toml)
    tokens = enqueue_ledger(enqueuer, ledger, {"notifications": 40}, 0.02)
    wait_until("first batch done", lambda: sum(ledger_counts(ledger).values()) >= 40)

    b_pids = sorted(p.pid for p in b.workers())
    a_workers = a.workers()
    a.signal(signal.SIGKILL)  # host-a is lost
    a.wait(timeout=30)
    wait_until("host-a's workers follow their master", lambda: not any(map(alive, a_workers)))

    # More work while host-a is down: host-b serves it all.
    ledger2 = tmp_path / "ledger-after.txt"
    tokens2 = enqueue_ledger(enqueuer, ledger2, {"notifications": 40}, 0.02)
    wait_until(
        "host-a shown as gone",
        lambda: masters_listed()["host-a"]["status"] == "gone",
        timeout=60,
    )
    wait_until("every job done", lambda: sum(ledger_counts(ledger2).values()) >= 40, timeout=60)
    assert_every_job_completed(redis_client, ledger, tokens)
    assert_every_job_completed(redis_client, ledger2, tokens2)

    # host-b was not touched: same processes, same pool, still running.
    after = masters_listed()["host-b"]
    assert after["status"] == "running"
    assert sorted(p.pid for p in b.workers()) == b_pids
    assert sorted(p["pid"] for p in after["processes"]) == b_pids
    pools = [p for s in after["supervisors"] for p in s["pools"]]
    assert [p["desired"] for p in pools] == [2]
    time.sleep(0.1)
    assert b.proc.poll() is None
