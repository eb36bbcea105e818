"""Job progress (issue #5): trackers in real jobs, live updates, watch, cancellation, access.

Jobs that track progress (tests/sample_jobs.py, ``progress_*``) run in real worker processes
(``python -m acmeq.worker``) against the private redis-server and the test database (SQLite, and
PostgreSQL when ACMEQ_TEST_DATABASE_URL is set); the CLI runs as a real subprocess. The ETA
estimator's arithmetic is checked on its own with a synthetic clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from rich.console import Console
from sqlalchemy.engine import Engine

from acmeq import progress
from acmeq.commands import common
from acmeq.commands.progress import watch_jobs
from acmeq.config.settings import Settings
from acmeq.progress import JobCancelled, RateEstimator, track
from acmeq.queues import AcmeqJob, Enqueuer
from acmeq.storage import sql as db
from acmeq.storage.models import JobStatus, User, UserRole
from acmeq.tracking import store
from acmeq.tracking.store import ProgressRecord
from acmeq.worker.process import WorkerOptions
from acmeq.worker.recovery import recover_dead_worker

from conftest import run_cli, wait_until

TESTS = Path(__file__).resolve().parent
MODES = ["inline", "threads", "fork"]


# -- helpers -------------------------------------------------------------------------------------


class Worker:
    """A worker process started the way a supervisor starts one."""

    def __init__(self, opts: WorkerOptions, stderr_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        self.opts = opts
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "acmeq.worker", opts.to_json()],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    @property
    def name(self) -> str:
        return f"{self.opts.name}.{self.proc.pid}"

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


StartWorker = Callable[..., Worker]


@pytest.fixture(autouse=True)
def _no_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACMEQ_USER", raising=False)


@pytest.fixture
def progress_db(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """The migrated test database, also configured (DATABASE_URL) for workers and the CLI."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    common.state._settings = None
    yield engine
    common.state._settings = None
    db.dispose_engines()


@pytest.fixture
def settings(redis_url: str, job_modules: str, progress_db: Engine) -> Settings:
    return Settings.load()


@pytest.fixture
def enqueuer(settings: Settings, redis_client: redis.Redis) -> Enqueuer:
    return Enqueuer(settings, redis_client)


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[Worker] = []

    def start(queue: str, mode: str = "inline", **kwargs: Any) -> Worker:
        opts = WorkerOptions(
            queue=queue,
            mode=mode,
            concurrency=4 if mode == "threads" else 1,
            name="t",
            **kwargs,
        )
        worker = Worker(opts, tmp_path / f"worker-{len(started)}.err")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            with contextlib.suppress(Exception):
                for child in psutil.Process(worker.proc.pid).children(True):
                    child.kill()
            worker.proc.kill()
            worker.proc.wait(10)


def record(engine: Engine, job_id: str) -> ProgressRecord | None:
    return store.get(engine, job_id)


def processed_at_least(engine: Engine, job_id: str, n: int) -> ProgressRecord | None:
    found = store.get(engine, job_id)
    return found if found is not None and found.processed >= n else None


def rq_status(client: redis.Redis, job_id: str) -> str:
    return str(AcmeqJob.fetch(job_id, connection=client).get_status().value)


def drain(pubsub: Any, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every message the subscription holds, until it is quiet for ``quiet`` seconds."""
    messages = []
    while True:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=quiet)
        if message is None:
            return messages
        messages.append(json.loads(message["data"]))


def add_user(engine: Engine, email: str, role: UserRole = UserRole.EMPLOYEE) -> int:
    with db.session(engine) as s:
        user = User(email=email, name=email.split("@")[0], role=role)
        s.add(user)
        s.flush()
        assert user.id is not None
        return user.id


def saved(engine: Engine, job_id: str, user_id: int | None, status: JobStatus) -> None:
    now = datetime.now(UTC)
    store.save(
        engine,
        ProgressRecord(
            id=job_id,
            job_name="export_donations",
            queue="exports",
            status=status,
            user_id=user_id,
            total=100,
            processed=40,
            started_at=now - timedelta(seconds=4),
            updated_at=now,
            finished_at=now if status.finished else None,
            eta_at=now + timedelta(seconds=6) if not status.finished else None,
        ),
    )


# -- 1. the ETA: an exponentially smoothed rate --------------------------------------------------


def test_the_eta_converges_on_a_steady_job() -> None:
    # Given a job doing 100 items/s, reported every ~0.5 s with some jitter in the intervals
    estimator = RateEstimator(tau=10.0)
    t, done, total = 0.0, 0, 10_000
    estimator.update(0, t)
    for i in range(60):
        t += 0.5 + (0.1 if i % 3 == 0 else -0.05)
        done = int(t * 100)
        estimator.update(done, t)

    # Then the rate is the job's rate, and the ETA is when the job will really be done
    assert estimator.rate == pytest.approx(100, rel=0.01)
    eta = estimator.eta_seconds(total - done)
    assert eta is not None
    assert t + eta == pytest.approx(total / 100, rel=0.01)


def test_the_rate_follows_a_change_of_speed_unlike_the_average() -> None:
    # Given a job that ran at 100 items/s for a minute, then slowed down to 25 items/s
    estimator = RateEstimator(tau=10.0)
    t, done = 0.0, 0
    estimator.update(0, t)
    for _ in range(120):
        t, done = t + 0.5, done + 50
        estimator.update(done, t)
    for _ in range(80):  # 40 s = 4 time constants at the new speed
        t, done = t + 0.5, done + 12
        estimator.update(done, t)

    # Then the smoothed rate is within 10 % of the new speed, where the naive average since the
    # start (~70 items/s) is still almost three times too fast
    assert estimator.rate == pytest.approx(24, rel=0.10)
    assert done / t > 2.5 * estimator.rate


def test_an_estimator_without_progress_gives_no_eta() -> None:
    estimator = RateEstimator()
    assert estimator.eta_seconds(10) is None
    estimator.update(0, 0.0)
    estimator.update(0, 1.0)
    assert estimator.rate == 0
    assert estimator.eta_seconds(10) is None


# -- 2. the tracker in-process: throttling, final state, helpers -----------------------------------


def test_a_fast_job_writes_at_most_twice_a_second_and_always_its_end(
    settings: Settings, progress_db: Engine, redis_client: redis.Redis
) -> None:
    # Given a subscriber on the job's channel
    pubsub = redis_client.pubsub()
    pubsub.subscribe(progress.channel("fast-1"))
    pubsub.get_message(timeout=1)

    # When a job advances as fast as it can for about 1.5 s
    started = time.monotonic()
    with track(total=0, job_id="fast-1", settings=settings) as p:
        while time.monotonic() - started < 1.5:
            for _ in range(1000):
                p.advance()
        p.set_total(p.processed)
    took = time.monotonic() - started

    # Then it published its start, at most ~2 updates per second, and its end
    messages = drain(pubsub)
    assert 2 <= len(messages) <= 2 + 2 * took + 1
    assert messages[0]["status"] == "running"
    assert messages[-1]["status"] == "completed"
    assert messages[-1]["processed"] == p.processed > 10_000
    # and the row holds the same final state
    final = record(progress_db, "fast-1")
    assert final is not None
    assert final.status is JobStatus.COMPLETED
    assert final.processed == final.total == p.processed
    assert final.percent == 100
    assert final.finished_at is not None and final.eta_at is None


def test_the_final_state_is_written_when_the_job_raises(
    settings: Settings, progress_db: Engine
) -> None:
    # When a tracked block raises after some items, two of them failed
    with (
        pytest.raises(ZeroDivisionError),
        track(total=10, job_id="raise-1", settings=settings) as p,
    ):
        p.advance(3)
        p.fail_item("row 4: bad IBAN")
        p.fail_item("row 5: bad IBAN")
        p.message("halfway")
        _ = 1 / 0

    # Then the record is failed, names the exception and keeps the counts and item failures
    final = record(progress_db, "raise-1")
    assert final is not None
    assert final.status is JobStatus.FAILED
    assert final.message == "ZeroDivisionError: division by zero"
    assert (final.processed, final.failed, final.total) == (5, 2, 10)
    assert final.errors == ("row 4: bad IBAN", "row 5: bad IBAN")


def test_batches_count_what_each_batch_processed(settings: Settings, progress_db: Engine) -> None:
    # Given 25 donations in batches of 10, of which the job rejects one in the second batch
    donations = list(range(25))
    with track(job_id="batch-1", settings=settings, meta={"campaign": 7}) as p:
        seen = []
        for batch in p.batches(donations, 10):
            seen.append(len(batch))
            if 13 in batch:
                p.fail_item("donation 13: refunded meanwhile")
        # Then the total comes from the list and the counts add up without double counting
        assert p.total == 25
    assert seen == [10, 10, 5]
    final = record(progress_db, "batch-1")
    assert final is not None
    assert (final.processed, final.failed, final.total) == (25, 1, 25)
    assert final.meta == {"campaign": 7}


def test_meta_must_be_json_safe_and_leave_the_reserved_key_alone(settings: Settings) -> None:
    from acmeq.errors import UsageError

    with pytest.raises(UsageError, match="JSON-safe"):
        track(meta={"when": datetime.now(UTC)}, settings=settings)
    with pytest.raises(UsageError, match="'acmeq' is reserved"):
        track(meta={"acmeq": 1}, settings=settings)


# -- 3. real jobs in real workers ------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_in_a_real_worker_reports_progress_live_and_in_sql(
    mode: str,
    start_worker: StartWorker,
    enqueuer: Enqueuer,
    progress_db: Engine,
    redis_client: redis.Redis,
) -> None:
    # Given a subscriber to every job's progress and a steady job of 60 items at ~20 items/s,
    # every 10th of which fails, owned by user 42
    pubsub = redis_client.pubsub()
    pubsub.subscribe(progress.PROGRESS_CHANNEL)
    pubsub.get_message(timeout=1)
    job = enqueuer.enqueue("progress_count", 60, delay=0.05, fail_every=10, user_id=42)

    # When a worker runs it
    worker = start_worker("bulk", mode, burst=True)
    assert worker.wait(60) == 0, worker.stderr()

    # Then watchers saw it start, move forward and complete
    messages = [m for m in drain(pubsub) if m["id"] == job.id]
    statuses = [m["status"] for m in messages]
    assert statuses[0] == "running" and statuses[-1] == "completed"
    assert set(statuses[1:-1]) == {"running"}
    counts = [m["processed"] for m in messages]
    assert counts == sorted(counts) and len(set(counts)) >= 4
    # and while it ran, its ETA pointed at when it really finished (a steady job)
    last = messages[-1]
    finished = datetime.fromisoformat(last["finished_at"])
    late = [m for m in messages if m["status"] == "running" and m["processed"] >= 20]
    assert late, messages
    for m in late:
        assert abs((datetime.fromisoformat(m["eta_at"]) - finished).total_seconds()) < 1.0
        assert m["rate"] == pytest.approx(20, rel=0.35)
    # and the SQL record holds the whole story
    final = record(progress_db, job.id)
    assert final is not None
    assert final.as_dict() | {"rate": None} == last | {"rate": None}
    assert (final.job_name, final.queue, final.user_id) == ("progress_count", "bulk", 42)
    assert (final.processed, final.failed, final.total) == (60, 6, 60)
    assert final.message == "counted"
    assert final.meta == {"n": 60}
    assert final.errors[-1] == "item 60 is odd one out"
    assert final.started_at is not None and final.finished_at is not None


@pytest.mark.timeout(60)
def test_a_failing_tracked_job_ends_failed_or_pending_when_it_will_be_retried(
    start_worker: StartWorker, enqueuer: Enqueuer, progress_db: Engine
) -> None:
    # Given a job without retries that fails and one on exports (2 tries) that fails
    final_failure = enqueuer.enqueue("progress_then_fail", 5)
    retried = enqueuer.enqueue("progress_fail_with_retry", 3)

    # When workers run them
    for queue in ("bulk", "exports"):
        worker = start_worker(queue, burst=True)
        assert worker.wait(30) == 0, worker.stderr()

    # Then the first is failed, naming the exception, with what it had done
    failed = record(progress_db, final_failure.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.message == "RuntimeError: ledger mismatch"
    assert (failed.processed, failed.total) == (5, 10)
    # and the second is pending again: RQ retries it, the job is not over
    again = record(progress_db, retried.id)
    assert again is not None
    assert again.status is JobStatus.PENDING
    assert again.message == "attempt failed (RuntimeError: temporary outage); retry scheduled"


# -- 4. watching ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_progress_watch_shows_bars_and_ends_with_the_job(
    start_worker: StartWorker, enqueuer: Enqueuer, progress_db: Engine
) -> None:
    # Given a job of 40 items running in a worker
    job = enqueuer.enqueue("progress_count", 40, delay=0.05)
    worker = start_worker("bulk", burst=True)
    wait_until("the job started", lambda: record(progress_db, job.id))

    # When an operator watches it (output captured: no terminal, 120 columns)
    result = run_cli("progress", "watch", job.id)

    # Then the watch ends with the job, exit 0, with a line for its end and the final table
    assert result.returncode == 0, result.stderr
    assert worker.wait(30) == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"job {job.id} (progress_count) completed: 40/40 items, 0 failed")
    table = "\n".join(lines[1:])
    assert "━" * 20 in table  # a full bar
    assert "100%" in table and "40/40" in table and "completed" in table
    assert "1 job: 1 completed" in table


@pytest.mark.timeout(90)
def test_the_live_view_redraws_bars_until_every_watched_job_ended(
    start_worker: StartWorker,
    enqueuer: Enqueuer,
    settings: Settings,
    progress_db: Engine,
    redis_client: redis.Redis,
) -> None:
    # Given two jobs on bulk, the second one failing; the first holds at 13/30 until the
    # live view has drawn it running there (so a loaded machine cannot skip that frame)
    ok = enqueuer.enqueue("progress_gated", "live", 30, 13)
    bad = enqueuer.enqueue("progress_then_fail", 3)

    class Screen(StringIO):
        def write(self, text: str) -> int:
            written = super().write(text)
            if "13/30" in self.getvalue() and "running" in self.getvalue():
                redis_client.set("test:gate:live", 1)
            return written

    # When both are watched on a (fake) 110-column terminal while a worker runs them
    out = Screen()
    terminal = Console(file=out, width=110, force_terminal=True, color_system=None)
    start_worker("bulk", burst=True)
    code = watch_jobs(settings, [ok.id, bad.id], out=terminal, poll_interval=0.5)

    # Then the live table showed partial bars on the way and ended with both outcomes: exit 1
    assert code == 1
    screen = out.getvalue()
    assert "running" in screen and "13/30" in screen  # a bar drawn while in progress
    assert f"job {bad.id} (progress_then_fail) failed: 3/6 items, 0 failed" in screen
    assert "RuntimeError: ledger mismatch" in screen  # a lasting line for each end
    assert f"job {ok.id} (progress_gated) completed: 30/30 items" in screen
    final = screen.rsplit("job id", 1)[1]
    assert "completed" in final and "failed" in final and "100%" in final
    assert "2 jobs: 1 completed, 1 failed" in final


@pytest.mark.timeout(90)
def test_enqueue_watch_follows_the_job_it_enqueued(
    start_worker: StartWorker, progress_db: Engine
) -> None:
    # Given a worker serving bulk
    worker = start_worker("bulk")

    # When an engineer enqueues a failing job with --watch, and then a good one with --json
    failing = run_cli("enqueue", "progress_then_fail", "--arg", "n=2", "--watch")
    good = run_cli("enqueue", "progress_count", "--arg", "n=10", "--watch", "--json")

    # Then each command follows its job to the end and exits with its outcome
    assert failing.returncode == 1, failing.stderr
    assert "enqueued progress_then_fail on bulk as" in failing.stdout
    assert "failed: 2/4 items" in failing.stdout
    assert good.returncode == 0, good.stderr
    lines = [json.loads(line) for line in good.stdout.splitlines()]
    assert lines[0]["job"] == "progress_count" and lines[0]["queue"] == "bulk"
    assert lines[-1]["id"] == lines[0]["id"]
    assert lines[-1]["status"] == "completed" and lines[-1]["processed"] == 10
    worker.proc.terminate()
    assert worker.wait(30) == 0


@pytest.mark.timeout(60)
def test_watching_with_nothing_running_ends_at_once(progress_db: Engine, redis_url: str) -> None:
    saved(progress_db, "old-1", None, JobStatus.COMPLETED)
    result = run_cli("progress", "watch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no running jobs"


# -- 5. cancellation -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_cancelling_a_running_job_stops_it_at_a_checkpoint_after_its_cleanup(
    mode: str,
    start_worker: StartWorker,
    enqueuer: Enqueuer,
    progress_db: Engine,
    redis_client: redis.Redis,
) -> None:
    # Given a job on reports (3 tries) writing partial output, item by item, in a worker
    key = f"cancel-{mode}"
    job = enqueuer.enqueue("progress_cancellable", key, 2000, 0.01)
    worker = start_worker("reports", mode, burst=True)
    wait_until("some items done", lambda: processed_at_least(progress_db, job.id, 20))

    # When an operator cancels it
    result = run_cli("job", "cancel", job.id)

    # Then it stopped at its next checkpoint, well before its end
    assert result.returncode == 0, result.stderr
    assert f"job {job.id} cancelled at a checkpoint after" in result.stdout
    assert worker.wait(30) == 0, worker.stderr()
    final = record(progress_db, job.id)
    assert final is not None
    assert final.status is JobStatus.CANCELLED
    assert final.message == "cancelled by operator"
    assert 20 <= final.processed < 2000
    # and its cleanup removed the partial output
    assert not redis_client.exists(f"test:partial:{key}")
    assert redis_client.get(f"test:cleanup:{key}") is not None
    # and RQ holds it as canceled, not failed and not scheduled for a retry
    assert rq_status(redis_client, job.id) == "canceled"
    assert redis_client.zscore("rq:scheduled:reports", job.id) is None
    assert redis_client.zscore("rq:failed:reports", job.id) is None
    assert redis_client.llen(f"test:runs:{key}") == 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_that_reaches_no_checkpoint_is_stopped_after_the_grace_period(
    mode: str,
    start_worker: StartWorker,
    enqueuer: Enqueuer,
    progress_db: Engine,
    redis_client: redis.Redis,
) -> None:
    # Given a tracked job stuck in a computation that never reaches a checkpoint
    key = f"stuck-{mode}"
    job = enqueuer.enqueue("progress_stuck", key)
    after = enqueuer.enqueue("sleep_for", 0)
    worker = start_worker("reports", mode, burst=True)
    wait_until("the job started", lambda: record(progress_db, job.id))

    # When it is cancelled with a 1 s grace period
    result = run_cli("job", "cancel", job.id, "--grace", "1")

    # Then it is stopped by force once the grace period is over
    assert result.returncode == 0, result.stderr
    assert f"job {job.id} stopped after the 1 s grace period" in result.stdout
    final = record(progress_db, job.id)
    assert final is not None
    assert final.status is JobStatus.CANCELLED
    assert final.message == "cancelled by operator (stopped after the grace period)"
    # and the worker goes on with the next job, and never runs the stopped one again
    assert worker.wait(30) == 0, worker.stderr()
    assert rq_status(redis_client, after.id) == "finished"
    assert rq_status(redis_client, job.id) == "canceled"
    assert redis_client.llen(f"test:runs:{key}") == 1


@pytest.mark.timeout(60)
def test_a_queued_job_is_taken_off_its_queue(
    enqueuer: Enqueuer, settings: Settings, progress_db: Engine, redis_client: redis.Redis
) -> None:
    # Given a tracked job whose pending record was created at enqueue, still in the queue
    job = enqueuer.enqueue("progress_count", 10)
    progress.create_pending(settings, job.id, "progress_count", "bulk", user_id=3, total=10)

    # When it is cancelled (as JSON)
    result = run_cli("job", "cancel", job.id, "--json")

    # Then it leaves the queue without running, and its progress says so
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert (outcome["how"], outcome["status"], outcome["rq_status"]) == (
        "dequeued",
        "cancelled",
        "canceled",
    )
    assert redis_client.llen("rq:queue:bulk") == 0
    assert rq_status(redis_client, job.id) == "canceled"
    final = record(progress_db, job.id)
    assert final is not None and final.status is JobStatus.CANCELLED
    assert final.message == "cancelled by operator before it ran"
    # and cancelling it again says so, while an ended job cannot be cancelled
    again = run_cli("job", "cancel", job.id)
    assert again.returncode == 0 and f"job {job.id} was already cancelled" in again.stdout
    saved(progress_db, "done-1", None, JobStatus.COMPLETED)
    ended = run_cli("job", "cancel", "done-1")
    assert ended.returncode == 1
    assert ended.stderr.strip() == (
        "acmeq: error: job 'done-1' already ended (completed); nothing to cancel"
    )


@pytest.mark.timeout(60)
def test_a_running_job_without_tracking_is_stopped_by_its_worker_after_the_grace_period(
    start_worker: StartWorker, enqueuer: Enqueuer, progress_db: Engine, redis_client: redis.Redis
) -> None:
    # Given a job that does not track progress, running (a loop of short sleeps, on bulk)
    job = enqueuer.enqueue("nap", 20)
    start_worker("bulk")
    wait_until("the job runs", lambda: rq_status(redis_client, job.id) == "started")

    # When it is cancelled with a short grace period
    result = run_cli("job", "cancel", job.id, "--grace", "0.5")

    # Then its worker stops it by force once the grace period is over, and it is not retried
    assert result.returncode == 0, result.stderr
    wait_until(
        "the job leaves the started state",
        lambda: rq_status(redis_client, job.id) not in ("started", "queued", "scheduled"),
    )
    assert rq_status(redis_client, job.id) in ("canceled", "failed", "stopped")
    assert redis_client.zscore("rq:scheduled:bulk", job.id) is None


def test_stop_requested_names_the_jobs_past_their_grace_period(redis_client: redis.Redis) -> None:
    progress.request_cancel(redis_client, "slow-1", grace=60)
    progress.request_cancel(redis_client, "due-1", grace=0)
    progress.request_cancel(redis_client, "slow-2", grace=60)
    progress.stop_running_job(redis_client, "slow-2")
    assert progress.stop_requested(redis_client, ["slow-1", "due-1", "slow-2", "x"]) == {
        "due-1",
        "slow-2",
    }
    assert progress.cancel_requested(redis_client, "slow-1")
    assert not progress.cancel_requested(redis_client, "x")
    # a second request never postpones the first one's deadline
    progress.request_cancel(redis_client, "due-1", grace=60)
    assert progress.stop_requested(redis_client, ["due-1"]) == {"due-1"}


# -- 6. killed jobs ------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_killed_job_ends_as_failed_after_recovery(
    start_worker: StartWorker,
    enqueuer: Enqueuer,
    settings: Settings,
    progress_db: Engine,
    redis_client: redis.Redis,
) -> None:
    # Given a tracked job on bulk (1 try) and one on reports (3 tries), each running in a worker
    once = enqueuer.enqueue("progress_count", 1000, delay=0.05)
    thrice = enqueuer.enqueue("progress_cancellable", "killed", 1000, 0.05)
    workers = [start_worker("bulk"), start_worker("reports")]
    for job in (once, thrice):
        wait_until("items done", lambda job=job: processed_at_least(progress_db, job.id, 3))

    # When both workers are killed and the master recovers their jobs
    for worker, queue in zip(workers, ("bulk", "reports"), strict=True):
        worker.proc.kill()
        worker.wait(10)
        recover_dead_worker(redis_client, worker.name, queue, "killed by signal 9", settings)

    # Then the job without tries left is failed, naming the reason, with what it had done
    failed = record(progress_db, once.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.message == "abandoned: killed by signal 9"
    assert 3 <= failed.processed < 1000 and failed.finished_at is not None
    # and the one RQ retries is pending again
    pending = record(progress_db, thrice.id)
    assert pending is not None and pending.status is JobStatus.PENDING
    assert pending.message == "attempt abandoned (killed by signal 9); retry scheduled"


@pytest.mark.timeout(90)
def test_a_work_horse_killed_at_its_timeout_ends_its_progress_as_failed(
    start_worker: StartWorker, enqueuer: Enqueuer, progress_db: Engine, redis_client: redis.Redis
) -> None:
    # Given a fork worker whose 2 s timeout kills the work horse of a long tracked job
    job = enqueuer.enqueue("progress_count", 1000, delay=0.05)
    worker = start_worker("bulk", "fork", burst=True, timeout=2)
    assert worker.wait(30) == 0, worker.stderr()

    # Then the job failed in RQ, and the worker gave its progress the final state the killed
    # horse could not write
    assert rq_status(redis_client, job.id) == "failed"
    final = record(progress_db, job.id)
    assert final is not None and final.status is JobStatus.FAILED
    assert "JobTimeoutException" in (final.message or "")
    shown = json.loads(run_cli("progress", "show", job.id, "--json").stdout)
    assert shown["status"] == "failed"


# -- 7. access: users see their own jobs, admins all -----------------------------------------------


@pytest.fixture
def people(progress_db: Engine, redis_url: str) -> dict[str, int]:
    """An admin and two employees, with a running and a completed job each for the two."""
    ids = {
        "admin": add_user(progress_db, "ada@acme.test", UserRole.ADMIN),
        "alice": add_user(progress_db, "alice@acme.test"),
        "bob": add_user(progress_db, "bob@acme.test"),
    }
    saved(progress_db, "alice-run", ids["alice"], JobStatus.RUNNING)
    saved(progress_db, "alice-done", ids["alice"], JobStatus.COMPLETED)
    saved(progress_db, "bob-run", ids["bob"], JobStatus.RUNNING)
    return ids


def listed(*args: str, env: dict[str, str] | None = None) -> list[str]:
    result = run_cli("progress", "list", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return sorted(r["id"] for r in json.loads(result.stdout))


def test_users_see_their_own_jobs_and_admins_and_the_operator_see_all(
    people: dict[str, int],
) -> None:
    everything = ["alice-done", "alice-run", "bob-run"]
    assert listed("--as", "alice@acme.test") == ["alice-done", "alice-run"]
    assert listed("--as", str(people["bob"])) == ["bob-run"]
    assert listed(env={"ACMEQ_USER": "ALICE@acme.test"}) == ["alice-done", "alice-run"]
    assert listed("--as", "ada@acme.test") == everything
    assert listed() == everything  # no identity: the operator
    # and filters narrow what one may see, never widen it
    assert listed("--user", "bob@acme.test") == ["bob-run"]
    assert listed("--user", "bob@acme.test", "--as", "alice@acme.test") == []
    assert listed("--status", "running") == ["alice-run", "bob-run"]
    assert listed("--status", "running", "--status", "completed", "--as", "alice@acme.test") == [
        "alice-done",
        "alice-run",
    ]


def test_another_users_job_is_not_found_exactly_like_a_missing_one(
    people: dict[str, int],
) -> None:
    for command in (["progress", "show"], ["progress", "watch"], ["job", "cancel"]):
        theirs = run_cli(*command, "bob-run", "--as", "alice@acme.test")
        missing = run_cli(*command, "no-such-job", "--as", "alice@acme.test")
        assert theirs.returncode == missing.returncode == 1, command
        what = "job" if command[0] == "job" else "job progress"
        assert theirs.stderr == f"acmeq: error: {what} 'bob-run' not found\n", command
        assert missing.stderr == f"acmeq: error: {what} 'no-such-job' not found\n", command
    # while the owner and an admin see it
    own = run_cli("progress", "show", "bob-run", "--as", "bob@acme.test")
    assert own.returncode == 0, own.stderr
    assert "job progress bob-run" in own.stdout and "40/100 items" in own.stdout
    admin = run_cli("progress", "show", "bob-run", "--as", "ada@acme.test", "--json")
    assert json.loads(admin.stdout)["user_id"] == people["bob"]


def test_bad_identities_and_statuses_are_usage_errors_naming_the_value(
    people: dict[str, int],
) -> None:
    unknown = run_cli("progress", "list", "--as", "mallory@acme.test")
    assert unknown.returncode == 2
    assert unknown.stderr == (
        "acmeq: error: --as: unknown user 'mallory@acme.test' (no such id or email in users)\n"
    )
    odd = run_cli("progress", "list", "--user", "bobby")
    assert odd.returncode == 2
    assert odd.stderr == "acmeq: error: --user: expected a user id or email, got 'bobby'\n"
    status = run_cli("progress", "list", "--status", "done")
    assert status.returncode == 2
    assert status.stderr == (
        "acmeq: error: --status: unknown status 'done'; valid: pending, running, completed, "
        "failed, cancelled\n"
    )


def test_progress_list_shows_bars_counts_and_eta(people: dict[str, int]) -> None:
    result = run_cli("progress", "list", "--as", "alice@acme.test")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:] if line.strip()}
    assert set(rows) == {"alice-run", "alice-done"}
    assert "running" in rows["alice-run"] and "40%" in rows["alice-run"]
    assert "40/100" in rows["alice-run"] and "━" in rows["alice-run"]
    assert "completed" in rows["alice-done"]


def test_a_job_cancelled_while_queued_cannot_be_cancelled_by_someone_else(
    people: dict[str, int], enqueuer: Enqueuer, settings: Settings, progress_db: Engine
) -> None:
    job = enqueuer.enqueue("progress_count", 5)
    progress.create_pending(settings, job.id, "progress_count", "bulk", user_id=people["alice"])
    denied = run_cli("job", "cancel", job.id, "--as", "bob@acme.test")
    assert denied.returncode == 1
    assert denied.stderr == f"acmeq: error: job {job.id!r} not found\n"
    allowed = run_cli("job", "cancel", job.id, "--as", "alice@acme.test")
    assert allowed.returncode == 0, allowed.stderr
    final = record(progress_db, job.id)
    assert final is not None and final.status is JobStatus.CANCELLED
    assert final.message == "cancelled by alice@acme.test before it ran"


def test_cancel_outside_a_worker_raises_job_cancelled_in_the_tracked_block(
    settings: Settings, progress_db: Engine, redis_client: redis.Redis
) -> None:
    # A cancel requested before the block starts stops it at once (a retry of a cancelled job).
    progress.request_cancel(redis_client, "early-1", grace=5, by="ops")
    with pytest.raises(JobCancelled), track(total=5, job_id="early-1", settings=settings):
        pytest.fail("the block must not run")
    final = record(progress_db, "early-1")
    assert final is not None
    assert (final.status, final.message) == (JobStatus.CANCELLED, "cancelled by ops")
