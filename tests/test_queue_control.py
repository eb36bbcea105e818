"""`acmeq queue list|pause|resume|clear`, and RQ's own CLI reading acmeq's queues and workers.

Real redis-server, real worker processes, the commands as real subprocesses; the confirmation
prompt of `queue clear` is answered through a real pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import redis
from test_failed import cli_json, drain, one_line_error, queued, snapshot

from acmeq.config.settings import Settings
from acmeq.ops.queue_admin import CLEAR_CHUNK
from acmeq.queues import Enqueuer, JobCall
from acmeq.worker.process import WorkerOptions

from conftest import ROOT, run_cli, wait_until

TESTS = ROOT / "tests"


@pytest.fixture
def enqueuer(redis_client: redis.Redis, job_modules: str) -> Enqueuer:
    return Enqueuer(Settings.load(), redis_client)


def paused(name: str) -> bool:
    rows = {r["name"]: r for r in cli_json("queue", "list")}
    return bool(rows[name]["paused"])


def run_on_a_terminal(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m acmeq ARGS` with a pseudo-terminal as stdin, typing ``answer``."""
    controller, terminal = pty.openpty()
    env = dict(os.environ, COLUMNS="120", NO_COLOR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "acmeq", *args],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        os.write(controller, answer.encode())  # the terminal buffers it until the prompt reads
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- pause / resume --------------------------------------------------------------------------------


def test_pause_and_resume_use_the_keys_of_worker_pause(
    redis_client: redis.Redis, job_modules: str
) -> None:
    # When a queue is paused with `queue pause`
    result = run_cli("queue", "pause", "bulk")

    # Then the cluster-wide pause key is set and `queue list` shows it
    assert result.returncode == 0, result.stderr
    assert "paused queue bulk" in result.stdout
    assert redis_client.exists("acmeq:paused:queue:bulk")
    assert paused("bulk") and not paused("payments")
    table = run_cli("queue", "list")
    assert re.search(r"^bulk .* paused\s*$", table.stdout, re.MULTILINE), table.stdout

    # And `queue resume` lifts it
    assert cli_json("queue", "resume", "bulk") == {"queue": "bulk", "paused": False}
    assert not redis_client.exists("acmeq:paused:queue:bulk")
    assert not paused("bulk")

    # And the two commands are interchangeable: `worker pause --queue`, then `queue resume`
    assert run_cli("worker", "pause", "--queue", "exports").returncode == 0
    assert paused("exports")
    assert run_cli("queue", "resume", "exports").returncode == 0
    assert not redis_client.exists("acmeq:paused:queue:exports")


def test_a_paused_queue_is_not_served_until_resumed(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given three jobs on a paused queue
    ids = enqueuer.enqueue_many([JobCall("echo", kwargs={"n": i}) for i in range(3)])
    assert run_cli("queue", "pause", "bulk").returncode == 0

    # When a real worker serves the queue, it takes none of them
    drain("bulk")
    assert queued(redis_client, "bulk") == ids

    # And once resumed, a worker runs them all
    assert run_cli("queue", "resume", "bulk").returncode == 0
    drain("bulk")
    assert queued(redis_client, "bulk") == []
    assert redis_client.zcard("rq:finished:bulk") == 3


# -- clear -----------------------------------------------------------------------------------------


def test_clear_deletes_the_waiting_jobs_only(enqueuer: Enqueuer, redis_client: redis.Redis) -> None:
    # Given a failed and a scheduled job on bulk, then 2,500 waiting jobs (more than one chunk)
    failed = enqueuer.enqueue("explode", "keep me").id
    drain("bulk")
    later = enqueuer.enqueue_call(JobCall("echo", delay=timedelta(hours=1))).id
    waiting = enqueuer.enqueue_many([JobCall("echo", kwargs={"n": i}) for i in range(2500)])
    elsewhere = enqueuer.enqueue("fail", "other queue").id
    assert 2 * CLEAR_CHUNK < 2500

    # When the queue is cleared
    result = cli_json("queue", "clear", "bulk", "--yes")

    # Then every waiting job is gone, hash and all
    assert result == {"queue": "bulk", "dry_run": False, "deleted": 2500}
    assert queued(redis_client, "bulk") == []
    assert not any(redis_client.exists(f"rq:job:{i}") for i in waiting[:50] + waiting[-50:])
    # and the failed, scheduled and other queues' jobs are not touched
    assert redis_client.zscore("rq:failed:bulk", failed) is not None
    assert redis_client.exists(f"rq:job:{failed}")
    assert redis_client.zscore("rq:scheduled:bulk", later) is not None
    assert queued(redis_client, "exports") == [elsewhere]
    # and the text output of an empty queue says so
    again = run_cli("queue", "clear", "bulk")
    assert again.returncode == 0 and "deleted 0 waiting jobs from queue bulk" in again.stdout


def test_clear_without_a_terminal_refuses_without_yes(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    enqueuer.enqueue_many([JobCall("echo") for _ in range(3)])
    before = snapshot(redis_client)
    one_line_error(
        run_cli("queue", "clear", "bulk", input=""),  # stdin: a pipe, not a terminal
        2,
        "refusing to clear queue 'bulk' (3 waiting jobs) without confirmation: stdin is not a "
        "terminal; pass --yes",
    )
    assert snapshot(redis_client) == before

    dry = cli_json("queue", "clear", "bulk", "--dry-run")
    assert dry == {"queue": "bulk", "dry_run": True, "deleted": 0, "would_delete": 3}
    assert snapshot(redis_client) == before


def test_clear_asks_on_a_terminal(enqueuer: Enqueuer, redis_client: redis.Redis) -> None:
    enqueuer.enqueue_many([JobCall("echo") for _ in range(4)])

    # Answering no aborts and deletes nothing
    no = run_on_a_terminal("queue", "clear", "bulk", answer="n\n")
    assert no.returncode == 1, (no.stdout, no.stderr)
    assert "Delete 4 waiting jobs from queue bulk?" in no.stderr
    assert "acmeq: error: aborted" in no.stderr
    assert len(queued(redis_client, "bulk")) == 4

    # Answering yes clears the queue
    yes = run_on_a_terminal("queue", "clear", "bulk", answer="y\n")
    assert yes.returncode == 0, (yes.stdout, yes.stderr)
    assert "deleted 4 waiting jobs from queue bulk" in yes.stdout
    assert queued(redis_client, "bulk") == []


def test_unknown_queues_exit_2_listing_the_valid_ones(redis_url: str, job_modules: str) -> None:
    valid = "valid queues: payments, notifications, exports, reports, bulk, maintenance"
    for args in (("clear", "urgent", "--yes"), ("pause", "urgent"), ("resume", "urgent")):
        one_line_error(run_cli("queue", *args), 2, f"unknown queue 'urgent'; {valid}")
    one_line_error(run_cli("queue", "clear", "urgent", "--dry-run"), 2, "unknown queue 'urgent'")


# -- interop: RQ's own CLI -------------------------------------------------------------------------


def rq_info(url: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "info",
            "--raw",
            "--url",
            url,
            "--serializer",
            "rq.serializers.JSONSerializer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def start_live_worker(queue: str) -> subprocess.Popen[bytes]:
    """A real (non-burst) acmeq worker process serving ``queue``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    opts = WorkerOptions(queue=queue, name="live")
    return subprocess.Popen(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.wait(timeout=20)
    if worker.poll() is None:
        worker.kill()
        worker.wait(timeout=10)


@pytest.mark.timeout(120)
def test_rq_info_shows_acmeq_queues_with_their_counts_and_workers(
    enqueuer: Enqueuer, redis_client: redis.Redis, redis_url: str
) -> None:
    # Given jobs waiting on exports and failed on bulk
    enqueuer.enqueue_many([JobCall("fail", ("later",)) for _ in range(3)])
    for i in range(2):
        enqueuer.enqueue("explode", f"broken {i}")
    drain("bulk")
    # and a live acmeq worker on payments that has run one job
    worker = start_live_worker("payments")
    name = f"live.{worker.pid}"
    try:
        wait_until(
            "registration", lambda: redis_client.sismember("rq:workers", f"rq:worker:{name}")
        )
        enqueuer.enqueue("add", 1, 2)
        wait_until("the job", lambda: redis_client.zcard("rq:finished:payments") == 1)

        # When RQ's own CLI reads acmeq's Redis
        info = rq_info(redis_url)

        # Then it shows each queue with the counts acmeq shows
        counts = {
            m["name"]: (int(m["ready"]), int(m["finished"]), int(m["failed"]))
            for m in re.finditer(
                r"^queue (?P<name>\S+) (?P<ready>\d+), \d+ executing, (?P<finished>\d+) "
                r"finished, (?P<failed>\d+) failed$",
                info,
                re.MULTILINE,
            )
        }
        assert counts == {"exports": (3, 0, 0), "bulk": (0, 0, 2), "payments": (0, 1, 0)}
        ours = {r["name"]: r for r in cli_json("queue", "list")}
        for queue, (ready, _, failed) in counts.items():
            assert (ours[queue]["ready"], ours[queue]["failed"]) == (ready, failed), queue
        # and the live worker, idle, on its queue, with the job it ran
        line = rf"^worker {re.escape(name)} \(.*\) idle payments\. jobs: 1 finished, 0 failed$"
        assert re.search(line, info, re.MULTILINE), info
    finally:
        stop(worker)


@pytest.mark.timeout(60)
def test_rq_info_shows_a_fresh_worker_as_idle(redis_client: redis.Redis, redis_url: str) -> None:
    worker = start_live_worker("payments")
    name = f"live.{worker.pid}"
    try:
        wait_until(
            "registration", lambda: redis_client.sismember("rq:workers", f"rq:worker:{name}")
        )
        assert re.search(rf"^worker {re.escape(name)} \(.*\) idle ", rq_info(redis_url), re.M)
    finally:
        stop(worker)
