"""Worker throughput: acmeq's three execution models vs RQ, Celery and Dramatiq, all on Redis.

One private redis-server, one database per system, 2 worker processes per system, started with
each system's real CLI. For every system:

1. the measured batches (N noop jobs, M 10-ms-sleep jobs) are enqueued with the system's bulk
   API (not timed) and each batch's list is RENAMEd aside to a staging key;
2. the workers start; warm-up rounds of short jobs run until *both* processes have run one in
   the same round (start-up is never measured, and no process is still booting or backing off);
3. each staged batch is RENAMEd back onto the live queue key in one atomic step (Redis wakes the
   blocked consumers), and the rate is N / (last job end - first job start), from time stamps
   the jobs write themselves: every job body is the same few lines (bench/peers/bench_record.py)
   and pays one EVALSHA to record itself, for every system alike;
4. the workers get SIGTERM (graceful) and, for RQ and acmeq, RQ's registries are checked: every
   job finished exactly once, none failed, none left started or queued.

With --rounds R the whole sequence runs R times, round-robin over the systems, and each rate is
the best of its rounds. "ready" is start-up until both processes ran a job; "stop" is SIGTERM
until every process is gone.

Then the latency probe: an idle acmeq `inline` pool (2 workers), 200 jobs enqueued one by one
20 ms apart, each recording start - enqueue time. Targets (issue): acmeq inline >= 1.0x Celery
on noop, acmeq threads >= 0.7x Dramatiq 8 threads on 10-ms jobs, acmeq fork >= 1.0x RQ's fork
pool, enqueue-to-start p50 <= 5 ms.

    .venv/bin/pip install -r bench/requirements-peers.txt   # Celery, Dramatiq
    .venv/bin/python bench/throughput.py [--jobs 2000] [--sleep-jobs 1000] [--rounds 1]
        [--only acmeq-inline,celery,...] [--logs DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psutil
import redis

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(PEERS))
import bench_record  # noqa: E402

from _redis import private_redis  # noqa: E402

VENV_BIN = Path(sys.executable).parent
PROCESSES = 2
SLEEP_S = 0.01
WARM_S = 0.02
KINDS = ("noop", "sleep")
STALL_S = 20.0  # a batch that makes no progress for this long is reported incomplete
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
POLL_S = 0.01
INSTALL_HINT = ".venv/bin/pip install -r bench/requirements-peers.txt"

# Measured on this machine before acmeq existed (2 processes; noop / 10-ms jobs, jobs/s).
ISSUE_REF: dict[str, tuple[int, int]] = {
    "rq-fork": (65, 50),
    "rq-simple": (270, 116),
    "celery": (450, 170),
    "dramatiq-1": (490, 168),
    "dramatiq-8": (3080, 1390),
}


@dataclass(frozen=True)
class System:
    key: str  # the --only name
    label: str
    family: str  # acmeq | rq | celery | dramatiq
    db: int
    slots: int  # jobs at once over both processes
    forks_per_job: bool  # jobs run in a child forked per job (identify the worker by ppid)
    mode: str = ""  # acmeq: inline | threads | fork
    threads: int = 1  # acmeq threads / dramatiq -t
    worker_class: str = ""  # rq -w


SYSTEMS: tuple[System, ...] = (
    System("acmeq-inline", "acmeq inline", "acmeq", 1, 2, False, mode="inline"),
    System("acmeq-threads", "acmeq threads x8", "acmeq", 2, 16, False, "threads", 8),
    System("acmeq-fork", "acmeq fork", "acmeq", 3, 2, True, mode="fork"),
    System("rq-fork", "rq worker-pool (fork)", "rq", 4, 2, True),
    System("rq-simple", "rq worker-pool Simple", "rq", 5, 2, False, worker_class="rq.SimpleWorker"),
    System("celery", "celery prefork -c 2", "celery", 6, 2, False),
    System("dramatiq-1", "dramatiq -p 2 -t 1", "dramatiq", 7, 2, False, threads=1),
    System("dramatiq-8", "dramatiq -p 2 -t 8", "dramatiq", 8, 16, False, threads=8),
)
LATENCY = System("latency", "acmeq inline (idle)", "acmeq", 9, 2, False, mode="inline")
PEER_PACKAGES = {"celery": "celery", "dramatiq": "dramatiq"}


class BenchError(Exception):
    """A system could not be measured (its workers died, never became ready ...)."""


# -- each system's enqueue API and CLI -------------------------------------------------------


class Adapter(Protocol):
    live_key: str  # the Redis list the workers consume

    def enqueue(self, kind: str, count: int, args: Sequence[Any]) -> None: ...

    def commands(self) -> list[list[str]]: ...

    def close(self) -> None: ...


class AcmeqAdapter:
    def __init__(self, system: System, url: str) -> None:
        import bench_jobs

        from acmeq.config.settings import Settings
        from acmeq.queues import Enqueuer

        self.system = system
        self.queue = bench_jobs.QUEUE
        self.live_key = f"rq:queue:{self.queue}"
        self.client = redis.Redis.from_url(url)
        settings = Settings.load(env={"REDIS_URL": url, "ACMEQ_JOB_MODULES": "bench_jobs"})
        self.enqueuer = Enqueuer(settings, self.client)

    def enqueue(self, kind: str, count: int, args: Sequence[Any]) -> None:
        from acmeq.queues import JobCall

        self.enqueuer.enqueue_many(JobCall(f"bench_{kind}", tuple(args)) for _ in range(count))

    def enqueue_one(self, kind: str, args: Sequence[Any]) -> None:
        self.enqueuer.enqueue(f"bench_{kind}", *args)

    def commands(self) -> list[list[str]]:
        from acmeq.worker.process import WorkerOptions

        return [
            [
                sys.executable,
                "-m",
                "acmeq.worker.process",
                WorkerOptions(
                    queue=self.queue,
                    mode=self.system.mode,
                    concurrency=self.system.threads,
                    name=f"bench-{self.system.key}-{i}",
                    burst=False,
                ).to_json(),
            ]
            for i in range(PROCESSES)
        ]

    def close(self) -> None:
        self.client.close()


class RqAdapter:
    def __init__(self, system: System, url: str) -> None:
        from rq import Queue

        self.system = system
        self.url = url
        self.client = redis.Redis.from_url(url)
        self.queue = Queue(bench_record.PEER_QUEUE, connection=self.client)  # RQ defaults (pickle)
        self.live_key = self.queue.key

    def enqueue(self, kind: str, count: int, args: Sequence[Any]) -> None:
        from rq import Queue

        for start in range(0, count, 500):
            batch = [
                Queue.prepare_data(f"rq_jobs.{kind}", args=tuple(args))
                for _ in range(min(500, count - start))
            ]
            self.queue.enqueue_many(batch)

    def commands(self) -> list[list[str]]:
        command = [
            str(VENV_BIN / "rq"),
            "worker-pool",
            "-n",
            str(PROCESSES),
            "--url",
            self.url,
            "--logging-level",
            "WARNING",
            "--path",
            str(PEERS),
        ]
        if self.system.worker_class:
            command += ["--worker-class", self.system.worker_class]
        return [[*command, self.queue.name]]

    def close(self) -> None:
        self.client.close()


class CeleryAdapter:
    def __init__(self, system: System, url: str) -> None:
        from celery import Celery

        self.queue = bench_record.PEER_QUEUE
        self.live_key = self.queue  # kombu's Redis transport: the list is named as the queue
        self.app = Celery("bench-harness", broker=url)
        self.app.conf.broker_connection_retry_on_startup = True

    def enqueue(self, kind: str, count: int, args: Sequence[Any]) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                self.app.send_task(
                    f"bench.{kind}", args=list(args), queue=self.queue, producer=producer
                )

    def commands(self) -> list[list[str]]:
        return [
            [
                str(VENV_BIN / "celery"),
                "-A",
                "celery_app",
                "worker",
                "-c",
                str(PROCESSES),
                "-P",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                self.queue,
                "-l",
                "WARNING",
            ]
        ]

    def close(self) -> None:
        self.app.close()


class DramatiqAdapter:
    def __init__(self, system: System, url: str) -> None:
        from dramatiq.brokers.redis import RedisBroker

        self.system = system
        self.queue = bench_record.PEER_QUEUE
        self.live_key = f"dramatiq:{self.queue}"
        self.broker = RedisBroker(url=url)

    def enqueue(self, kind: str, count: int, args: Sequence[Any]) -> None:
        from dramatiq import Message

        for _ in range(count):
            message: Message[Any] = Message(
                queue_name=self.queue,
                actor_name=f"bench_{kind}",
                args=tuple(args),
                kwargs={},
                options={},
            )
            self.broker.enqueue(message)

    def commands(self) -> list[list[str]]:
        return [
            [
                str(VENV_BIN / "dramatiq"),
                "dramatiq_app",
                "-p",
                str(PROCESSES),
                "-t",
                str(self.system.threads),
                "-P",
                str(PEERS),
                "-Q",
                self.queue,
            ]
        ]

    def close(self) -> None:
        self.broker.close()


def make_adapter(system: System, url: str) -> Adapter:
    if system.family == "acmeq":
        return AcmeqAdapter(system, url)
    if system.family == "rq":
        return RqAdapter(system, url)
    if system.family == "celery":
        return CeleryAdapter(system, url)
    return DramatiqAdapter(system, url)


# -- worker processes --------------------------------------------------------------------------


@dataclass
class Workers:
    """The worker processes of one system; each the leader of its own process group."""

    system: System
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    forced: bool = False  # some process had to be SIGKILLed
    stop_s: float = 0.0  # SIGTERM until every process of the groups was gone
    stopped: bool = False

    def start(
        self, commands: list[list[str]], env: dict[str, str], logdir: Path, tag: str = ""
    ) -> None:
        for i, command in enumerate(commands):
            log = logdir / f"{self.system.key}{tag}-{i}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=logdir,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # own group: signals reach the pool's children
                    )
                )

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise BenchError(
                    f"worker process {proc.pid} exited with {proc.returncode}:\n" + tail(log, 15)
                )

    def stop(self) -> None:
        """SIGTERM each leader (graceful; a pool relays it to its children, as under a process
        manager), then SIGKILL whatever is left after the grace time: the groups' members and
        every descendant seen before the SIGTERM (RQ's work horses leave the group: setpgrp).

        Only the leader: RQ's pool signals its workers itself, and an RQ worker that gets both
        that signal and ours within a second ignores the second and can stay blocked in BLMOVE.
        """
        if self.stopped:
            return
        self.stopped = True
        groups = [p.pid for p in self.procs]
        tree: list[psutil.Process] = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                leader = psutil.Process(proc.pid)
                tree += [leader, *leader.children(recursive=True)]
        began = time.monotonic()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

        def leftovers() -> list[psutil.Process]:
            alive = [p for p in tree if running(p)]
            known = {p.pid for p in alive}
            for pid in group_members(groups):
                if pid not in known:
                    with contextlib.suppress(psutil.Error):
                        alive.append(psutil.Process(pid))
            return alive

        deadline = began + STOP_GRACE_S
        while time.monotonic() < deadline:
            for proc in self.procs:
                proc.poll()  # reap the leaders
            if not leftovers():
                break
            time.sleep(0.05)
        for leftover in leftovers():
            self.forced = True
            with contextlib.suppress(psutil.Error):
                leftover.kill()  # psutil checks it is still the same process (create time)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.stop_s = time.monotonic() - began


def running(proc: psutil.Process) -> bool:
    """Still this process (not a reused pid), and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(groups: Sequence[int]) -> list[int]:
    """Pids of live processes in these process groups (leaders' forked children included)."""
    wanted = set(groups)
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.pid) in wanted:
                found.append(proc.pid)
    return found


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


# Lines worth showing from a worker's log. acmeq workers log at WARNING, so any warning of theirs
# counts; the peers print warnings on every start or stop (Celery as root, Dramatiq's "Killing
# worker process" on SIGTERM), so only errors count for them.
PROBLEM = re.compile(r"Traceback|\bERROR\b|CRITICAL|Error:|Exception\b")
ACMEQ_PROBLEM = re.compile(r"Traceback|\bERROR\b|CRITICAL|WARNING|Error:|Exception\b")


def problem_lines(paths: Sequence[Path], pattern: re.Pattern[str], limit: int = 8) -> list[str]:
    found: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if pattern.search(line):
                    found.append(f"{path.name}: {line.strip()[:160]}")
    if len(found) > limit:
        found = [*found[:limit], f"... and {len(found) - limit} more such lines"]
    return found


# -- one system: prefill, start, warm up, release and time each batch ---------------------------


@dataclass
class Outcome:
    system: System
    rates: dict[str, float] = field(default_factory=dict)  # kind -> best jobs/s
    ready_s: float = 0.0
    stop_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    skipped: str = ""


def worker_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PEERS), env.get("PYTHONPATH", "")) if p)
    env["BENCH_REDIS_URL"] = url
    env["REDIS_URL"] = url  # acmeq
    env["ACMEQ_JOB_MODULES"] = "bench_jobs"
    env.pop("ACMEQ_CONFIG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def warm_up(
    adapter: Adapter, system: System, workers: Workers, client: redis.Redis
) -> tuple[float, int]:
    """Run warm-up rounds until both processes ran a job in the same round.

    Returns the time that took (start-up included) and the number of warm-up jobs run.
    """
    started = time.monotonic()
    per_round = max(8, 4 * system.slots)
    for round_no in range(1, 10_000):
        adapter.enqueue("warm", per_round, (round_no, WARM_S))
        warm_key = bench_record.WARM_KEY.format(round=round_no)
        while int(client.get(warm_key) or 0) < per_round:
            workers.check_alive()
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise BenchError(f"workers not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
        members = client.smembers(bench_record.PROCS_KEY.format(round=round_no))
        pids = {m.decode().split(":")[1 if system.forks_per_job else 0] for m in members}
        if len(pids) >= PROCESSES:
            return time.monotonic() - started, per_round * round_no
    raise BenchError("workers never all took warm-up jobs")


def release(
    client: redis.Redis, staged: str, live: str, count: int, workers: Workers
) -> tuple[float, int]:
    """Put a staged batch on the live queue at once; wait for it; return (jobs/s, done)."""
    client.delete(bench_record.FIRST_KEY, bench_record.LAST_KEY, bench_record.DONE_KEY)
    client.rename(staged, live)
    done, last_change, last_done = 0, time.monotonic(), -1
    while done < count:
        time.sleep(POLL_S)
        done = int(client.get(bench_record.DONE_KEY) or 0)
        if done != last_done:
            last_done, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            break
        workers.check_alive()
    first = float(client.get(bench_record.FIRST_KEY) or 0)
    last = float(client.get(bench_record.LAST_KEY) or 0)
    if done == 0 or last <= first:
        return 0.0, done
    return done / (last - first), done


def run_system(
    system: System, url_base: str, opts: argparse.Namespace, logdir: Path, round_no: int
) -> Outcome:
    """One round of one system: prefill, start the workers, warm up, time each batch, stop."""
    outcome = Outcome(system)
    package = PEER_PACKAGES.get(system.family)
    if package and importlib.util.find_spec(package) is None:
        outcome.skipped = f"{package} is not installed: {INSTALL_HINT}"
        return outcome
    url = f"{url_base.rsplit('/', 1)[0]}/{system.db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    adapter = make_adapter(system, url)
    workers = Workers(system)
    batches: list[tuple[str, int, str]] = []  # kind, count, staging key
    try:
        counts = {"noop": opts.jobs, "sleep": opts.sleep_jobs}
        args: dict[str, tuple[Any, ...]] = {"noop": (), "sleep": (SLEEP_S,)}
        for kind in KINDS:
            if counts[kind] <= 0:
                continue
            staged = f"bench:staged:{kind}"
            adapter.enqueue(kind, counts[kind], args[kind])
            queued = client.llen(adapter.live_key)
            if queued != counts[kind]:
                raise BenchError(f"{queued} jobs in {adapter.live_key}, not {counts[kind]}")
            client.rename(adapter.live_key, staged)
            batches.append((kind, counts[kind], staged))
        workers.start(adapter.commands(), worker_env(url), logdir, f"-r{round_no}")
        outcome.ready_s, jobs_run = warm_up(adapter, system, workers, client)
        for kind, count, staged in batches:
            rate, done = release(client, staged, adapter.live_key, count, workers)
            if done < count:
                outcome.problems.append(f"{kind}: only {done} of {count} jobs recorded")
            outcome.rates[kind] = rate
            jobs_run += count
        workers.stop()  # graceful: every job's bookkeeping is done when it returns
        outcome.problems += bookkeeping(system, client, adapter.live_key, jobs_run)
    except BenchError as exc:
        outcome.problems.append(str(exc))
    finally:
        workers.stop()
        outcome.stop_s = workers.stop_s
        adapter.close()
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()
    if workers.forced:
        outcome.problems.append(f"workers ignored SIGTERM for {STOP_GRACE_S:.0f} s: killed")
    pattern = ACMEQ_PROBLEM if system.family == "acmeq" else PROBLEM
    outcome.problems += problem_lines(workers.logs, pattern)
    return outcome


def bookkeeping(system: System, client: redis.Redis, live_key: str, jobs: int) -> list[str]:
    """RQ's registries (and acmeq's counters) after a graceful stop: every job finished once."""
    if system.family not in ("acmeq", "rq"):
        return []  # Celery and Dramatiq: the jobs' own done counter is all there is
    queue = live_key.removeprefix("rq:queue:")
    pipe = client.pipeline(transaction=False)
    pipe.llen(live_key)
    pipe.llen(f"{live_key}:intermediate")
    pipe.zcard(f"rq:wip:{queue}")
    pipe.zcard(f"rq:failed:{queue}")
    pipe.zcard(f"rq:finished:{queue}")
    pipe.hget(f"acmeq:stats:{queue}", "processed")
    queued, parked, started, failed, finished, processed = pipe.execute()
    problems = []
    for count, where in (
        (queued, "still queued"),
        (parked, "parked in the intermediate list"),
        (started, f"left in the started registry rq:wip:{queue}"),
        (failed, f"in rq:failed:{queue}"),
    ):
        if count:
            problems.append(f"{count} jobs {where} after the workers stopped")
    if finished != jobs:
        problems.append(f"rq:finished:{queue} holds {finished} jobs, {jobs} ran")
    if system.family == "acmeq" and int(processed or 0) != jobs:
        problems.append(f"acmeq:stats:{queue} processed = {int(processed or 0)}, {jobs} ran")
    return problems


def merge(best: Outcome | None, new: Outcome) -> Outcome:
    """Best rate of each kind over the rounds; the slowest start; every problem once."""
    if best is None:
        return new
    for kind, rate in new.rates.items():
        best.rates[kind] = max(best.rates.get(kind, 0.0), rate)
    best.ready_s = max(best.ready_s, new.ready_s)
    best.stop_s = max(best.stop_s, new.stop_s)
    best.problems += [p for p in new.problems if p not in best.problems]
    return best


# -- latency on an idle acmeq pool -----------------------------------------------------------------


@dataclass
class Latency:
    values_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.values_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_latency(url_base: str, probes: int, gap_s: float, logdir: Path) -> Latency:
    result = Latency()
    system = LATENCY
    url = f"{url_base.rsplit('/', 1)[0]}/{system.db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    adapter = AcmeqAdapter(system, url)
    workers = Workers(system)
    try:
        workers.start(adapter.commands(), worker_env(url), logdir)
        warm_up(adapter, system, workers, client)
        time.sleep(1.0)  # idle: both workers blocked on the empty queue
        for _ in range(probes):
            adapter.enqueue_one("probe", (time.time(),))
            time.sleep(gap_s)
        deadline = time.monotonic() + 10
        while client.llen(bench_record.LATENCY_KEY) < probes and time.monotonic() < deadline:
            time.sleep(POLL_S)
        raw = client.lrange(bench_record.LATENCY_KEY, 0, -1)
        result.values_ms = [float(v) * 1000 for v in raw]
        if len(raw) < probes:
            result.problems.append(f"only {len(raw)} of {probes} probes ran")
    except BenchError as exc:
        result.problems.append(str(exc))
    finally:
        workers.stop()
        adapter.close()
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()
    result.problems += problem_lines(workers.logs, ACMEQ_PROBLEM)
    return result


# -- report ----------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def fmt_rate(rate: float | None) -> str:
    return f"{rate:,.0f}" if rate else "-"


def report(outcomes: dict[str, Outcome], latency: Latency | None, opts: argparse.Namespace) -> None:
    def rate(key: str, kind: str) -> float | None:
        outcome = outcomes.get(key)
        return outcome.rates.get(kind) if outcome else None

    celery_noop = rate("celery", "noop")
    dramatiq_sleep = rate("dramatiq-8", "sleep")
    rq_noop, rq_sleep = rate("rq-fork", "noop"), rate("rq-fork", "sleep")
    # (title, second title line, width); the first column is left-aligned, the others right.
    columns = [
        ("system", "", 22),
        ("ready", "s", 6),
        ("stop", "s", 5),
        ("noop", "jobs/s", 7),
        ("10-ms", "jobs/s", 7),
        ("noop vs", "Celery", 8),
        ("10-ms vs", "Dram.-8", 9),
        ("noop vs", "RQ fork", 8),
        ("10-ms vs", "RQ fork", 9),
        ("issue ref", "noop/10ms", 12),
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [f"{cells[0]:<{columns[0][2]}}"]
        widths = [width for _, _, width in columns[1:]]
        parts += [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths, strict=True)]
        return " ".join(parts).rstrip()

    if outcomes:
        print(line([c[0] for c in columns]))
        print(line([c[1] for c in columns]))
    for key, outcome in outcomes.items():
        system = outcome.system
        if outcome.skipped:
            print(f"{system.label:<22} skipped: {outcome.skipped}")
            continue
        noop, sleep = outcome.rates.get("noop"), outcome.rates.get("sleep")
        ref = ISSUE_REF.get(key)
        cells = [
            system.label,
            f"{outcome.ready_s:.1f}",
            f"{outcome.stop_s:.1f}",
            fmt_rate(noop),
            fmt_rate(sleep),
            ratio(noop, celery_noop),
            ratio(sleep, dramatiq_sleep),
            ratio(noop, rq_noop),
            ratio(sleep, rq_sleep),
            f"{ref[0]:,}/{ref[1]:,}" if ref else "",
        ]
        print(line(cells))
    if latency is not None and latency.values_ms:
        print(
            f"latency (acmeq inline, idle, {len(latency.values_ms)} probes {opts.latency_gap_ms}"
            f" ms apart): p50 {latency.quantile(0.5):.2f} ms, p95 {latency.quantile(0.95):.2f}"
            f" ms, max {max(latency.values_ms):.2f} ms"
        )

    def verdict(value: float | None, goal: float) -> str:
        return "n/a" if value is None else ("met" if value >= goal else "MISSED")

    def share(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    inline = share(rate("acmeq-inline", "noop"), celery_noop)
    threads = share(rate("acmeq-threads", "sleep"), dramatiq_sleep)
    fork_noop = share(rate("acmeq-fork", "noop"), rq_noop)
    fork_sleep = share(rate("acmeq-fork", "sleep"), rq_sleep)
    fork_values = [v for v in (fork_noop, fork_sleep) if v is not None]
    fork = min(fork_values) if fork_values else None
    p50 = latency.quantile(0.5) if latency is not None and latency.values_ms else None

    def show(value: float | None) -> str:
        return "" if value is None else f" ({value:.3f}x)"

    fork_detail = " / ".join(f"{v:.3f}x" for v in fork_values)
    print(
        f"targets: inline noop >= 1.0x Celery {verdict(inline, 1.0)}{show(inline)}; "
        f"threads 10-ms >= 0.7x Dramatiq-8 {verdict(threads, 0.7)}{show(threads)}; "
        f"fork >= 1.0x RQ fork {verdict(fork, 1.0)}"
        + (f" (noop / 10-ms {fork_detail})" if fork_values else "")
        + "; latency p50 <= 5 ms "
        + ("n/a" if p50 is None else ("met" if p50 <= 5.0 else "MISSED") + f" ({p50:.2f} ms)")
    )
    problems = [(o.system.label, p) for o in outcomes.values() for p in o.problems]
    if latency is not None:
        problems += [("latency", p) for p in latency.problems]
    if problems:
        print("problems:")
        for label, problem in problems:
            print(f"  {label}: {problem}")


def load() -> str:
    """The 1/5/15-minute load averages: anything much above the 2 workers' share means the
    numbers were taken on a busy machine."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def versions() -> str:
    parts = []
    for dist in ("rq", "celery", "dramatiq", "redis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(parts)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to the harness unwinds like Ctrl-C, so the finally blocks stop the workers."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2_000, help="noop jobs per system and round")
    parser.add_argument("--sleep-jobs", type=int, default=1_000, help="10-ms jobs per system")
    parser.add_argument("--rounds", type=int, default=1, help="best of this many rounds")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset of: " + ", ".join(s.key for s in SYSTEMS) + ", latency",
    )
    parser.add_argument("--probes", type=int, default=200, help="latency probes")
    parser.add_argument("--latency-gap-ms", type=float, default=20.0)
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this directory")
    opts = parser.parse_args()
    known = {s.key for s in SYSTEMS} | {"latency"}
    only = {name.strip() for name in opts.only.split(",") if name.strip()} or known
    if only - known:
        parser.error(f"unknown --only names: {', '.join(sorted(only - known))}")
    for family, package in PEER_PACKAGES.items():
        wanted = any(s.family == family and s.key in only for s in SYSTEMS)
        if wanted and importlib.util.find_spec(package) is None:
            print(f"{package} is not installed, skipping it; install the peers: {INSTALL_HINT}")

    with contextlib.ExitStack() as stack:
        if opts.logs:
            opts.logs.mkdir(parents=True, exist_ok=True)
            logdir: Path = opts.logs.resolve()
        else:
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="acmeq-bench-")))
        stack.enter_context(sigterm_as_interrupt())
        url = stack.enter_context(private_redis())
        with redis.Redis.from_url(url) as probe:
            server = probe.info("server")["redis_version"]
        print(
            f"{opts.jobs:,} noop + {opts.sleep_jobs:,} 10-ms jobs per system, best of "
            f"{opts.rounds} round(s), {PROCESSES} worker processes each, private redis-server "
            f"{server}, "
            f"{os.cpu_count()} CPUs; {versions()}",
            flush=True,
        )
        print(f"load average at start: {load()}", flush=True)
        # Rounds go round-robin over the systems, so a burst of outside load hurts one round of
        # each system rather than every round of one.
        outcomes: dict[str, Outcome] = {}
        for round_no in range(1, opts.rounds + 1):
            for system in SYSTEMS:
                if system.key not in only:
                    continue
                began = time.monotonic()
                outcome = run_system(system, url, opts, logdir, round_no)
                outcomes[system.key] = merge(outcomes.get(system.key), outcome)
                if outcome.skipped:
                    print(f"  {system.label}: skipped", flush=True)
                    only.discard(system.key)
                    continue
                rates = ", ".join(f"{k} {v:,.0f}/s" for k, v in outcome.rates.items())
                print(
                    f"  round {round_no} {system.label}: {rates or 'no result'}"
                    f" (ready {outcome.ready_s:.1f} s, stop {outcome.stop_s:.1f} s,"
                    f" {time.monotonic() - began:.0f} s in all)",
                    flush=True,
                )
        latency = None
        if "latency" in only:
            latency = run_latency(url, opts.probes, opts.latency_gap_ms / 1000, logdir)
        print(f"load average at end: {load()}", flush=True)
    print()
    report(outcomes, latency, opts)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: worker processes and redis-server stopped")
