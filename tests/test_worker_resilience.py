"""The worker under faults: Redis going away (at boot and while serving) and the liveness file
its master watches. Real worker processes, a real redis-server stopped and restarted on the
same port (append-only file, so queued jobs survive the restart)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from acmeq.config.settings import Settings
from acmeq.constants import WorkerExit
from acmeq.queues import Enqueuer
from acmeq.storage.redis_client import find_redis_server
from acmeq.worker.options import WorkerOptions

from conftest import free_port, wait_until

TESTS = Path(__file__).resolve().parent


class RestartableRedis:
    """A redis-server of this test on a fixed port, which the test stops and starts."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = find_redis_server()
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until("redis-server up", up, timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "sample_jobs")
    yield server
    server.stop()


def start_worker(
    opts: WorkerOptions, tmp_path: Path, **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / f"worker-{time.monotonic_ns()}.err"
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), environ.get("PYTHONPATH", "")])
    environ.update(env)
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "acmeq.worker", opts.to_json()],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    return proc, err


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["inline", "threads", "fork"])
def test_a_redis_outage_while_serving_is_waited_out(
    mode: str, own_redis: RestartableRedis, tmp_path: Path
) -> None:
    # Given a worker serving a queue with jobs going through it
    client = redis.Redis(port=own_redis.port)
    enqueuer = Enqueuer(Settings.load(), client)
    jobs = [enqueuer.enqueue("nap", 0.05) for _ in range(60)]
    opts = WorkerOptions(queue="bulk", mode=mode, concurrency=4 if mode == "threads" else 1)
    proc, err = start_worker(opts, tmp_path)
    try:
        wait_until("some jobs done", lambda: client.zcard("rq:finished:bulk") >= 5)
        # When Redis goes away for 4 s and comes back (same data)
        own_redis.stop()
        time.sleep(4)
        assert proc.poll() is None, err.read_text()  # the worker waits, it does not exit
        own_redis.start()
        client = redis.Redis(port=own_redis.port)
        # Then every job is done soon after, by the same process
        wait_until(
            "all jobs finished",
            lambda: all(client.hget(j.key, "status") == b"finished" for j in jobs),
            timeout=60,
        )
        assert proc.poll() is None
    finally:
        assert stop(proc) == WorkerExit.OK, err.read_text()[-3000:]
    log = err.read_text()
    # and the outage was logged once when it began and once when it ended
    assert log.count("Redis unreachable") == 1, log[-3000:]
    assert log.count("Redis is back") == 1, log[-3000:]


@pytest.mark.timeout(60)
def test_a_worker_started_while_redis_is_down_waits_for_it(
    own_redis: RestartableRedis, tmp_path: Path
) -> None:
    # Given Redis down when the worker starts
    own_redis.stop()
    proc, err = start_worker(WorkerOptions(queue="bulk", burst=True), tmp_path)
    time.sleep(2)
    # When Redis comes back within the worker's boot wait
    own_redis.start()
    # Then the worker starts and serves (burst: exits OK on the empty queue)
    assert proc.wait(timeout=40) == WorkerExit.OK, err.read_text()


@pytest.mark.timeout(60)
def test_a_worker_that_never_reaches_redis_exits_with_redis_unavailable(
    own_redis: RestartableRedis, tmp_path: Path
) -> None:
    own_redis.stop()
    proc, err = start_worker(WorkerOptions(queue="bulk"), tmp_path, ACMEQ_WORKER_REDIS_WAIT_S="2")
    # a transient failure for the master (never BOOT_ERROR, which halts the pool)
    assert proc.wait(timeout=40) == WorkerExit.REDIS_UNAVAILABLE, err.read_text()
    assert "Redis unreachable" in err.read_text()


def mtime_offset(path: Path) -> float:
    return path.stat().st_mtime - time.time()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["inline", "threads", "fork"])
def test_the_liveness_file_says_until_when_the_worker_is_alive(
    mode: str, own_redis: RestartableRedis, tmp_path: Path
) -> None:
    client = redis.Redis(port=own_redis.port)
    beat = tmp_path / "beat"
    opts = WorkerOptions(
        queue="bulk", mode=mode, concurrency=2 if mode == "threads" else 1,
        heartbeat_file=str(beat),
    )  # fmt: skip
    proc, err = start_worker(opts, tmp_path)
    try:
        # Idle: touched with now at least every 2 s
        wait_until("worker registered", lambda: client.scard("rq:workers") == 1)
        for _ in range(3):
            time.sleep(1.5)
            assert abs(mtime_offset(beat)) < 2.5, err.read_text()
        # Running a job: inline and fork say now + its timeout + 5 s; threads now
        job = Enqueuer(Settings.load(), client).enqueue("nap", 4)
        timeout = int(client.hget(job.key, "timeout") or 0)  # the queue's (bulk: 1 h)
        wait_until("job started", lambda: client.hget(job.key, "status") == b"started")
        time.sleep(0.5)
        if mode == "threads":
            assert abs(mtime_offset(beat)) < 2.5
        else:
            assert timeout < mtime_offset(beat) <= timeout + 6
        # After it: back to now
        wait_until("job done", lambda: client.hget(job.key, "status") == b"finished")
        time.sleep(1.0)
        assert abs(mtime_offset(beat)) < 2.5
    finally:
        stop(proc)
