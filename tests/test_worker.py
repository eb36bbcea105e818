"""The worker process, run as a real child process against the private redis-server.

Every test starts ``python -m acmeq.worker '<WorkerOptions>'`` the way a supervisor does, puts
real jobs (tests/sample_jobs.py) on a queue and reads the outcome where RQ and the supervisor
read it: job statuses and results, RQ's registries (``rq:wip``, ``rq:failed``, ``rq:scheduled``),
the worker's hash and exit code. Waits are bounded by generous deadlines; no test asserts how
long anything took.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import rq
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.constants import WorkerExit
from acmeq.queues import AcmeqJob, Enqueuer, JobCall
from acmeq.worker.process import WorkerOptions

from conftest import wait_until

TESTS = Path(__file__).resolve().parent
MODES = ["inline", "threads", "fork"]


# -- helpers ---------------------------------------------------------------------------------------


def options(queue: str, mode: str = "inline", **kwargs: Any) -> WorkerOptions:
    """Worker options for ``mode``; threads mode runs four jobs at once."""
    concurrency = 4 if mode == "threads" else 1
    return WorkerOptions(queue=queue, mode=mode, concurrency=concurrency, name="t", **kwargs)


@dataclass
class WorkerProcess:
    """A worker started as a real child process, with its output in files."""

    proc: subprocess.Popen[bytes]
    opts: WorkerOptions
    stderr_path: Path
    orphans: list[psutil.Process] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return f"{self.opts.name}.{self.proc.pid}"

    @property
    def key(self) -> str:
        return f"rq:worker:{self.name}"

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        """SIGKILL the worker alone; a fork-mode work horse left behind is killed at teardown."""
        try:
            self.orphans = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            self.orphans = []
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                self.orphans += psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.kill()
            self.proc.wait(timeout=10)
        for child in self.orphans:
            with contextlib.suppress(psutil.Error):
                child.kill()


def worker_env(extra_path: Path | None = None, **overrides: str) -> dict[str, str]:
    """The test's environment (REDIS_URL, ACMEQ_JOB_MODULES ...) with tests/ importable."""
    env = dict(os.environ)
    paths = [str(TESTS)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    env.update(overrides)
    return env


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(redis_url: str, job_modules: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Start workers like a supervisor does; whatever is still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(opts: WorkerOptions) -> WorkerProcess:
        stderr_path = tmp_path / f"worker-{len(started)}.err"
        with stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "acmeq.worker", opts.to_json()],
                env=worker_env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        worker = WorkerProcess(proc, opts, stderr_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.cleanup()


@pytest.fixture
def enqueuer(redis_client: redis.Redis, job_modules: str) -> Enqueuer:
    return Enqueuer(Settings.load(), redis_client)


def status(client: redis.Redis, job_id: str) -> JobStatus:
    return AcmeqJob.fetch(job_id, connection=client).get_status()


def wip(client: redis.Redis, queue: str) -> list[str]:
    """The executions in RQ's started registry of ``queue`` (``<job id>:<execution id>``)."""
    return [m.decode() for m in client.zrange(f"rq:wip:{queue}", 0, -1)]


def queued(client: redis.Redis, queue: str) -> list[str]:
    return [m.decode() for m in client.lrange(f"rq:queue:{queue}", 0, -1)]


def intermediate(client: redis.Redis, queue: str) -> list[str]:
    return [m.decode() for m in client.lrange(f"rq:queue:{queue}:intermediate", 0, -1)]


def registered_workers(client: redis.Redis, queue: str) -> list[str]:
    found = rq.Worker.all(
        queue=Queue(queue, connection=client, serializer=JSONSerializer),
        serializer=JSONSerializer,
    )
    return [w.name for w in found]


def running(client: redis.Redis, queue: str, job_id: str) -> bool:
    """Whether the job is being executed (its execution is in ``rq:wip:<queue>``)."""
    return any(member.startswith(job_id + ":") for member in wip(client, queue))


def blocked_in_blmove(client: redis.Redis, worker: WorkerProcess) -> bool:
    """Whether one of the worker's connections is blocked in BLMOVE (idle, waiting for a job)."""
    return any(
        c.get("name") == worker.name and c.get("cmd") == "blmove" and "b" in c.get("flags", "")
        for c in client.client_list()
    )


def exc_string(client: redis.Redis, job_id: str) -> str:
    result = AcmeqJob.fetch(job_id, connection=client).latest_result()
    assert result is not None, f"job {job_id} has no result"
    return result.exc_string or ""


# -- 1. draining a queue ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_a_burst_worker_drains_the_queue_and_leaves_rq_consistent(
    mode: str,
    start_worker: StartWorker,
    enqueuer: Enqueuer,
    redis_client: redis.Redis,
    redis_url: str,
) -> None:
    # Given 300 trivial jobs on the payments queue
    ids = enqueuer.enqueue_many([JobCall("add", (i, 1)) for i in range(300)])

    # When a burst worker serves the queue
    worker = start_worker(options("payments", mode, burst=True))

    # Then it exits cleanly once the queue is empty
    assert worker.wait(60) == WorkerExit.OK, worker.stderr()
    # and every job finished with a return value RQ itself can read
    values = [AcmeqJob.fetch(i, connection=redis_client).return_value() for i in ids]
    assert values == [i + 1 for i in range(300)]
    assert {status(redis_client, i) for i in ids} == {JobStatus.FINISHED}
    assert redis_client.zcard("rq:finished:payments") == 300
    # and nothing is left half-done or registered
    assert queued(redis_client, "payments") == []
    assert intermediate(redis_client, "payments") == []
    assert wip(redis_client, "payments") == []
    assert registered_workers(redis_client, "payments") == []
    assert not redis_client.exists(f"{worker.key}:executions")
    # and `rq info` reads what the worker left behind
    info = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "info",
            "--url",
            redis_url,
            "--serializer",
            "rq.serializers.JSONSerializer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert info.returncode == 0, info.stderr
    assert "payments" in info.stdout


# -- 2. failures: retried per the queue's tries, then failed ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_job_with_tries_left_is_scheduled_for_its_next_try(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a failing job on exports (2 tries, 60 s backoff)
    job = enqueuer.enqueue("fail", "first try")

    # When a worker runs it once
    worker = start_worker(options("exports", mode, burst=True))
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()

    # Then it is scheduled for its second and last try, about a minute from now
    stored = AcmeqJob.fetch(job.id, connection=redis_client)
    assert stored.get_status() == JobStatus.SCHEDULED
    assert stored.retries_left == 0
    when = redis_client.zscore("rq:scheduled:exports", job.id)
    assert when is not None
    assert 30 <= when - datetime.now(UTC).timestamp() <= 61
    assert redis_client.zcard("rq:failed:exports") == 0
    assert wip(redis_client, "exports") == []


@pytest.mark.parametrize("mode", MODES)
def test_a_failing_job_without_tries_left_ends_failed_with_its_traceback(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a failing job on bulk (1 try)
    job = enqueuer.enqueue("explode", "disk on fire")

    # When a worker runs it
    worker = start_worker(options("bulk", mode, burst=True))
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()

    # Then it is failed for good, with the traceback RQ shows
    assert status(redis_client, job.id) == JobStatus.FAILED
    assert redis_client.zscore("rq:failed:bulk", job.id) is not None
    assert redis_client.zscore("rq:scheduled:bulk", job.id) is None
    text = exc_string(redis_client, job.id)
    assert "Traceback" in text
    assert "ValueError: disk on fire" in text
    assert "sample_jobs.py" in text
    assert wip(redis_client, "bulk") == []


# -- 3. timeouts -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_past_its_timeout_is_failed_and_the_worker_serves_the_next_one(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a job that would run for 30 s and a quick one behind it, both on bulk (1 try)
    slow = enqueuer.enqueue("nap", 30)
    quick = enqueuer.enqueue("echo", after="timeout")

    # When a worker with a 1 s timeout override serves the queue
    worker = start_worker(options("bulk", mode, burst=True, timeout=1))
    assert worker.wait(40) == WorkerExit.OK, worker.stderr()

    # Then the slow job failed with a timeout, and the next job still ran
    assert status(redis_client, slow.id) == JobStatus.FAILED
    assert "JobTimeoutException" in exc_string(redis_client, slow.id)
    assert status(redis_client, quick.id) == JobStatus.FINISHED
    assert AcmeqJob.fetch(quick.id, connection=redis_client).return_value() == {"after": "timeout"}
    assert wip(redis_client, "bulk") == []


# -- 4. memory limits ------------------------------------------------------------------------------

# memory_mb=150: the soft limit (checked after each job) is 150 MB, the hard limit (a running job
# is stopped) is 150 x 1.15 = 172.5 MB. A worker starts near 50 MB.
LIMIT_MB = 150


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["inline", "threads"])  # fork: a leak dies with the work horse
def test_a_worker_over_its_memory_limit_after_a_job_exits_to_be_replaced(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a job that leaks the worker past its soft limit but not its hard one
    job = enqueuer.enqueue("leak_to", LIMIT_MB + 10)

    # When a (non-burst) worker with that limit runs it
    worker = start_worker(options("reports", mode, memory_mb=LIMIT_MB))

    # Then the job finished and the worker exits to be replaced
    assert worker.wait(40) == WorkerExit.MEMORY_LIMIT, worker.stderr()
    assert status(redis_client, job.id) == JobStatus.FINISHED
    assert AcmeqJob.fetch(job.id, connection=redis_client).return_value() >= LIMIT_MB
    assert wip(redis_client, "reports") == []
    assert registered_workers(redis_client, "reports") == []


@pytest.mark.timeout(60)
def test_a_worker_over_its_memory_limit_takes_no_further_job(
    start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a leaking job followed by another job on the same queue
    leak = enqueuer.enqueue("leak_to", LIMIT_MB + 10)
    after = enqueuer.enqueue("sleep_for", 0)

    # When an inline worker with a 150 MB limit serves the queue
    worker = start_worker(options("reports", "inline", memory_mb=LIMIT_MB))

    # Then it exits after the leaking job ("exits after the job and is replaced")
    assert worker.wait(40) == WorkerExit.MEMORY_LIMIT, worker.stderr()
    assert status(redis_client, leak.id) == JobStatus.FINISHED
    # and the next job is left for a fresh worker
    assert status(redis_client, after.id) == JobStatus.QUEUED
    assert queued(redis_client, "reports") == [after.id]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_job_far_past_the_memory_limit_is_failed_for_good(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a job that takes 400 MB and holds it (on reports: 3 tries)
    job = enqueuer.enqueue("hog", 400, 30)

    # When a worker limited to 150 MB runs it
    worker = start_worker(options("reports", mode, memory_mb=LIMIT_MB))

    # Then the worker stops the job and exits to be replaced
    assert worker.wait(40) == WorkerExit.MEMORY_LIMIT, worker.stderr()
    # and the job failed for good: retrying a memory hog would only kill the next worker too
    assert status(redis_client, job.id) == JobStatus.FAILED
    assert f"memory limit {LIMIT_MB} MB exceeded (RSS" in exc_string(redis_client, job.id)
    assert redis_client.zscore("rq:failed:reports", job.id) is not None
    assert redis_client.zscore("rq:scheduled:reports", job.id) is None
    assert queued(redis_client, "reports") == []
    assert wip(redis_client, "reports") == []
    assert registered_workers(redis_client, "reports") == []


# -- 5. recycling ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_max_jobs_recycles_the_worker_after_exactly_that_many_jobs(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given 20 jobs
    ids = enqueuer.enqueue_many([JobCall("add", (i, i)) for i in range(20)])

    # When a non-burst worker that may run 5 jobs serves the queue
    worker = start_worker(options("payments", mode, max_jobs=5))

    # Then it exits asking to be recycled
    assert worker.wait(40) == WorkerExit.RECYCLE, worker.stderr()
    # after exactly 5 jobs; the other 15 wait for its replacement
    statuses = [status(redis_client, i) for i in ids]
    assert statuses.count(JobStatus.FINISHED) == 5
    assert statuses.count(JobStatus.QUEUED) == 15
    assert len(queued(redis_client, "payments")) == 15
    assert intermediate(redis_client, "payments") == []
    assert wip(redis_client, "payments") == []


# -- 6. pause --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["inline", "threads"])
def test_a_paused_queue_is_not_served_until_resumed(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a paused queue with jobs on it
    pause_key = keys.paused_queue("payments")
    redis_client.set(pause_key, "1")
    ids = enqueuer.enqueue_many([JobCall("add", (i, 0)) for i in range(5)])

    # When a worker starts on it
    worker = start_worker(options("payments", mode))
    wait_until("the worker registers", lambda: registered_workers(redis_client, "payments"))

    # Then for a couple of seconds nothing is taken
    time.sleep(2.5)
    assert queued(redis_client, "payments") == ids
    assert intermediate(redis_client, "payments") == []
    assert wip(redis_client, "payments") == []
    assert {status(redis_client, i) for i in ids} == {JobStatus.QUEUED}

    # When the queue is resumed
    redis_client.delete(pause_key)

    # Then the jobs drain
    wait_until(
        "all jobs finished",
        lambda: all(status(redis_client, i) == JobStatus.FINISHED for i in ids),
    )
    assert [AcmeqJob.fetch(i, connection=redis_client).return_value() for i in ids] == list(
        range(5)
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["inline", "threads"])
def test_a_job_arriving_during_an_idle_wait_on_a_paused_queue_goes_back_to_the_queue(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given an idle worker blocked waiting for jobs (BLMOVE) on an empty queue
    worker = start_worker(options("payments", mode))
    wait_until("the worker blocks in BLMOVE", lambda: blocked_in_blmove(redis_client, worker))

    # When the queue is paused and then a job arrives
    pause_key = keys.paused_queue("payments")
    redis_client.set(pause_key, "1")
    job = enqueuer.enqueue("add", 20, 22)

    # Then the job is not run: it is back on the queue, not stuck in the intermediate list
    time.sleep(2.5)
    assert status(redis_client, job.id) == JobStatus.QUEUED
    assert queued(redis_client, "payments") == [job.id]
    assert intermediate(redis_client, "payments") == []
    assert wip(redis_client, "payments") == []
    assert not redis_client.exists(f"rq:results:{job.id}")

    # When the queue is resumed, the job runs
    redis_client.delete(pause_key)
    wait_until("the job finished", lambda: status(redis_client, job.id) == JobStatus.FINISHED)
    assert AcmeqJob.fetch(job.id, connection=redis_client).return_value() == 42
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()


# -- 7. signals ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_sigterm_lets_the_running_job_finish(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a worker running a 3-second job
    job = enqueuer.enqueue("sleep_for", 3)
    worker = start_worker(options("reports", mode))
    wait_until("the job runs", lambda: running(redis_client, "reports", job.id))

    # When it is asked to stop (SIGTERM)
    worker.signal(signal.SIGTERM)

    # Then the job completes and the worker exits cleanly
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()
    assert status(redis_client, job.id) == JobStatus.FINISHED
    assert AcmeqJob.fetch(job.id, connection=redis_client).return_value() == 3
    assert wip(redis_client, "reports") == []
    assert registered_workers(redis_client, "reports") == []


@pytest.mark.timeout(60)
def test_sigterm_takes_no_new_job_after_the_running_one(
    start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given an inline worker running a 3-second job with another job queued behind it
    first = enqueuer.enqueue("sleep_for", 3)
    second = enqueuer.enqueue("sleep_for", 0)
    worker = start_worker(options("reports", "inline"))
    wait_until("the first job runs", lambda: running(redis_client, "reports", first.id))

    # When it is asked to stop (SIGTERM)
    worker.signal(signal.SIGTERM)

    # Then the running job finishes, and the queued one is left for another worker
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()
    assert status(redis_client, first.id) == JobStatus.FINISHED
    assert status(redis_client, second.id) == JobStatus.QUEUED
    assert queued(redis_client, "reports") == [second.id]


@pytest.mark.timeout(60)
def test_sigterm_while_idle_takes_no_job_that_arrives_afterwards(
    start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given an idle inline worker blocked waiting for jobs (BLMOVE)
    worker = start_worker(options("payments", "inline"))
    wait_until("the worker blocks in BLMOVE", lambda: blocked_in_blmove(redis_client, worker))

    # When it is asked to stop (SIGTERM) and a job arrives just after
    worker.signal(signal.SIGTERM)
    job = enqueuer.enqueue("add", 1, 2)

    # Then it exits without taking the job, which waits for another worker
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()
    assert status(redis_client, job.id) == JobStatus.QUEUED
    assert queued(redis_client, "payments") == [job.id]
    assert intermediate(redis_client, "payments") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigterm-twice", "sigint"])
@pytest.mark.parametrize("mode", MODES)
def test_a_fast_stop_interrupts_the_job_which_is_retried_not_lost(
    mode: str, how: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a worker running a long job on reports (3 tries, 60 s backoff)
    job = enqueuer.enqueue("long_report", 120)
    worker = start_worker(options("reports", mode))
    wait_until("the job runs", lambda: running(redis_client, "reports", job.id))

    # When it is told to stop fast: SIGTERM then a second SIGTERM, or SIGINT
    if how == "sigterm-twice":
        worker.signal(signal.SIGTERM)
        # Apart, so the kernel delivers two signals (two pending SIGTERMs are merged into one)
        time.sleep(0.3)
        worker.signal(signal.SIGTERM)
    else:
        worker.signal(signal.SIGINT)

    # Then it stops without waiting for the job, exiting as a requested stop
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()
    # and the interrupted job is not lost: it is scheduled for its next try
    stored = AcmeqJob.fetch(job.id, connection=redis_client)
    assert stored.get_status() == JobStatus.SCHEDULED
    assert stored.retries_left == 1
    assert redis_client.zscore("rq:scheduled:reports", job.id) is not None
    assert wip(redis_client, "reports") == []
    assert not redis_client.exists(f"{worker.key}:executions")
    assert registered_workers(redis_client, "reports") == []


# -- 8. boot errors --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_job_module_that_fails_to_import_is_a_boot_error(
    redis_url: str, tmp_path: Path, redis_client: redis.Redis
) -> None:
    # Given a job module that raises when imported
    (tmp_path / "broken_jobs.py").write_text(
        'raise RuntimeError("settings for the billing service are missing")\n'
    )

    # When a worker is started with it
    result = subprocess.run(
        [sys.executable, "-m", "acmeq.worker", options("bulk", burst=True).to_json()],
        env=worker_env(tmp_path, ACMEQ_JOB_MODULES="broken_jobs"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    # Then it exits with BOOT_ERROR (the supervisor halts the pool) and says why in one line
    assert result.returncode == WorkerExit.BOOT_ERROR, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "cannot boot:" in lines[0]
    assert "broken_jobs" in lines[0]
    assert "settings for the billing service are missing" in lines[0]
    assert "Traceback" not in result.stderr
    # and it never registered as an RQ worker
    assert registered_workers(redis_client, "bulk") == []


# -- 9. the allowlist ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_function_written_into_redis_by_someone_else_is_never_executed(
    mode: str, start_worker: StartWorker, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Given jobs naming arbitrary functions, written straight into Redis with RQ's own API
    queue = Queue("bulk", connection=redis_client, serializer=JSONSerializer)
    getcwd = queue.enqueue("os.getcwd")
    marker = tmp_path / "pwned"
    touch = queue.enqueue("pathlib.Path.touch", str(marker))

    # When a worker serves the queue
    worker = start_worker(options("bulk", mode, burst=True))
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()

    # Then both are failed as unregistered, and neither function ran
    for job in (getcwd, touch):
        assert status(redis_client, job.id) == JobStatus.FAILED
        assert "not a registered acmeq job" in exc_string(redis_client, job.id)
        assert AcmeqJob.fetch(job.id, connection=redis_client).return_value() is None
    assert not marker.exists()
    assert wip(redis_client, "bulk") == []


# -- 10. registration and heartbeat ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_busy_worker_is_visible_where_rq_looks(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a worker running a 3-second job
    job = enqueuer.enqueue("sleep_for", 3)
    worker = start_worker(options("reports", mode))

    # Then while the job runs, the job's execution is in RQ's started registry
    wait_until("the job runs", lambda: running(redis_client, "reports", job.id))
    (execution,) = [m for m in wip(redis_client, "reports") if m.startswith(job.id + ":")]
    # and the worker's hash says busy, with acmeq's fields
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(worker.key).items()}
    assert fields["state"] == "busy"
    assert fields["acmeq_mode"] == mode
    assert fields["queues"] == "reports"
    assert fields["pid"] == str(worker.pid)
    assert execution.encode() in redis_client.smembers(f"{worker.key}:executions")
    assert status(redis_client, job.id) == JobStatus.STARTED
    # and RQ lists the worker
    assert registered_workers(redis_client, "reports") == [worker.name]
    assert worker.name in [w.name for w in rq.Worker.all(connection=redis_client)]

    # When it is stopped gracefully, it finishes the job and leaves the registry
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == WorkerExit.OK, worker.stderr()
    assert status(redis_client, job.id) == JobStatus.FINISHED
    assert registered_workers(redis_client, "reports") == []


# -- 11. crash safety at the Redis level -----------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_worker_killed_mid_job_leaves_the_execution_for_recovery(
    mode: str, start_worker: StartWorker, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a worker running a 10-second job
    job = enqueuer.enqueue("long_report", 10)
    worker = start_worker(options("reports", mode))
    wait_until("the job runs", lambda: running(redis_client, "reports", job.id))
    (execution,) = [m for m in wip(redis_client, "reports") if m.startswith(job.id + ":")]

    # When the worker is killed without warning
    worker.kill9()

    # Then the execution stays where the supervisor's recovery looks for it
    assert wip(redis_client, "reports") == [execution]
    assert redis_client.smembers(f"{worker.key}:executions") == {execution.encode()}
    assert status(redis_client, job.id) == JobStatus.STARTED
    assert queued(redis_client, "reports") == []
