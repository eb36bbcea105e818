"""RQ conformance: the same jobs on plain RQ 3 and on acmeq's worker, Redis state compared.

Each scenario enqueues its jobs with RQ's own API (JSON serializer, fixed job ids), runs a burst
worker, and takes a snapshot of what RQ and its users read: every job hash (fields, with times
dropped and tracebacks reduced to their last line) and its TTL, the registries, the results
streams, the execution records, the worker's hash and counters, and the calls the jobs,
callbacks and webhooks made. The reference is plain RQ (``rq worker --burst`` with
``SimpleWorker``, and RQ's forking ``Worker`` where a horse matters); acmeq's worker runs in each
execution model (inline, threads, fork) against the same private Redis, and every snapshot must
equal the reference's. Deliberate differences are listed in docs/architecture.md ("Differences
from RQ's worker") and are the only exceptions made here.

Also here: a pickled job and a job hash naming a foreign callback among normal jobs (no worker
crash, nothing foreign imported), and a kill -9 storm per execution model with a ledger that
proves every job completed (duplicates counted).
"""

from __future__ import annotations

import base64
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Callback, Queue, Repeat, Retry
from rq.command import send_shutdown_command, send_stop_job_command
from rq.group import Group
from rq.job import Dependency, Job
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from acmeq.worker.options import WorkerOptions

from conftest import wait_until

TESTS = Path(__file__).resolve().parent
Q = "bulk"
CALLS = "conf:calls"
ACMEQ = ["inline", "threads", "fork"]
TIME_FIELDS = {
    "created_at",
    "enqueued_at",
    "started_at",
    "ended_at",
    "last_heartbeat",
    "worker_name",
}

pytestmark = pytest.mark.timeout(120)


# -- running workers -------------------------------------------------------------------------------


def env(redis_url: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), e.get("PYTHONPATH", "")])
    e["ACMEQ_JOB_MODULES"] = "conformance_jobs"
    e["REDIS_URL"] = redis_url
    return e


def start(
    system: str, redis_url: str, tmp_path: Path, burst: bool = True
) -> subprocess.Popen[bytes]:
    """A burst worker of ``system`` (rq-simple, rq-fork, or an acmeq execution model)."""
    err = (tmp_path / f"{system}.err").open("ab")
    if system.startswith("rq-"):
        cls = "rq.worker.SimpleWorker" if system == "rq-simple" else "rq.worker.Worker"
        argv = [str(Path(sys.executable).parent / "rq"), "worker", "-u", redis_url, "-S", "json"]
        argv += ["-w", cls, "-n", "W"] + (["--burst"] if burst else []) + [Q]
    else:
        opts = WorkerOptions(
            queue=Q,
            mode=system,
            concurrency=4 if system == "threads" else 1,
            name="W",
            burst=burst,
            log_level="INFO",
        )
        argv = [sys.executable, "-m", "acmeq.worker", opts.to_json()]
    return subprocess.Popen(argv, env=env(redis_url), stdout=err, stderr=err)


def run_burst(
    system: str, redis_url: str, tmp_path: Path, during: Callable[[], None] | None = None
) -> None:
    proc = start(system, redis_url, tmp_path)
    if during is not None:
        during()
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- snapshots -------------------------------------------------------------------------------------


def _t(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unzip(value: bytes) -> str:
    try:
        return zlib.decompress(value).decode()
    except zlib.error:
        return value.decode(errors="replace")


# TTLs the scenarios set (RQ's defaults among them); a measured TTL is named by the one it is
# within a few seconds of (runs take different times, the TTL chosen must not differ).
KNOWN_TTLS = (60, 300, 420, 500, 600, 900, 3600, 7 * 24 * 3600, 365 * 24 * 3600)


def ttl_class(client: redis.Redis, key: str) -> str:
    ttl = client.ttl(key)
    if ttl < 0:
        return str(ttl)
    for known in KNOWN_TTLS:
        if abs(ttl - known) <= max(20, known * 0.01):
            return f"~{known}"
    return f"{ttl} (unexpected)"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def snapshot(client: redis.Redis, job_ids: list[str], order: bool = True) -> dict[str, Any]:
    snap: dict[str, Any] = {}
    for job_id in job_ids:
        key = f"rq:job:{job_id}"
        raw = {_t(k): v for k, v in client.hgetall(key).items()}
        fields = {k: _unzip(v) if k in ("data", "exc_info") else _t(v) for k, v in raw.items()}
        for name in TIME_FIELDS & set(fields):
            fields[name] = "<set>" if fields[name] else ""
        if "exc_info" in fields:
            fields["exc_info"] = last_line(fields["exc_info"])  # frames differ, not the error
        snap[f"job {job_id}"] = fields
        snap[f"ttl {job_id}"] = ttl_class(client, key) if fields else "gone"
        results = []
        for _, entry in client.xrange(f"rq:results:{job_id}"):
            e = {_t(k): _t(v) for k, v in entry.items()}
            for name in ("execution_started_at", "execution_ended_at", "created_at"):
                e.pop(name, None)
            e["execution_id"] = "<set>" if e.get("execution_id") else ""
            e["worker_name"] = "<set>" if e.get("worker_name") else ""
            if "exc_string" in e:
                e["exc_string"] = last_line(_unzip(base64.b64decode(e["exc_string"])))
            results.append(e)
        snap[f"results {job_id}"] = results
        snap[f"results ttl {job_id}"] = ttl_class(client, f"rq:results:{job_id}")
        snap[f"executions {job_id}"] = client.zcard(f"rq:executions:{job_id}")
        for dep in ("dependents", "dependencies"):
            members = sorted(_t(m) for m in client.smembers(f"{key}:{dep}"))
            snap[f"{dep} {job_id}"] = (members, ttl_class(client, f"{key}:{dep}"))
    for reg in ("finished", "failed", "scheduled", "deferred", "wip", "canceled"):
        members = [_t(m).split(":")[0] for m in client.zrange(f"rq:{reg}:{Q}", 0, -1)]
        snap[f"registry {reg}"] = sorted(members)
    snap["queue"] = [_t(m) for m in client.lrange(f"rq:queue:{Q}", 0, -1)]
    snap["execution records"] = len(list(client.scan_iter("rq:execution:*")))
    calls = [_t(c) for c in client.lrange(CALLS, 0, -1)]
    snap["calls"] = calls if order else sorted(calls)
    workers = [k for k in client.scan_iter("rq:worker:W*") if not _t(k).endswith("executions")]
    counters = {"successful_job_count": 0, "failed_job_count": 0, "total_working_time": ""}
    for key in workers:  # summed: a scenario may need a second burst worker (maintenance)
        h = {_t(k): _t(v) for k, v in client.hgetall(key).items()}
        counters["successful_job_count"] += int(h.get("successful_job_count", "0"))
        counters["failed_job_count"] += int(h.get("failed_job_count", "0"))
        if h.get("total_working_time"):
            counters["total_working_time"] = "<set>"
    snap["worker counters"] = counters
    snap["groups"] = {
        _t(g): sorted(_t(m) for m in client.smembers(f"rq:group:{_t(g)}"))
        for g in client.smembers("rq:groups")
    }
    return snap


def diff(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        k: (reference.get(k), other.get(k))
        for k in sorted(set(reference) | set(other))
        if reference.get(k) != other.get(k)
    }


# -- the webhook receiver --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def conformance_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "conformance_jobs")


@pytest.fixture
def hooks(redis_client: redis.Redis) -> Iterator[str]:
    """A real HTTP server noting each webhook it receives in ``conf:calls``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _note(self) -> None:
            redis_client.rpush(CALLS, f"webhook:{self.command}:{self.path}")
            self.send_response(200)
            self.end_headers()

        do_GET = _note
        do_POST = _note

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# -- scenarios -------------------------------------------------------------------------------------


def plain_scenarios(client: redis.Redis, hook: str) -> list[str]:
    """Independent jobs that a burst worker runs one after another: results and TTLs,
    failure_ttl, dependencies, callbacks, webhooks, Retry (enqueued and returned),
    get_current_job/save_meta, job ttl, groups, Repeat."""
    import conformance_jobs as cj

    q = Queue(Q, connection=client, serializer=JSONSerializer)
    e = q.enqueue
    e(cj.add, 1, 2, job_id="ttl-default")
    e(cj.add, 1, 2, job_id="ttl-zero", result_ttl=0)
    e(cj.add, 1, 2, job_id="ttl-forever", result_ttl=-1)
    e(cj.nothing, job_id="none-result", result_ttl=300)
    e(cj.boom, job_id="failure-ttl", failure_ttl=900)
    e(cj.add, 2, 3, job_id="job-ttl", ttl=600)
    parent = e(cj.add, 5, 5, job_id="parent")
    e(cj.add, 1, 1, job_id="child", depends_on=parent)
    bad = e(cj.boom, job_id="bad-parent")
    e(cj.add, 1, 1, job_id="child-of-bad", depends_on=bad)
    e(cj.add, 1, 1, job_id="child-allowed", depends_on=Dependency(jobs=[bad], allow_failure=True))
    e(cj.add, 4, 4, job_id="cb-ok", on_success=Callback(cj.on_ok), on_failure=Callback(cj.on_bad))
    e(cj.boom, job_id="cb-bad", on_success=Callback(cj.on_ok), on_failure=Callback(cj.on_bad))
    e(cj.add, 1, 1, job_id="cb-raises", on_success=Callback(cj.on_ok_raises))
    e(cj.add, 6, 6, job_id="hook-ok", webhooks=[Webhook(f"{hook}/ok", "finished")])
    e(cj.boom, job_id="hook-bad", webhooks=[Webhook(f"{hook}/bad", "failed", method="POST")])
    e(cj.flaky, 3, job_id="retry-enqueued", retry=Retry(max=2))
    e(cj.flaky, 9, job_id="retry-exhausted", retry=Retry(max=1))
    e(cj.ask_retry, 3, job_id="retry-returned")
    e(cj.inspect_self, job_id="current-job")
    e(cj.counted, "rep", job_id="repeat", repeat=Repeat(times=2))
    group = Group.create(connection=client, name="g1")
    group.enqueue_many(
        q,
        [
            Queue.prepare_data(cj.add, (7, 7), job_id="group-kept"),
            Queue.prepare_data(cj.add, (8, 8), job_id="group-gone", result_ttl=0),
        ],
    )
    return [
        "ttl-default", "ttl-zero", "ttl-forever", "none-result", "failure-ttl", "job-ttl",
        "parent", "child", "bad-parent", "child-of-bad", "child-allowed", "cb-ok", "cb-bad",
        "cb-raises", "hook-ok", "hook-bad", "retry-enqueued", "retry-exhausted",
        "retry-returned", "current-job", "repeat", "group-kept", "group-gone",
    ]  # fmt: skip


def timeout_scenario(client: redis.Redis) -> list[str]:
    """Timeouts: an interruptible job and a blocking one, each past a 1 s job_timeout."""
    import conformance_jobs as cj

    q = Queue(Q, connection=client, serializer=JSONSerializer)
    q.enqueue(cj.nap, 3, job_id="timeout-nap", job_timeout=1)
    q.enqueue(cj.block, 3, job_id="timeout-block", job_timeout=1, retry=Retry(max=1))
    return ["timeout-nap", "timeout-block"]


def order_scenario(client: redis.Redis) -> list[str]:
    """at_front, a job scheduled for later, a cancelled job, a retry with a delay (scheduled)."""
    import conformance_jobs as cj

    q = Queue(Q, connection=client, serializer=JSONSerializer)
    q.enqueue(cj.ordered, "a", job_id="o-a")
    q.enqueue(cj.ordered, "b", job_id="o-b")
    q.enqueue(cj.ordered, "c", job_id="o-c", at_front=True)
    q.enqueue_in(timedelta(seconds=3600), cj.ordered, "d", job_id="o-d")
    q.enqueue(cj.ordered, "e", job_id="o-cancelled").cancel()
    q.enqueue(cj.flaky, 2, job_id="o-retry-later", retry=Retry(max=1, interval=600))
    return ["o-a", "o-b", "o-c", "o-d", "o-cancelled", "o-retry-later"]


def observed(
    system: str,
    scenario: Callable[[redis.Redis], list[str]],
    client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    order: bool = True,
) -> dict[str, Any]:
    from acmeq.worker.recovery import maintain_queue

    client.flushdb()
    ids = scenario(client)
    run_burst(system, redis_url, tmp_path)
    # RQ leaves a dependent whose enqueue raced another worker in the ReadyJobRegistry for
    # its maintenance (`clean_registries`); acmeq's master runs that every few seconds
    maintain_queue(client, Q)
    if client.llen(f"rq:queue:{Q}"):
        run_burst(system, redis_url, tmp_path)
    time.sleep(0.3)  # webhooks are sent from the worker after it recorded the job
    return snapshot(client, ids, order=order)


def compare(
    scenario: Callable[[redis.Redis], list[str]],
    client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    reference: str,
    systems: list[str],
    order: bool = True,
) -> None:
    ref = observed(reference, scenario, client, redis_url, tmp_path, order)
    problems = {}
    for system in systems:
        got = observed(system, scenario, client, redis_url, tmp_path, order)
        if diff(ref, got):
            problems[system] = diff(ref, got)
    assert not problems, _explain(problems, tmp_path)


def _explain(problems: dict[str, Any], tmp_path: Path) -> str:
    lines = []
    for system, d in problems.items():
        lines.append(f"== {system} differs from plain RQ:")
        for key, (want, got) in d.items():
            lines.append(f"  {key}:\n    rq:    {want}\n    acmeq: {got}")
        err = tmp_path / f"{system}.err"
        if err.exists():
            lines.append("  worker log tail: " + err.read_text()[-1500:])
    return "\n".join(lines)


# -- the tests -------------------------------------------------------------------------------------


def test_plain_job_features_end_as_under_rq_simple_worker(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, hooks: str
) -> None:
    # Given results, TTLs, dependencies, callbacks, webhooks, Retry, meta, groups and repeats
    # When plain RQ's SimpleWorker and acmeq's worker in each model run them (burst)
    # Then Redis ends in the same state and the same calls were made
    def scenario(client: redis.Redis) -> list[str]:
        return plain_scenarios(client, hooks)

    compare(scenario, redis_client, redis_url, tmp_path, "rq-simple", ACMEQ, order=False)


def test_timeouts_end_as_under_rq(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # Given jobs past a 1 s timeout (one in a blocking call, with one retry)
    # Then every model fails them with RQ's JobTimeoutException message and retries per tries
    compare(timeout_scenario, redis_client, redis_url, tmp_path, "rq-simple", ACMEQ)


def test_at_front_and_scheduled_jobs_end_as_under_rq(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # Threads mode starts jobs concurrently: the start order is compared for the other models.
    compare(order_scenario, redis_client, redis_url, tmp_path, "rq-simple", ["inline", "fork"])
    compare(
        order_scenario, redis_client, redis_url, tmp_path, "rq-simple", ["threads"], order=False
    )


def stop_scenario(client: redis.Redis) -> list[str]:
    import conformance_jobs as cj

    q = Queue(Q, connection=client, serializer=JSONSerializer)
    q.enqueue(cj.nap, 20, job_id="to-stop", on_stopped=Callback(cj.on_stop), retry=Retry(max=2))
    return ["to-stop"]


def run_and_stop(
    system: str, client: redis.Redis, redis_url: str, tmp_path: Path
) -> dict[str, Any]:
    client.flushdb()
    ids = stop_scenario(client)

    def during() -> None:
        wait_until("job started", lambda: client.hget("rq:job:to-stop", "status") == b"started")
        time.sleep(0.3)
        send_stop_job_command(client, "to-stop", serializer=JSONSerializer)

    run_burst(system, redis_url, tmp_path, during)
    return snapshot(client, ids)


@pytest.mark.parametrize("system", ACMEQ)
def test_stop_job_command_ends_the_job_stopped_as_under_rq_fork_worker(
    system: str, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # Given a running job with an on_stopped callback and tries left
    # When RQ's send_stop_job_command names it
    # Then it ends STOPPED in the failed registry, not retried, its callback called, as RQ's
    # forking Worker does (RQ's SimpleWorker cannot stop a job: a documented difference)
    ref = run_and_stop("rq-fork", redis_client, redis_url, tmp_path)
    got = run_and_stop(system, redis_client, redis_url, tmp_path)
    assert ref["job to-stop"]["status"] == "stopped"
    # Documented difference: RQ's parent saves its stale copy of the job (issue #9, 4), which
    # blanks worker_name, ended_at and last_heartbeat and skips the working time; acmeq keeps
    # them.
    assert got["job to-stop"]["worker_name"] == "<set>"
    for snap in (ref, got):
        for name in ("ended_at", "last_heartbeat", "worker_name"):
            snap["job to-stop"].pop(name)
        snap["worker counters"].pop("total_working_time")
    assert not diff(ref, got), _explain({system: diff(ref, got)}, tmp_path)


@pytest.mark.parametrize("system", ACMEQ)
def test_shutdown_command_stops_the_worker_after_its_job(
    system: str, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # Given a non-burst worker running a 1 s job with a second job queued
    import conformance_jobs as cj

    q = Queue(Q, connection=redis_client, serializer=JSONSerializer)
    q.enqueue(cj.nap, 1, job_id="first")
    q.enqueue(cj.add, 1, 1, job_id="second")
    proc = start(system, redis_url, tmp_path, burst=False)
    try:
        wait_until("job started", lambda: redis_client.hget("rq:job:first", "status") == b"started")
        name = _t(redis_client.hget("rq:job:first", "worker_name"))
        # When RQ's send_shutdown_command reaches it
        send_shutdown_command(redis_client, name)
        # Then it finishes the running job and exits without taking the next one (as RQ's
        # warm shutdown)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert redis_client.hget("rq:job:first", "status") == b"finished"
    if system != "threads":  # threads mode ran `second` beside `first`
        assert redis_client.lrange(f"rq:queue:{Q}", 0, -1) == [b"second"]


def test_rq_info_sees_an_acmeq_worker_as_rq_s_own(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    # A failing job leaves the worker idle (not busy) with its counters, as RQ's does.
    import conformance_jobs as cj
    from rq import Worker

    q = Queue(Q, connection=redis_client, serializer=JSONSerializer)
    q.enqueue(cj.boom, job_id="f1")
    proc = start("inline", redis_url, tmp_path, burst=False)
    try:
        wait_until("job failed", lambda: redis_client.hget("rq:job:f1", "status") == b"failed")
        workers = wait_until("worker", lambda: Worker.all(connection=redis_client))
        worker = workers[0]
        wait_until("idle", lambda: (worker.refresh() or True) and worker.get_state() == "idle")
        assert worker.failed_job_count == 1 and worker.queue_names() == [Q]
        failed_job = Job.fetch("f1", connection=redis_client, serializer=JSONSerializer)
        assert failed_job.worker_name == worker.name  # not '' as a stale save would write
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# -- hostile input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("system", ACMEQ)
def test_a_pickled_job_and_a_foreign_callback_cost_one_failed_entry_each_never_a_worker(
    system: str, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    import conformance_jobs as cj
    from rq.serializers import DefaultSerializer

    # Given normal jobs, a job pushed by plain RQ with its pickle serializer, and a job whose
    # hash names an undeclared function as its success and failure callbacks
    q = Queue(Q, connection=redis_client, serializer=JSONSerializer)
    pickled_q = Queue(Q, connection=redis_client, serializer=DefaultSerializer)
    ids = []
    for i in range(10):
        ids.append(q.enqueue(cj.add, i, 1, job_id=f"n{i}").id)
        if i == 3:
            pickled_q.enqueue(cj.add, 1, 1, job_id="pickled")
        if i == 6:
            q.enqueue(cj.add, 1, 1, job_id="foreign")
            redis_client.hset(
                "rq:job:foreign",
                mapping={
                    "success_callback_name": "conformance_jobs.not_declared",
                    "failure_callback_name": "conformance_jobs.not_declared",
                },
            )
    # and a job hash with missing fields
    redis_client.hset("rq:job:broken", mapping={"origin": Q, "status": "queued"})
    redis_client.rpush(f"rq:queue:{Q}", "broken")
    # When one acmeq worker serves the queue (burst)
    proc = start(system, redis_url, tmp_path)
    assert proc.wait(timeout=60) == 0, (tmp_path / f"{system}.err").read_text()[-2000:]
    # Then every normal job finished, the two hostile ones failed, and nothing foreign ran
    for job_id in ids:
        assert redis_client.hget(f"rq:job:{job_id}", "status") == b"finished", job_id
    assert redis_client.hget("rq:job:pickled", "status") == b"failed"
    assert redis_client.hget("rq:job:foreign", "status") == b"failed"
    assert redis_client.hget("rq:job:broken", "status") == b"failed"
    calls = [_t(c) for c in redis_client.lrange(CALLS, 0, -1)]
    assert not [c for c in calls if c.startswith("FOREIGN")]
    failed = sorted(_t(m) for m in redis_client.zrange(f"rq:failed:{Q}", 0, -1))
    assert failed == ["broken", "foreign", "pickled"]


def test_maintenance_never_imports_a_foreign_callback_of_an_abandoned_job(
    redis_client: redis.Redis, job_modules: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a started job whose heartbeat expired and whose hash names an undeclared failure
    # callback (`builtins.print` in the issue; a module function here, to see a call)
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "conformance_jobs")
    monkeypatch.syspath_prepend(str(TESTS))
    from acmeq.worker.recovery import maintain_queue

    redis_client.hset(
        "rq:job:abandoned",
        mapping={
            "status": "started",
            "origin": Q,
            "data": "[]",
            "failure_callback_name": "conformance_jobs.not_declared",
            "created_at": "2026-01-01T00:00:00.000000Z",
        },
    )
    redis_client.zadd(f"rq:wip:{Q}", {"abandoned:e1": time.time() - 5})
    # When the master's maintenance runs RQ's registry cleanup
    maintain_queue(redis_client, Q)
    # Then the job is failed (RQ's abandoned-job handling) and the callback never ran
    assert redis_client.hget("rq:job:abandoned", "status") == b"failed"
    assert redis_client.lrange(CALLS, 0, -1) == []


def test_maintenance_enqueues_a_dependent_stranded_in_the_ready_registry(
    redis_client: redis.Redis, job_modules: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conformance_jobs as cj
    from rq.registry import ReadyJobRegistry

    from acmeq.worker.recovery import maintain_queue

    monkeypatch.setenv("ACMEQ_JOB_MODULES", "conformance_jobs")
    q = Queue(Q, connection=redis_client, serializer=JSONSerializer)
    parent = q.enqueue(cj.add, 1, 1, job_id="p")
    q.enqueue(cj.add, 2, 2, job_id="c", depends_on=parent)
    # Given a dependent moved to ready whose enqueue never happened (a worker died between)
    registry = ReadyJobRegistry(Q, connection=redis_client, serializer=JSONSerializer)
    child = Job.fetch("c", connection=redis_client, serializer=JSONSerializer)
    with redis_client.pipeline() as pipe:
        registry.add(child, pipeline=pipe)
        pipe.execute()
    redis_client.hset("rq:job:c", "status", "ready_to_enqueue")
    redis_client.lrem(f"rq:queue:{Q}", 0, "p")
    # When the master's maintenance runs
    maintain_queue(redis_client, Q)
    # Then the dependent is on its queue
    assert b"c" in redis_client.lrange(f"rq:queue:{Q}", 0, -1)


# -- kill -9 storm ---------------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("system", ACMEQ)
def test_a_kill_9_storm_loses_no_job(
    system: str, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A worker SIGKILLed ~0.3 s into its work, six times over, while 80 short jobs (40 in
    fork mode) run; the master's recovery (run here after each kill) retries their jobs. The
    ledger (every run writes a row) must show every job completed; duplicates are counted."""
    import conformance_jobs as cj

    from acmeq.worker.recovery import maintain_queue, recover_dead_worker

    q = Queue(Q, connection=redis_client, serializer=JSONSerializer)
    total = 40 if system == "fork" else 80  # a fork per job is slow on a loaded machine
    for i in range(total):
        q.enqueue(cj.counted, f"j{i}", 0.05, job_id=f"k{i}", retry=Retry(max=10))
    kills = 0
    for _ in range(6):
        if redis_client.zcard(f"rq:finished:{Q}") >= total:
            break
        proc = start(system, redis_url, tmp_path, burst=False)
        key = f"rq:worker:W.{proc.pid}"
        wait_until("worker registered", lambda k=key: redis_client.exists(k), timeout=30)
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        kills += 1
        # what the master does when it reaps a dead worker, and its periodic maintenance
        recover_dead_worker(redis_client, f"W.{proc.pid}", Q, "killed by the storm")
        maintain_queue(redis_client, Q)
        # jobs retried with a delay go back to the queue at once (the master's scheduler)
        for job_id in redis_client.zrange(f"rq:scheduled:{Q}", 0, -1):
            redis_client.zrem(f"rq:scheduled:{Q}", job_id)
            redis_client.rpush(f"rq:queue:{Q}", job_id)
            redis_client.hset(f"rq:job:{_t(job_id)}", "status", "queued")
        # put back ids left in the intermediate list by a worker killed mid-BLMOVE
        while redis_client.lmove(f"rq:queue:{Q}:intermediate", f"rq:queue:{Q}", "RIGHT", "LEFT"):
            pass
    # drain what is left with one burst worker
    run_burst(system, redis_url, tmp_path)
    ledger = [_t(c) for c in redis_client.lrange(CALLS, 0, -1)]
    ran = {c.split(":", 1)[1] for c in ledger}
    missing = [f"j{i}" for i in range(total) if f"j{i}" not in ran]
    duplicates = len(ledger) - len(ran)
    print(f"{system}: {kills} kills, {len(ledger)} runs, {duplicates} duplicates")
    assert kills >= 3
    assert not missing, f"lost: {missing}"
    assert redis_client.zcard(f"rq:finished:{Q}") == total
