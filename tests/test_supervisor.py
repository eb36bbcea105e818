"""The master (`acmeq worker start`), run as a real process tree against the private redis-server.

Every test starts ``python -m acmeq worker start --profile P --hostname H`` as a real subprocess,
in its own process group, in a working directory whose ``acmeq.toml`` defines small fast profiles
(below). It enqueues real jobs (tests/sample_jobs.py) and reads the outcome where an operator
would: job statuses and results, RQ's registries, the master's exit code and log, ``acmeq worker
list --json`` and the process table (psutil). A second process (``run_cli``) plays the operator on
another terminal or host. Waits are bounded by generous deadlines; no test asserts how long
anything took. Whatever a test leaves running is killed (the master's whole process tree: workers
run in sessions of their own) and the master's log is printed when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from master_support import MasterStarter, alive
from rq.job import JobStatus

from acmeq.config.settings import Settings
from acmeq.master import control
from acmeq.queues import AcmeqJob, Enqueuer, JobCall

from conftest import ROOT, run_cli, wait_until

TESTS = Path(__file__).resolve().parent

# Profiles of these tests. Queues keep the catalog's tries (reports 3, exports 2, notifications 3,
# payments 5, bulk 1) with backoffs of a second, so retries happen within a test.
CONFIG = """
[queues.reports]
backoff = [1, 1]

[queues.exports]
backoff = [1]

[queues.notifications]
backoff = [1, 1]

[queues.payments]
backoff = [1, 1, 1, 1]

# one supervisor per execution model, each on its own queue
[profiles.modes.supervisors.inline]
queues = ["notifications"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "inline"

[profiles.modes.supervisors.threads]
queues = ["payments"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "threads"
concurrency = 4

[profiles.modes.supervisors.fork]
queues = ["bulk"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "fork"

# a retried queue (reports: 3 tries) and an at-most-once queue (bulk: 1 try)
[profiles.recovery.supervisors.retried]
queues = ["reports"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.recovery.supervisors.once]
queues = ["bulk"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.single.supervisors.reports]
queues = ["reports"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.single-bulk.supervisors.bulk]
queues = ["bulk"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.recovery-fork.supervisors.retried]
queues = ["reports"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "fork"

[profiles.recovery-fork.supervisors.once]
queues = ["bulk"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "fork"

# a steady pool, and an autoscaled pool that starts empty (for the boot-error test)
[profiles.bootcheck.supervisors.steady]
queues = ["payments"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.bootcheck.supervisors.flaky]
queues = ["notifications"]
balance = "auto"
strategy = "size"
min_processes = 0
max_processes = 1
cooldown = 0.5

[profiles.hog.supervisors.reports]
queues = ["reports"]
balance = "off"
min_processes = 1
max_processes = 1
memory = 150

[profiles.burst.supervisors.reports]
queues = ["reports"]
balance = "auto"
strategy = "size"
min_processes = 1
max_processes = 4
max_shift = 2
cooldown = 0.5

[profiles.pausable.supervisors.mail]
queues = ["notifications"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.pausable.supervisors.money]
queues = ["payments"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.rolling.supervisors.reports]
queues = ["reports"]
balance = "off"
min_processes = 2
max_processes = 2

[profiles.retries.supervisors.exports]
queues = ["exports"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.explain.supervisors.front]
queues = ["payments", "notifications"]
balance = "auto"
strategy = "time"
min_processes = 1
max_processes = 3
cooldown = 0.5
"""


# -- helpers ---------------------------------------------------------------------------------------


StartMaster = MasterStarter


@pytest.fixture(autouse=True)
def acmeq_toml(tmp_path: Path) -> Path:
    """The profiles above, in the working directory where every acmeq process is started."""
    path = tmp_path / "acmeq.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def start_master(
    redis_url: str, job_modules: str, acmeq_toml: Path, tmp_path: Path
) -> Iterator[StartMaster]:
    """Start masters like an operator does; at the end kill what is left and show their logs."""
    starter = MasterStarter(tmp_path, redis_url)
    yield starter
    starter.cleanup()


@pytest.fixture
def enqueuer(redis_client: redis.Redis, job_modules: str, acmeq_toml: Path) -> Enqueuer:
    """Enqueues with the same acmeq.toml (tries, backoffs) as the masters read."""
    return Enqueuer(Settings.load(acmeq_toml), redis_client)


def status(client: redis.Redis, job_id: str) -> JobStatus:
    return AcmeqJob.fetch(job_id, connection=client).get_status()


def statuses(client: redis.Redis, ids: list[str]) -> Counter[str]:
    """How many of ``ids`` are in each status (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    return Counter((s or b"missing").decode() for s in pipe.execute())


def all_finished(client: redis.Redis, ids: list[str]) -> Callable[[], bool]:
    return lambda: statuses(client, ids) == Counter({"finished": len(ids)})


def exc_string(client: redis.Redis, job_id: str) -> str:
    result = AcmeqJob.fetch(job_id, connection=client).latest_result()
    assert result is not None, f"job {job_id} has no result"
    return result.exc_string or ""


def running(client: redis.Redis, queue: str, job_id: str) -> bool:
    """Whether the job is being executed (its execution is in ``rq:wip:<queue>``)."""
    return any(m.decode().startswith(job_id + ":") for m in client.zrange(f"rq:wip:{queue}", 0, -1))


def wip_entries(client: redis.Redis) -> dict[str, int]:
    """Every non-empty ``rq:wip:*`` registry and its size."""
    found = {k.decode(): client.zcard(k) for k in client.scan_iter("rq:wip:*")}
    return {k: n for k, n in found.items() if n}


def registered(client: redis.Redis, queue: str) -> set[int]:
    """Pids of the workers registered with RQ on ``queue`` (``rq:worker:<name>.<pid>``)."""
    return {int(m.decode().rpartition(".")[2]) for m in client.smembers(f"rq:workers:{queue}")}


def wait_for_workers(client: redis.Redis, counts: dict[str, int], timeout: float = 30.0) -> None:
    """Wait until each queue has exactly that many workers registered with RQ."""
    wait_until(
        f"workers registered: {counts}",
        lambda: all(len(registered(client, q)) == n for q, n in counts.items()),
        timeout,
    )


def cli_json(*args: str) -> Any:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def listing(name: str) -> dict[str, Any] | None:
    """Master ``name`` in `acmeq worker list --json` (a second process)."""
    return next((m for m in cli_json("worker", "list", "--json") if m["name"] == name), None)


def pool(view: dict[str, Any] | control.MasterView, supervisor: str, queue: str) -> dict[str, Any]:
    sups = view["supervisors"] if isinstance(view, dict) else view.supervisors
    sup = next(s for s in sups if s["name"] == supervisor)
    return next(p for p in sup["pools"] if p["queue"] == queue)


# -- 1. draining on every execution model, clean terminate -----------------------------------------


@pytest.mark.timeout(120)
def test_jobs_drain_on_every_execution_model_and_terminate_leaves_nothing_behind(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master with one supervisor per execution model: inline (notifications),
    # threads x4 (payments) and fork (bulk)
    master = start_master("modes", "modes-host")
    wait_for_workers(redis_client, {"notifications": 1, "payments": 1, "bulk": 1})

    # When 500 trivial jobs arrive on each model's queue
    noops = enqueuer.enqueue_many([JobCall("noop") for _ in range(500)])
    adds = enqueuer.enqueue_many([JobCall("add", (i, 1)) for i in range(500)])
    echoes = enqueuer.enqueue_many([JobCall("echo", kwargs={"n": i}) for i in range(500)])

    # Then every one of them finishes, with its return value
    for ids in (noops, adds, echoes):
        wait_until("1,500 jobs finished", all_finished(redis_client, ids), timeout=90, every=0.5)
    assert AcmeqJob.fetch(adds[41], connection=redis_client).return_value() == 42
    assert AcmeqJob.fetch(echoes[7], connection=redis_client).return_value() == {"n": 7}

    # When an operator stops the master from another process and waits
    tree = master.tree()
    assert len(master.workers()) == 3
    stop = run_cli("worker", "terminate", "--wait", timeout=90)

    # Then the command and the master both end cleanly
    assert stop.returncode == 0, stop.stderr
    assert master.wait(30) == 0
    # and no worker (or fork-mode work horse) outlives it, no job is left executing
    assert [p.pid for p in tree if alive(p)] == []
    assert wip_entries(redis_client) == {}
    # and it no longer shows in `acmeq worker list`
    assert listing("modes-host") is None


# -- 2. a worker killed mid-job --------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["inline", "fork"])
def test_a_worker_killed_mid_job_is_replaced_and_its_job_is_retried_or_failed_never_lost(
    mode: str, start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master serving reports (3 tries, 1 s backoff) and bulk (1 try) in this mode
    profile = "recovery" if mode == "inline" else "recovery-fork"
    master = start_master(profile, f"kill-{mode}")
    wait_for_workers(redis_client, {"reports": 1, "bulk": 1})
    # and a 5-second job running on each (each run records its start and its completion)
    retried = enqueuer.enqueue("tally_report", "retried", 5).id
    once = enqueuer.enqueue("tally_bulk", "once", 5).id
    wait_until(
        "both jobs running",
        lambda: running(redis_client, "reports", retried) and running(redis_client, "bulk", once),
    )

    # When `acmeq worker list --json` names the busy workers and each is killed with SIGKILL
    def busy() -> dict[str, int]:
        entry = listing(f"kill-{mode}")
        procs = entry["processes"] if entry else []
        return {p["current_job"]: p["pid"] for p in procs if p["state"] == "busy"}

    pids = wait_until(
        "list to show both workers busy", lambda: (b := busy()).keys() >= {retried, once} and b
    )
    killed = {pids[retried], pids[once]}
    assert killed <= {p.pid for p in master.workers()}
    horses = [h for w in master.workers() if w.pid in killed for h in w.children()]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)

    # Then each pool gets a replacement worker with a new pid
    wait_for_workers(redis_client, {"reports": 1, "bulk": 1})
    wait_until(
        "replacement workers",
        lambda: len(master.workers()) == 2 and not killed & {p.pid for p in master.workers()},
    )
    assert not killed & (registered(redis_client, "reports") | registered(redis_client, "bulk"))

    # and the job with tries left is scheduled for a retry, run again, and finishes
    wait_until(
        "the retried job to finish",
        lambda: status(redis_client, retried) == JobStatus.FINISHED,
        timeout=40,
    )
    assert AcmeqJob.fetch(retried, connection=redis_client).retries_left == 1  # one retry used

    # and the job with one try is failed as abandoned, exactly once, not run again
    wait_until("the once-only job to fail", lambda: status(redis_client, once) == JobStatus.FAILED)
    text = exc_string(redis_client, once)
    assert "AbandonedJobError" in text
    assert "killed by signal 9" in text
    assert redis_client.zscore("rq:failed:bulk", once) is not None
    assert redis_client.lrange("rq:queue:bulk", 0, -1) == []
    assert redis_client.zcard("rq:scheduled:bulk") == 0
    assert wip_entries(redis_client) == {}
    assert master.proc.poll() is None

    # and the killed runs died with their workers: by the time the retry completed (its 1 s
    # backoff and 5 s run after the kill), only the retry ran to its end, and the abandoned
    # once-only job never did (a fork-mode work horse left running by its dead worker would
    # have completed both, the retried one concurrently with its retry)
    assert [h.pid for h in horses if alive(h)] == []
    assert redis_client.llen("test:started:retried") == 2
    assert redis_client.llen("test:completed:retried") == 1
    assert redis_client.llen("test:started:once") == 1
    assert redis_client.llen("test:completed:once") == 0


# -- 3. the master killed with SIGKILL -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_master_killed_with_sigkill_leaves_no_orphan_workers(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master with two workers, one of them running a short job
    master = start_master("recovery", "doomed-host")
    wait_for_workers(redis_client, {"reports": 1, "bulk": 1})
    job = enqueuer.enqueue("nap", 1.5).id
    wait_until("the job running", lambda: running(redis_client, "bulk", job))
    workers = master.workers()
    assert len(workers) == 2

    # When the master is killed with SIGKILL (it cannot stop its workers itself)
    master.signal(signal.SIGKILL)
    assert master.wait(10) == -signal.SIGKILL

    # Then every former worker exits on its own soon after (the kernel's parent-death signal)
    wait_until(
        "no orphaned worker left",
        lambda: not [w.pid for w in workers if alive(w)],
        timeout=10,
    )
    # and the worker that was busy finished its job first
    assert status(redis_client, job) == JobStatus.FINISHED


# -- 4. stopping with signals ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigterm_lets_the_running_job_finish_and_the_master_exits_0(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master whose reports worker runs a 5-second job
    master = start_master("recovery", "graceful-host")
    wait_for_workers(redis_client, {"reports": 1, "bulk": 1})
    job = enqueuer.enqueue("long_report", 5).id
    wait_until("the job running", lambda: running(redis_client, "reports", job))
    workers = master.tree()

    # When the master gets SIGTERM
    master.signal(signal.SIGTERM)

    # Then it waits for the job, which finishes, and exits 0 with no worker left behind
    assert master.wait(60) == 0
    assert status(redis_client, job) == JobStatus.FINISHED
    assert wip_entries(redis_client) == {}
    assert [w.pid for w in workers if alive(w)] == []
    assert "graceful stop" in master.log()


@pytest.mark.timeout(60)
def test_a_graceful_stop_takes_no_new_job(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master whose reports worker runs a 3-second job, with another job waiting
    master = start_master("recovery", "no-new-job-host")
    wait_for_workers(redis_client, {"reports": 1, "bulk": 1})
    first = enqueuer.enqueue("long_report", 3).id
    wait_until("the first job running", lambda: running(redis_client, "reports", first))
    second = enqueuer.enqueue("long_report", 0.5).id

    # When the master gets SIGTERM while the first job runs
    master.signal(signal.SIGTERM)

    # Then the running job finishes and the waiting one stays on its queue for the next master
    assert master.wait(60) == 0
    assert status(redis_client, first) == JobStatus.FINISHED
    assert status(redis_client, second) == JobStatus.QUEUED
    assert [j.decode() for j in redis_client.lrange("rq:queue:reports", 0, -1)] == [second]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigterm-twice", "sigint", "terminate-fast"])
def test_a_fast_stop_interrupts_the_running_job_which_is_retried_not_lost(
    how: str, start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master whose reports worker (3 tries) runs a long job (20 s: longer than the
    # master's 10 s fast-stop grace, so a worker that ignored the fast stop is told apart)
    master = start_master("single", f"fast-{how}")
    wait_for_workers(redis_client, {"reports": 1})
    job = enqueuer.enqueue("tally_report", "fast", 20).id
    # (its body has begun: a fast stop at the very moment a job starts is the next test's case)
    wait_until("the job body running", lambda: redis_client.llen("test:started:fast"))
    workers = master.tree()

    # When the master is told to stop fast: a second SIGTERM after the first, SIGINT, or
    # `acmeq worker terminate --fast` from another process
    if how == "sigterm-twice":
        master.signal(signal.SIGTERM)
        wait_until("the graceful stop to begin", lambda: "graceful stop" in master.log())
        master.signal(signal.SIGTERM)
    elif how == "sigint":
        master.signal(signal.SIGINT)
    else:
        result = run_cli("worker", "terminate", "--fast")
        assert result.returncode == 0, result.stderr

    # Then the master exits without waiting for the job, and no worker is left
    assert master.wait(30) == 0
    assert [w.pid for w in workers if alive(w)] == []
    # and the worker interrupted the job itself: the master did not have to kill it
    log = master.log()
    assert "fast stop" in log
    assert "did not stop in time" not in log
    assert "died (killed by signal" not in log
    # and the job is scheduled for its next try: not finished, not stuck as started
    assert status(redis_client, job) in (JobStatus.SCHEDULED, JobStatus.QUEUED)
    assert AcmeqJob.fetch(job, connection=redis_client).retries_left == 1
    assert redis_client.llen("test:completed:fast") == 0
    assert wip_entries(redis_client) == {}


@pytest.mark.timeout(90)
def test_a_fast_stop_the_moment_a_job_starts_still_interrupts_it(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    """A fast stop may arrive at any instant, including the few milliseconds between a worker
    marking a job started in Redis and entering the job function. Three tries at that instant:
    a correct worker passes every time; one that misses the window fails with high likelihood."""
    for attempt in range(3):
        # Given a master whose bulk worker (1 try: an interrupted job is failed, not retried)
        # is idle
        master = start_master("single-bulk", f"race-{attempt}")
        wait_for_workers(redis_client, {"bulk": 1})
        workers = master.tree()

        # When a long job arrives and the master gets SIGINT the moment the job is started
        job = enqueuer.enqueue("tally_bulk", f"race-{attempt}", 20).id
        wait_until("the job started", lambda j=job: running(redis_client, "bulk", j), every=0)
        master.signal(signal.SIGINT)

        # Then the worker interrupts the job itself: the master need not kill it after its grace
        assert master.wait(30) == 0
        assert [w.pid for w in workers if alive(w)] == []
        log = master.log()
        assert "did not stop in time" not in log, f"attempt {attempt}: fast stop was ignored"
        assert status(redis_client, job) == JobStatus.FAILED
        assert "ShutdownInterrupt" in exc_string(redis_client, job)
        assert redis_client.llen(f"test:completed:race-{attempt}") == 0
        assert wip_entries(redis_client) == {}


# -- 5. a job module that cannot be imported -------------------------------------------------------

BROKEN_MODULE = 'raise RuntimeError("this job module is broken")\n'

# Importable for the master (it imports its job modules once at start) and broken for every
# process started after the marker file appears: the workers a scaled-up pool spawns later.
FLAKY_MODULE = """\
import os

if os.path.exists(os.environ["ACMEQ_TEST_BOOT_MARKER"]):
    raise RuntimeError("job module broken on this host since the deploy")
"""


@pytest.mark.timeout(60)
def test_a_job_module_that_fails_to_import_stops_the_master_at_start(
    redis_url: str, job_modules: str, tmp_path: Path
) -> None:
    # Given a job module that raises when imported
    (tmp_path / "broken_jobs.py").write_text(BROKEN_MODULE)

    # When a master is started with it
    result = run_cli(
        "worker",
        "start",
        "--profile",
        "recovery",
        "--hostname",
        "broken-host",
        env={
            "ACMEQ_JOB_MODULES": "sample_jobs,broken_jobs",
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(tmp_path)]),
        },
        timeout=30,
    )

    # Then it exits 2 at once with one line naming the module, and starts nothing
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot import job module 'broken_jobs'" in lines[0]
    assert "this job module is broken" in lines[0]
    assert control.list_masters(redis.Redis.from_url(redis_url)) == []


@pytest.mark.timeout(60)
def test_a_pool_whose_workers_cannot_boot_halts_instead_of_respawning(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Given a master whose job modules imported fine at start: a steady payments pool, and an
    # autoscaled notifications pool that starts with no worker
    (tmp_path / "flaky_jobs.py").write_text(FLAKY_MODULE)
    marker = tmp_path / "module-broken"
    master = start_master(
        "bootcheck",
        "boot-host",
        env={
            "ACMEQ_JOB_MODULES": "sample_jobs,flaky_jobs",
            "ACMEQ_TEST_BOOT_MARKER": str(marker),
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(tmp_path)]),
        },
    )
    wait_for_workers(redis_client, {"payments": 1})
    steady = master.workers()
    assert len(steady) == 1
    assert registered(redis_client, "notifications") == set()

    # When the module breaks for new processes and a job makes the notifications pool grow
    marker.touch()
    job = enqueuer.enqueue("noop").id
    spawned: set[int] = set()

    def halted() -> str | None:
        spawned.update(p.pid for p in master.workers())
        view = master.view(redis_client)
        return pool(view, "flaky", "notifications")["halted"] if view else None

    reason = wait_until("the notifications pool to halt", halted, timeout=30)

    # Then the pool is halted with the boot error as its reason
    assert "cannot boot" in reason
    assert "flaky_jobs" in reason
    # and stays halted without respawning: no more boot attempts while we watch
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        spawned.update(p.pid for p in master.workers())
        time.sleep(0.05)
    attempts = master.log().count("acmeq worker: cannot boot")  # one line per worker that tried
    assert 1 <= attempts <= 2, master.log()
    assert len(spawned - {p.pid for p in steady}) <= 2
    # and the operator sees why in `acmeq worker list` (text and JSON)
    text = run_cli("worker", "list")
    assert text.returncode == 0, text.stderr
    assert "pool flaky/notifications halted" in text.stdout
    assert "cannot boot" in text.stdout
    entry = listing("boot-host")
    assert entry is not None
    assert "cannot boot" in pool(entry, "flaky", "notifications")["halted"]
    # and the job is not lost: it waits on its queue; the other pool keeps serving
    assert status(redis_client, job) == JobStatus.QUEUED
    paid = enqueuer.enqueue("add", 2, 3).id
    wait_until(
        "the payments job to finish", lambda: status(redis_client, paid) == JobStatus.FINISHED
    )
    assert master.proc.poll() is None
    assert [p.pid for p in master.workers()] == [p.pid for p in steady]

    # When the module is fixed and the operator asks for a restart (as after a deploy)
    marker.unlink()
    assert run_cli("worker", "restart").returncode == 0
    # Then the halted pool tries again, boots, and the waiting job runs
    wait_until(
        "the waiting job to finish after the restart",
        lambda: status(redis_client, job) == JobStatus.FINISHED,
        timeout=60,
    )
    view = master.view(redis_client)
    assert view is not None and pool(view, "flaky", "notifications")["halted"] is None


# -- 6. memory limits ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_memory_hog_is_failed_and_the_pool_keeps_serving(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a reports pool whose supervisor caps workers at 150 MB
    master = start_master("hog", "hog-host")
    wait_for_workers(redis_client, {"reports": 1})
    first = {p.pid for p in master.workers()}

    # When a job allocates 400 MB and holds it
    hog = enqueuer.enqueue("hog", 400, 10).id

    # Then the job is failed for good, naming the limit
    wait_until("the hog to fail", lambda: status(redis_client, hog) == JobStatus.FAILED)
    assert "memory limit 150 MB exceeded" in exc_string(redis_client, hog)
    assert redis_client.zcard("rq:scheduled:reports") == 0
    # and the worker is replaced, and the pool serves the next job
    wait_until(
        "a replacement worker",
        lambda: (pids := {p.pid for p in master.workers()}) and not pids & first,
    )
    after = enqueuer.enqueue("sleep_for", 0.1).id
    wait_until("the next job to finish", lambda: status(redis_client, after) == JobStatus.FINISHED)
    assert master.proc.poll() is None
    assert wip_entries(redis_client) == {}


# -- 7. autoscaling a burst ------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_burst_scales_an_auto_pool_from_min_to_max_and_back(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given an auto pool (size strategy, 1-4 processes, max shift 2, cooldown 0.5 s) at its minimum
    master = start_master("burst", "burst-host")
    wait_for_workers(redis_client, {"reports": 1})
    assert len(master.workers()) == 1

    # When 2,000 jobs of 10 ms arrive at once
    ids = enqueuer.enqueue_many([JobCall("sleep_for", (0.01,)) for _ in range(2000)])

    # Then the pool grows to its maximum while the queue drains, never beyond it
    samples: list[int] = []

    def drained() -> bool:
        samples.append(len(master.workers()))
        return redis_client.llen("rq:queue:reports") == 0 and not running_any()

    def running_any() -> bool:
        return bool(redis_client.zcard("rq:wip:reports"))

    wait_until("the burst to drain", drained, timeout=90, every=0.1)
    assert max(samples) == 4, samples
    assert statuses(redis_client, ids) == Counter({"finished": 2000})

    # and shrinks back to its minimum once the queue is empty
    def back_to_min() -> bool:
        samples.append(len(master.workers()))
        return samples[-1] == 1

    wait_until("the pool back at its minimum", back_to_min, timeout=30, every=0.1)
    view = wait_until(
        "the published pool back at 1",
        lambda: (
            (v := master.view(redis_client))
            and len(pool(v, "reports", "reports")["processes"]) == 1
            and v
        ),
    )
    assert pool(view, "reports", "reports")["desired"] == 1
    assert max(samples) == 4, samples


# -- 8. pause, continue and terminate from another process -----------------------------------------


@pytest.mark.timeout(90)
def test_pause_and_continue_a_queue_or_a_supervisor_then_terminate_from_another_process(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master serving notifications (supervisor mail) and payments (supervisor money)
    master = start_master("pausable", "pause-host")
    wait_for_workers(redis_client, {"notifications": 1, "payments": 1})

    for how, target in (("--queue", "notifications"), ("--supervisor", "mail")):
        # When an operator pauses the queue (or its supervisor) from another process
        paused = run_cli("worker", "pause", how, target)
        assert paused.returncode == 0, paused.stderr
        ids = enqueuer.enqueue_many([JobCall("noop") for _ in range(20)])

        # Then jobs arriving afterwards wait on the queue, none started
        time.sleep(2.5)  # longer than a worker's idle wait (2 s): the pause has been seen
        assert statuses(redis_client, ids) == Counter({"queued": 20}), how
        assert redis_client.llen("rq:queue:notifications") == 20
        # while the other supervisor's queue is still served
        paid = enqueuer.enqueue("add", 1, 2).id
        wait_until("payments served", lambda p=paid: status(redis_client, p) == JobStatus.FINISHED)

        # When the operator continues it
        resumed = run_cli("worker", "continue", how, target)
        assert resumed.returncode == 0, resumed.stderr

        # Then the waiting jobs drain
        wait_until(f"jobs drained after continue {how}", all_finished(redis_client, ids))

    # When the operator terminates the master from another process and waits
    stop = run_cli("worker", "terminate", "--wait", timeout=60)

    # Then the command returns once the master is gone, and the master exits 0
    assert stop.returncode == 0, stop.stderr
    assert "stopped" in stop.stdout
    assert master.wait(30) == 0


# -- 9. several masters in `acmeq worker list` -----------------------------------------------------


@pytest.mark.timeout(90)
def test_worker_list_shows_every_master_refuses_a_duplicate_name_and_marks_a_dead_one_gone(
    start_master: StartMaster, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The one test that waits out a dead master's heartbeat TTL (control.MASTER_TTL_S, 15 s)."""
    # Given two masters started with different host names
    a = start_master("pausable", "host-a")
    b = start_master("pausable", "host-b")
    wait_for_workers(redis_client, {"notifications": 2, "payments": 2})

    # When an operator lists them from another process
    def both_listed() -> dict[str, dict[str, Any]] | None:
        found = {m["name"]: m for m in cli_json("worker", "list", "--json")}
        ok = all(len(found.get(n, {}).get("processes", [])) == 2 for n in ("host-a", "host-b"))
        return found if ok else None

    found = wait_until("both masters listed with their processes", both_listed, every=0.5)

    # Then both are running, each with its own worker processes
    for master in (a, b):
        entry = found[master.name]
        assert entry["status"] == "running"
        assert entry["hostname"] == master.name
        assert entry["pid"] == master.pid
        assert {p["pid"] for p in entry["processes"]} == {p.pid for p in master.workers()}
        assert {p["queue"] for p in entry["processes"]} == {"notifications", "payments"}
    text = run_cli("worker", "list")
    assert "master host-a" in text.stdout and "master host-b" in text.stdout

    # When a second master is started under a name that is taken, on this host ...
    same_host = start_master("pausable", "host-a", wait=False)
    # ... or on another host (its own state directory) sharing the Redis
    other_host = start_master(
        "pausable", "host-a", wait=False, env={"ACMEQ_STATE_DIR": str(tmp_path / "other-host")}
    )

    # Then each refuses to start: exit 2, saying the name is already running
    for dup in (same_host, other_host):
        assert dup.wait(30) == 2
        assert "already running" in dup.log()
    assert a.proc.poll() is None

    # When a master is killed with SIGKILL (it cannot withdraw itself)
    a.signal(signal.SIGKILL)
    a.wait(10)

    # Then, once its heartbeat expires, the list shows it as gone; the other one still runs
    def gone() -> dict[str, Any] | None:
        entry = listing("host-a")
        return entry if entry and entry["status"] == "gone" else None

    entry = wait_until("host-a shown as gone", gone, timeout=control.MASTER_TTL_S + 15, every=1)
    assert entry["pid"] == a.pid
    other = listing("host-b")
    assert other is not None and other["status"] == "running"


# -- 10. rolling restart ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_rolling_restart_replaces_every_worker_and_loses_no_job(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master with two reports workers and a stream of short jobs
    master = start_master("rolling", "rolling-host")
    wait_for_workers(redis_client, {"reports": 2})
    ids: list[str] = []

    for how in ("acmeq worker restart", "SIGHUP"):
        before = {p.pid for p in master.workers()}
        assert len(before) == 2
        ids += enqueuer.enqueue_many([JobCall("sleep_for", (0.02,)) for _ in range(300)])
        wait_until("jobs being worked on", lambda: redis_client.zcard("rq:wip:reports"))

        # When the master is restarted (from another process, or with SIGHUP)
        if how == "SIGHUP":
            master.signal(signal.SIGHUP)
        else:
            result = run_cli("worker", "restart")
            assert result.returncode == 0, result.stderr
            assert "rolling-host" in result.stdout

        # Then every worker is replaced by a new one
        def replaced(before: set[int] = before) -> bool:
            now = {p.pid for p in master.workers()}
            return len(now) == 2 and not now & before and registered(redis_client, "reports") == now

        wait_until(f"all workers replaced after {how}", replaced, timeout=40)
        wait_until(
            "the master back to running",
            lambda: (v := master.view(redis_client)) is not None and v.status == "running",
        )

    # and every job still finishes: none lost, none failed
    wait_until("all jobs finished", all_finished(redis_client, ids), timeout=60, every=0.5)
    assert redis_client.zcard("rq:failed:reports") == 0
    assert wip_entries(redis_client) == {}
    assert master.proc.poll() is None


# -- 11. delayed retries ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_failed_job_is_retried_after_its_backoff_by_the_masters_scheduler(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master serving exports (2 tries, 1 s backoff)
    master = start_master("retries", "retries-host")
    wait_for_workers(redis_client, {"exports": 1})

    # When a job that always fails is enqueued
    job = enqueuer.enqueue("fail_counting", "k1").id

    # Then its first failure schedules it for its second try (1 s later), the master's scheduler
    # moves it back onto the queue, and it runs a second time before it is failed for good
    wait_until(
        "the job failed for good",
        lambda: status(redis_client, job) == JobStatus.FAILED,
        timeout=40,
    )
    assert f"Job {job}: scheduled for retry" in master.log()
    assert redis_client.llen("test:attempts:k1") == 2
    assert AcmeqJob.fetch(job, connection=redis_client).retries_left == 0
    assert "attempt failed on purpose (k1)" in exc_string(redis_client, job)
    assert redis_client.zscore("rq:failed:exports", job) is not None
    assert redis_client.zcard("rq:scheduled:exports") == 0
    assert master.proc.poll() is None


# -- 12. `acmeq worker scale` ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_scale_explain_shows_the_running_masters_decisions(
    start_master: StartMaster, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a master balancing payments and notifications automatically, idle at its minimum
    start_master("explain", "explain-host")
    wait_for_workers(redis_client, {"payments": 1, "notifications": 1})

    # When an operator asks why the pools have their sizes (the master publishes its decisions
    # every 2 s; the first ones, made before its workers started, say "raise to min")
    def settled() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = cli_json("worker", "scale", "--explain", "--json")
        return rows if len(rows) == 2 and all(r["current"] == 1 for r in rows) else None

    rows = wait_until("decisions for both queues at their minimum", settled, every=0.5)

    # Then there is one decision per queue, with its inputs, outcome and reason
    assert {r["queue"] for r in rows} == {"payments", "notifications"}
    for row in rows:
        assert row["master"] == "explain-host"
        assert row["supervisor"] == "front"
        for key in ("ready", "current", "desired", "busy", "oldest_age", "avg_runtime"):
            assert isinstance(row[key], int | float), (key, row)
        assert row["desired"] == 1
        assert row["reason"].startswith("hold at 1"), row
    table = run_cli("worker", "scale", "--explain")
    assert table.returncode == 0, table.stderr
    assert "explain-host" in table.stdout and "reason" in table.stdout


def test_scale_simulate_charts_a_trace_and_names_the_line_of_a_bad_one(tmp_path: Path) -> None:
    # Given the burst trace shipped in bench/
    trace = ROOT / "bench" / "traces" / "burst.csv"

    # When it is replayed through the production profile's balancer
    result = run_cli("worker", "scale", "--simulate", str(trace))

    # Then a chart of processes over time is printed
    assert result.returncode == 0, result.stderr
    assert "t (s)" in result.stdout
    assert "notifications" in result.stdout and "payments" in result.stdout

    # Given a trace with a bad value on its third line
    bad = tmp_path / "bad.csv"
    bad.write_text("t,queue,arrivals,runtime\n0,payments,5,0.05\n1,payments,five,0.05\n")

    # Then the simulation refuses it with exit 2, naming the file and the line
    result = run_cli("worker", "scale", "--simulate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: arrivals" in result.stderr
