"""The master under faults, as a real process tree: Redis outages, hung workers, kill storms, its
own bugs, a master killed and replaced, and what it leaves behind (Redis outages:
tests/test_master_outage.py).

Jobs write a ledger line per run (tests/master_jobs.py), so "nothing lost" is checked twice: every
job's status is ``finished`` and every token is in the ledger (duplicates, the at-least-once
price of a crash, are counted and printed, never required to be zero).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import redis
from master_support import (
    FAULTS_CONFIG,
    MasterProcess,
    MasterStarter,
    alive,
    assert_every_job_completed,
    enqueue_ledger,
    enqueuer_for,
    live_workers,
    statuses,
)
from rq.job import JobStatus

from acmeq.config.settings import Settings
from acmeq.queues import AcmeqJob, JobCall

from conftest import run_cli, wait_until


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


# -- hung workers ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_worker_that_blocks_forever_outside_a_job_is_killed_through_its_heartbeat_file(
    start_master: MasterStarter, redis_client: redis.Redis, acmeq_toml: Path
) -> None:
    # Given a master with one idle inline worker and a hung timeout of 3 s
    master = start_master("single", "hung-host", args=("--hung-timeout", "3"))
    wait_until("one worker", lambda: len(redis_client.smembers("rq:workers")) == 1, timeout=60)
    (worker,) = live_workers(master)
    wait_until(  # the worker took over its heartbeat file from the master's boot grace
        "the worker's first heartbeat",
        lambda: _heartbeat_age(master) is not None and _heartbeat_age(master) >= 0,  # type: ignore[operator]
        timeout=60,
    )

    # When the worker stops dead outside any job (SIGSTOP: no Python code runs, nothing in Redis)
    worker.send_signal(signal.SIGSTOP)

    # Then the master kills it after the hung timeout and starts a replacement
    wait_until("the hung worker killed", lambda: not alive(worker), timeout=30)
    assert "is hung: no heartbeat for over 3 s; killing it" in master.log()
    wait_until(
        "a replacement",
        lambda: [w.pid for w in live_workers(master)] not in ([], [worker.pid]),
        timeout=60,
    )
    # and the pool serves jobs again
    job = enqueuer_for(redis_client, acmeq_toml).enqueue("noop").id
    wait_until(
        "the next job to finish",
        lambda: AcmeqJob.fetch(job, connection=redis_client).get_status() == JobStatus.FINISHED,
        timeout=60,
    )


def _heartbeat_age(master: MasterProcess) -> float | None:
    """Seconds since the mtime of the (only) worker's heartbeat file; negative: in the future."""
    for run_dir in Path(tempfile.gettempdir()).glob(f"acmeq-master-{master.pid}-*"):
        for beat in run_dir.glob("heartbeat-*"):
            return time.time() - beat.stat().st_mtime
    return None


# -- the master's own bugs -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_exception_in_the_master_loop_stops_workers_gracefully_with_a_named_status(
    start_master: MasterStarter, redis_client: redis.Redis, acmeq_toml: Path, tmp_path: Path
) -> None:
    # Given a master whose loop raises once a file appears (a test-only hook)
    trigger = tmp_path / "fail-now"
    master = start_master("single", "buggy-host", env={"ACMEQ_TEST_MASTER_FAIL_FILE": str(trigger)})
    wait_until("one worker", lambda: len(redis_client.smembers("rq:workers")) == 1, timeout=60)
    tree = master.tree()
    # and a 2-second job running
    ledger = tmp_path / "ledger.txt"
    job = enqueuer_for(redis_client, acmeq_toml).enqueue("ledger_inline", str(ledger), "j", 2.0).id
    wait_until("the job running", lambda: redis_client.zcard("rq:wip:notifications") == 1)

    # When the loop raises
    trigger.touch()

    # Then the master exits with INTERNAL_ERROR (70), not a bare 1, after a graceful stop: the
    # running job finished, the traceback is in the log, no worker is left
    assert master.wait(60) == 70
    log = master.log()
    assert "internal error in the master's loop" in log and "Traceback" in log
    assert "RuntimeError: injected failure" in log
    assert "exits with status 70 (INTERNAL_ERROR)" in log
    assert AcmeqJob.fetch(job, connection=redis_client).get_status() == JobStatus.FINISHED
    assert [p.pid for p in tree if alive(p)] == []
    assert not list(Path(tempfile.gettempdir()).glob(f"acmeq-master-{master.pid}-*"))


# -- kill storms -----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_kill_storm_loses_no_job_and_never_empties_the_pool_for_long(
    start_master: MasterStarter, redis_client: redis.Redis, acmeq_toml: Path, tmp_path: Path
) -> None:
    # Given a pool of 2 inline workers (minimum 2) and 400 jobs of 40 ms
    master = start_master("storm", "storm-host")
    wait_until("two workers", lambda: len(redis_client.smembers("rq:workers")) == 2, timeout=60)
    ledger = tmp_path / "ledger.txt"
    tokens = enqueue_ledger(
        enqueuer_for(redis_client, acmeq_toml), ledger, {"notifications": 400}, 0.04
    )

    # When for 15 s a random worker is killed with SIGKILL every 0.3 s
    rng = random.Random(9)
    kills, empty_since, longest_empty = 0, None, 0.0
    end = time.monotonic() + 15
    while time.monotonic() < end:
        workers = live_workers(master)
        now = time.monotonic()
        if workers:
            if empty_since is not None:
                longest_empty = max(longest_empty, now - empty_since)
            empty_since = None
            victim = rng.choice(workers)
            with_suppressed_kill(victim)
            kills += 1
        elif empty_since is None:
            empty_since = now
        time.sleep(0.3)
    print(f"{kills} kills; the pool was empty for at most {longest_empty:.1f} s at a time")

    # Then every job completes (the ledger proves it), the master lives on
    wait_until(
        "every job finished after the storm",
        lambda: statuses(redis_client, list(tokens.values()))["finished"] == len(tokens),
        timeout=90,
        every=0.5,
    )
    assert_every_job_completed(redis_client, ledger, tokens)
    assert master.proc.poll() is None
    # and the crash backoff never left the pool empty for long (a worker takes ~1 s to boot)
    assert longest_empty < 6.0
    wait_until("two workers again", lambda: len(live_workers(master)) == 2, timeout=30)


def with_suppressed_kill(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        proc.kill()


# -- a master killed and replaced ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_replacement_master_takes_over_scheduling_from_a_killed_one_promptly(
    start_master: MasterStarter, redis_client: redis.Redis, acmeq_toml: Path
) -> None:
    # Given master A scheduling the reports queue
    first = start_master("sched", "sched-a")
    lock = "rq:scheduler-lock:reports"
    wait_until("A to hold the scheduler lock", lambda: redis_client.get(lock) == b"acmeq-sched-a")

    # When A is killed with SIGKILL and B, under another name, starts
    first.signal(signal.SIGKILL)
    first.wait(10)
    killed = time.monotonic()
    second = start_master("sched", "sched-b")
    # and a job is due 2.5 s later
    job = (
        enqueuer_for(redis_client, acmeq_toml)
        .enqueue_call(JobCall("sleep_for", (0.01,), delay=timedelta(seconds=2.5)))
        .id
    )

    # Then B takes the lock once A's heartbeat is gone (15 s), not when RQ's lock expires (61 s),
    # and the job runs
    wait_until(
        "the delayed job to finish",
        lambda: AcmeqJob.fetch(job, connection=redis_client).get_status() == JobStatus.FINISHED,
        timeout=45,
    )
    print(f"delayed job done {time.monotonic() - killed:.1f} s after A was killed")
    assert redis_client.get(lock) == b"acmeq-sched-b"
    assert "master sched-a is gone: taking over its scheduler lock of reports" in second.log()


# -- leaving nothing behind ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_scale_explain_leaves_no_temporary_directory(
    redis_url: str, acmeq_toml: Path, tmp_path: Path
) -> None:
    # Given an empty temporary directory and no master running
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # When `acmeq worker scale --explain` shows what a master would decide
    result = run_cli(
        "worker", "scale", "--explain", "--profile", "outage", env={"TMPDIR": str(scratch)}
    )
    # Then it answers and leaves nothing in the temporary directory
    assert result.returncode == 0, result.stderr
    assert "notifications" in result.stdout
    assert list(scratch.iterdir()) == []


@pytest.mark.timeout(90)
def test_a_master_started_in_the_background_from_python_reports_its_exit_status(
    redis_url: str, acmeq_toml: Path, tmp_path: Path
) -> None:
    from acmeq.supervisor import MasterOptions, start_detached

    # Given the Python API and an empty queue
    settings = Settings.load(acmeq_toml)
    opts = MasterOptions(profile="single", name="py-detached", burst=True, log_level="INFO")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    # When a burst master is started in the background
    master = start_detached(settings, opts, log_file=tmp_path / "m.log", environ=env)
    # Then it runs detached (its own session), stops once the queue is drained, and says so
    assert os.getsid(master.pid) != os.getsid(0)
    assert master.wait(timeout=60) == 0
    assert "exits with status 0 (OK)" in (tmp_path / "m.log").read_text()
    assert not list(tmp_path.glob("acmeq-master-*"))
    assert not (settings.state_dir / "run" / "master-py-detached.pid").exists()


# -- jobs of workers that died with their master ---------------------------------------------------


@pytest.mark.timeout(60)
def test_jobs_of_a_worker_that_stopped_heartbeating_are_recovered_whatever_their_timeout(
    redis_client: redis.Redis, acmeq_toml: Path
) -> None:
    from acmeq.worker.recovery import HEARTBEAT_LOST_S, recover_lost_workers

    # Given two jobs with an hour's timeout, started by workers that no master watches any more:
    # one last heartbeated 2 minutes ago (it died with its master), one 5 s ago (still alive).
    enqueuer = enqueuer_for(redis_client, acmeq_toml)
    dead = enqueuer.enqueue_call(JobCall("sleep_for", (1,))).id
    live = enqueuer.enqueue_call(JobCall("sleep_for", (1,))).id
    now = time.time()
    for job_id, worker, beat in (
        (dead, "gone-host.w.1", now - 120),
        (live, "far-host.w.2", now - 5),
    ):
        composite = f"{job_id}:exec-{worker}"
        redis_client.lrem("rq:queue:reports", 1, job_id)
        redis_client.hset(f"rq:job:{job_id}", mapping={"status": "started", "worker_name": worker})
        redis_client.zadd("rq:wip:reports", {composite: now + 3600 + 60})  # RQ: in an hour
        redis_client.hset(
            f"rq:execution:{composite}",
            mapping={"worker_name": worker, "last_heartbeat": beat, "job_id": job_id},
        )

    # When the master's maintenance looks for lost workers
    recovered = recover_lost_workers(redis_client, "reports", alive=set())

    # Then the dead worker's job is retried now, not in an hour; the live one is left alone
    assert HEARTBEAT_LOST_S <= 60
    assert recovered == [dead]
    assert AcmeqJob.fetch(dead, connection=redis_client).get_status() == JobStatus.QUEUED
    assert AcmeqJob.fetch(live, connection=redis_client).get_status() == JobStatus.STARTED
    assert [m.decode().split(":")[0] for m in redis_client.zrange("rq:wip:reports", 0, -1)] == [
        live
    ]
    # and a worker the master knows to be alive is not judged dead by its Redis heartbeat
    assert recover_lost_workers(redis_client, "reports", alive={"far-host.w.2"}, lost_after=1) == []
    # but an execution it has stopped heartbeating (it lost track of the job: the reply to its
    # start script was lost with the connection) is recovered, and the worker stays registered
    redis_client.sadd("rq:workers", "rq:worker:far-host.w.2")
    orphans = recover_lost_workers(
        redis_client, "reports", alive={"far-host.w.2"}, orphaned_after=1
    )
    assert orphans == [live]
    assert AcmeqJob.fetch(live, connection=redis_client).get_status() == JobStatus.QUEUED
    assert redis_client.sismember("rq:workers", "rq:worker:far-host.w.2")


@pytest.mark.timeout(90)
def test_a_fast_stop_of_idle_workers_logs_no_error(
    start_master: MasterStarter, redis_client: redis.Redis
) -> None:
    # Given a master with an idle worker per execution model
    master = start_master("outage", "idle-host")
    wait_until("three workers", lambda: len(redis_client.smembers("rq:workers")) == 3, timeout=60)
    # When it is stopped fast (Ctrl-C)
    master.signal(signal.SIGINT)
    # Then it exits 0 and no worker's end is reported as an error (they stopped as asked)
    assert master.wait(30) == 0
    errors = [
        line for line in master.log().splitlines() if "acmeq.master[" in line and " ERROR " in line
    ]
    assert errors == []
    assert "died" not in master.log()
