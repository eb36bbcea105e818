"""Masters as real process trees, for the process-level tests of the master.

``MasterStarter`` starts ``python -m acmeq worker start --profile P --hostname H`` as an operator
does (its own session, output in a log file), waits until it publishes itself as running, and at
the end kills whatever is left of every tree it started (workers run in their own sessions, so
the tree is walked, not only the master's process group) and prints the masters' logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from acmeq.config.settings import Settings
from acmeq.master import control
from acmeq.queues import Enqueuer, JobCall

from conftest import wait_until

TESTS = Path(__file__).resolve().parent


def alive(proc: psutil.Process) -> bool:
    """Whether a process still exists (a zombie waiting to be reaped does not count)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class MasterProcess:
    """A master started as a real subprocess, its output (and its workers') in a log file."""

    proc: subprocess.Popen[bytes]
    name: str
    log_path: Path
    known: set[int] = field(default_factory=set)  # every descendant pid seen (for teardown)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        """The master's live worker processes (its direct children)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        self.known |= {c.pid for c in children}
        return [c for c in children if alive(c)]

    def tree(self) -> list[psutil.Process]:
        """Every live descendant (workers and fork-mode work horses)."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        self.known |= {c.pid for c in children}
        return [c for c in children if alive(c)]

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def view(self, client: redis.Redis) -> control.MasterView | None:
        """This master as `acmeq worker list` sees it (its published snapshot)."""
        for view in control.list_masters(client, with_processes=True):
            if view.name == self.name:
                return view
        return None

    def kill_all(self) -> None:
        """SIGKILL the master and every descendant still around."""
        procs = self.tree()
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(self.pid))
        for pid in self.known:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)


def master_env(**overrides: str) -> dict[str, str]:
    """The test's environment (REDIS_URL, ACMEQ_JOB_MODULES ...) with tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.update(overrides)
    return env


@dataclass
class MasterStarter:
    """Starts masters in ``workdir`` (where acmeq.toml is) against ``redis_url``."""

    workdir: Path
    redis_url: str
    started: list[MasterProcess] = field(default_factory=list)

    def __call__(
        self,
        profile: str,
        hostname: str,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> MasterProcess:
        log_path = self.workdir / f"master-{hostname}-{len(self.started)}.log"
        command = [sys.executable, "-m", "acmeq", "worker", "start", "--profile", profile]
        command += ["--hostname", hostname, "--log-level", "INFO", *args]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                env=master_env(**(env or {})),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        master = MasterProcess(proc, hostname, log_path)
        self.started.append(master)
        if wait:
            client = redis.Redis.from_url((env or {}).get("REDIS_URL", self.redis_url))
            wait_until(
                f"master {hostname} to publish itself as running",
                lambda: (
                    proc.poll() is not None
                    or ((v := master.view(client)) is not None and v.status == "running")
                ),
            )
            assert proc.poll() is None, f"master exited with {proc.returncode}:\n{master.log()}"
            master.workers()
        return master

    def cleanup(self) -> None:
        for master in self.started:
            master.kill_all()
            with contextlib.suppress(subprocess.TimeoutExpired):
                master.proc.wait(timeout=10)
            print(f"---- log of master {master.name} (pid {master.pid}) ----")
            print(master.log())


# -- the fault tests' profiles and ledger (tests/test_master_faults.py, test_master_outage.py) ----

# Queues retry often and at once, so kills and outages cost a retry, never a job.
FAULTS_CONFIG = """
[queues.notifications]
tries = 20
backoff = [0]

[queues.payments]
tries = 20
backoff = [0]

[queues.reports]
tries = 20
backoff = [0]

[profiles.outage.supervisors.inline]
queues = ["notifications"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "inline"

[profiles.outage.supervisors.threads]
queues = ["payments"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "threads"
concurrency = 4

[profiles.outage.supervisors.fork]
queues = ["reports"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "fork"

[profiles.storm.supervisors.storm]
queues = ["notifications"]
balance = "off"
min_processes = 2
max_processes = 2
mode = "inline"

[profiles.single.supervisors.single]
queues = ["notifications"]
balance = "off"
min_processes = 1
max_processes = 1

[profiles.sched.supervisors.sched]
queues = ["reports"]
balance = "off"
min_processes = 1
max_processes = 1
"""

LEDGER_JOBS = {
    "notifications": "ledger_inline",
    "payments": "ledger_threads",
    "reports": "ledger_fork",
}


def enqueuer_for(client: redis.Redis, toml: Path) -> Enqueuer:
    return Enqueuer(Settings.load(toml), client)


def statuses(client: redis.Redis, ids: list[str]) -> Counter[str]:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(f"rq:job:{job_id}", "status")
    return Counter((s or b"missing").decode() for s in pipe.execute())


def ledger_counts(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(line for line in path.read_text().splitlines() if line)


def enqueue_ledger(
    enqueuer: Enqueuer, ledger: Path, counts: dict[str, int], seconds: float
) -> dict[str, str]:
    """Enqueue ``counts[queue]`` ledger jobs on each queue; return token -> job id."""
    calls = [
        JobCall(LEDGER_JOBS[q], (str(ledger), f"{q}-{i}", seconds))
        for q, n in counts.items()
        for i in range(n)
    ]
    ids = enqueuer.enqueue_many(calls)
    return {str(call.args[1]): job_id for call, job_id in zip(calls, ids, strict=True)}


def assert_every_job_completed(client: redis.Redis, ledger: Path, tokens: dict[str, str]) -> None:
    assert statuses(client, list(tokens.values())) == Counter({"finished": len(tokens)})
    runs = ledger_counts(ledger)
    missing = [t for t in tokens if runs[t] == 0]
    assert missing == [], f"{len(missing)} jobs never completed a run: {missing[:5]}"
    duplicates = sum(n - 1 for t, n in runs.items() if n > 1)
    print(f"ledger: {len(tokens)} jobs, {sum(runs.values())} runs, {duplicates} duplicate run(s)")


def unfinished(client: redis.Redis, tokens: dict[str, str], ledger: Path) -> list[str]:
    """The jobs not finished yet, with what Redis and the ledger say about them (diagnostics)."""
    runs = ledger_counts(ledger)
    out = []
    for token, job_id in tokens.items():
        fields = client.hmget(f"rq:job:{job_id}", ["status", "worker_name", "origin"])
        status, worker, origin = (f.decode() if f else "-" for f in fields)
        if status != "finished":
            wip = [m.decode() for m in client.zrange(f"rq:wip:{origin}", 0, -1)]
            running = any(m.startswith(job_id) for m in wip)
            out.append(f"{token} {status} worker={worker} in_wip={running} runs={runs[token]}")
    return out[:10]


def live_workers(master: MasterProcess) -> list[psutil.Process]:
    return [w for w in master.workers() if alive(w)]
