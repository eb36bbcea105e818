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
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from acmeq.master import control

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
