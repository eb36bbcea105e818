"""Chaos: SIGTERM to the master under load -> no job lost (finished, or still queued and finished
by the next master). Ledger jobs (tests/master_jobs.py) write a line per completed run."""

from __future__ import annotations

import signal
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
    statuses,
)

from conftest import wait_until

pytestmark = [pytest.mark.chaos]
JOBS = 60


@pytest.fixture
def acmeq_toml(tmp_path: Path) -> Path:
    path = tmp_path / "acmeq.toml"
    path.write_text(FAULTS_CONFIG)
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


@pytest.mark.timeout(180)
def test_sigterm_to_the_master_under_load_loses_no_job(
    starter: MasterStarter, redis_client: redis.Redis, acmeq_toml: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    master = starter("storm", "term-host")
    enqueuer = enqueuer_for(redis_client, acmeq_toml)
    tokens = enqueue_ledger(enqueuer, ledger, {"notifications": JOBS}, 0.3)
    wait_until("some jobs done", lambda: sum(ledger_counts(ledger).values()) >= 5, timeout=60)
    master.signal(signal.SIGTERM)
    code = master.wait(timeout=90)
    done_before = sum(ledger_counts(ledger).values())
    at_stop = statuses(redis_client, list(tokens.values()))
    assert code == 0, master.log()
    assert at_stop.get("started", 0) == 0  # graceful: running jobs finished, none abandoned

    starter("storm", "term-host-2")  # the next master (a restart) serves what was left
    wait_until("every job done", lambda: sum(ledger_counts(ledger).values()) >= JOBS, timeout=120)
    time.sleep(0.5)
    assert_every_job_completed(redis_client, ledger, tokens)
    runs = ledger_counts(ledger)
    duplicates = sum(n - 1 for n in runs.values() if n > 1)
    print(
        f"\nchaos SIGTERM: enqueued {JOBS}, done before the stop {done_before}, "
        f"queued at the stop {at_stop.get('queued', 0)}, processed {len(runs)}, "
        f"run twice {duplicates}, lost {JOBS - len(runs)}"
    )
    assert len(runs) == JOBS and duplicates == 0
