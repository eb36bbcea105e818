"""The master: runs a profile's supervisors, one pool of worker processes per queue.

Modelled on gunicorn's Arbiter: signal handlers only queue the signal and wake the loop; the
loop reaps exited workers, respawns them (with backoff after crashes), balances the pools through
:mod:`acmeq.master.autoscale`, retires the oldest workers first, runs registry maintenance and RQ's
scheduler for every queue it serves, and publishes its state to Redis for `acmeq worker list`.

Signals: SIGTERM graceful stop (workers finish their jobs), a second SIGTERM or SIGINT fast stop
(running jobs are interrupted and retried or failed), SIGHUP rolling restart (new workers start
before the old ones retire). The same commands arrive from other hosts through Redis.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

from acmeq.config.settings import ProfileSpec, QueueSpec, Settings, SupervisorSpec
from acmeq.constants import WorkerExit
from acmeq.errors import UsageError
from acmeq.master import autoscale, control
from acmeq.observability.alerts import engine as alerts
from acmeq.storage.redis_client import text
from acmeq.worker import recovery
from acmeq.worker.fastpath import STATS_KEY
from acmeq.worker.process import WorkerOptions

log = logging.getLogger("acmeq.master")

TICK_S = 0.2
PUBLISH_S = 2.0
MAINTAIN_S = 5.0
SCHEDULE_S = 1.0
ALERTS_S = 5.0  # every master offers; only the holder of the alert lock evaluates
OVERRUN_GRACE_S = 30.0  # beyond a job's timeout + 60 s heartbeat margin
FAST_STOP_GRACE_S = 10.0
RUNTIME_EWMA = 0.3
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    name: str
    started: float  # monotonic
    started_wall: float
    generation: int
    boot_report: Path
    retiring: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Pool:
    """The workers of one queue within one supervisor."""

    supervisor: SupervisorSpec
    queue: QueueSpec
    desired: int
    children: list[Child] = field(default_factory=list)
    halted: str | None = None
    crashes: int = 0  # consecutive early crashes, for the respawn backoff
    next_spawn: float = 0.0

    @property
    def active(self) -> list[Child]:
        return [c for c in self.children if not c.retiring]


@dataclass
class MasterOptions:
    profile: str
    name: str = ""  # master name; default: the host name
    hostname: str = ""  # shown in `worker list`; default: socket.gethostname()
    burst: bool = False  # tests: stop when every queue is empty and idle
    log_level: str = "INFO"


class Master:
    def __init__(self, settings: Settings, opts: MasterOptions, connection: redis.Redis) -> None:
        self.settings = settings
        self.profile: ProfileSpec = settings.profile(opts.profile)
        self.hostname = opts.hostname or socket.gethostname()
        self.name = opts.name or self.hostname
        self.opts = opts
        self.connection = connection
        self.pid = os.getpid()
        self.status = "starting"
        self.generation = 0
        self.started_wall = time.time()
        self.pools: dict[tuple[str, str], Pool] = {}
        self.policies = {
            s.name: autoscale.PoolPolicy.from_spec(s) for s in self.profile.supervisors
        }
        self.states = {s.name: autoscale.BalancerState() for s in self.profile.supervisors}
        self.decisions: dict[str, list[autoscale.Decision]] = {}
        self.last_balance: dict[str, float] = {}
        self.runtime: dict[str, float] = {}  # EWMA of seconds per job, per queue
        self.counters: dict[str, tuple[float, float]] = {}  # queue -> (processed, runtime)
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self._stop_mode: str | None = None  # graceful | fast
        self._stop_deadline = 0.0
        self._rolling_since = 0.0
        self._timers: dict[str, float] = {}
        self._run_dir = Path(tempfile.mkdtemp(prefix="acmeq-master-"))
        queues = sorted({q for s in self.profile.supervisors for q in s.queues})
        self.scheduler = recovery.Scheduler(queues, connection, name=f"acmeq-{self.name}")
        for sup in self.profile.supervisors:
            start = autoscale.initial_counts(self.policies[sup.name])
            for q in sup.queues:
                self.pools[(sup.name, q)] = Pool(sup, settings.queues[q], start[q])

    # -- start and stop ----------------------------------------------------------------------
    def check_budget(self) -> None:
        budget = self.profile.memory_budget_mb or int(
            psutil.virtual_memory().total / (1024 * 1024) * 0.8
        )
        problems = autoscale.validate_budget(self.profile, self.settings.queues, budget)
        if problems:
            raise UsageError("; ".join(problems))
        self.memory_budget = budget

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        self.check_budget()
        holder = control.claim_name(self.connection, self.name, self.pid, self.hostname)
        if holder is not None:
            raise UsageError(
                f"a master named {self.name!r} is already running ({holder}); "
                "stop it or start this one with another --hostname/--name"
            )
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        self.status = "running"
        log.info(
            "master %s (pid %d) starting profile %s: %s",
            self.name,
            self.pid,
            self.profile.name,
            ", ".join(f"{s}/{q}={p.desired}" for (s, q), p in self.pools.items()),
        )
        try:
            while True:
                self._handle_signals()
                self._handle_commands()
                self._reap()
                if self._stop_mode is not None:
                    if not any(p.children for p in self.pools.values()):
                        break
                    self._push_stop()
                else:
                    self._every("balance", TICK_S, self._balance_all)
                    self._spawn_missing()
                    self._retire_excess()
                    self._every("maintain", MAINTAIN_S, self._maintain)
                    self._every("schedule", SCHEDULE_S, self.scheduler.tick)
                    self._every(  # logs its own errors, never raises
                        "alerts",
                        ALERTS_S,
                        lambda: alerts.maybe_evaluate(self.connection, self.settings, self.name),
                    )
                    if self.opts.burst and self._drained():
                        self.stop("graceful")
                    if all(p.halted for p in self.pools.values()):
                        log.error("every pool is halted; master exits")
                        self.stop("graceful")
                self._every("publish", PUBLISH_S, self._publish)
                self._sleep()
        finally:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self.scheduler.stop()
            with contextlib.suppress(redis.RedisError):
                control.withdraw(self.connection, self.name)
        halted = [p for p in self.pools.values() if p.halted]
        return 1 if halted and len(halted) == len(self.pools) else 0

    def stop(self, mode: str) -> None:
        """Begin a graceful or fast stop (idempotent; fast wins)."""
        if self._stop_mode == "fast" or self._stop_mode == mode:
            return
        log.info("master %s: %s stop", self.name, mode)
        self._stop_mode = mode
        self.status = "terminating"
        # A worker stops fast on SIGINT (two SIGTERMs sent back to back would merge into one
        # pending signal and read as a graceful stop).
        sig = signal.SIGINT if mode == "fast" else signal.SIGTERM
        for pool in self.pools.values():
            for child in pool.children:
                self._signal(child, sig)
        longest = max((p.supervisor.timeout_for(p.queue) for p in self.pools.values()), default=0)
        grace = FAST_STOP_GRACE_S if mode == "fast" else longest + OVERRUN_GRACE_S
        self._stop_deadline = time.monotonic() + grace

    def _push_stop(self) -> None:
        if time.monotonic() < self._stop_deadline:
            return
        for pool in self.pools.values():
            for child in pool.children:
                log.warning("worker %s did not stop in time: killing it", child.name)
                self._signal(child, signal.SIGKILL)
        self._stop_deadline = time.monotonic() + 5

    # -- signals and commands ------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only queue it: everything happens in the loop (gunicorn's Arbiter).
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b".")

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                continue
            if signum == signal.SIGHUP:
                self.restart()
            elif signum == signal.SIGINT or (signum == signal.SIGTERM and self._stop_mode):
                self.stop("fast")
            elif signum == signal.SIGTERM:
                self.stop("graceful")

    def _handle_commands(self) -> None:
        try:
            commands = control.pop_commands(self.connection, self.name)
        except redis.RedisError as exc:
            log.error("cannot read commands: %s", exc)
            return
        for cmd in commands:
            log.info("command from Redis: %s", cmd.get("command"))
            if cmd.get("command") == "terminate":
                self.stop("graceful")
            elif cmd.get("command") == "terminate-fast":
                self.stop("fast")
            elif cmd.get("command") == "restart":
                self.restart()

    def restart(self) -> None:
        """Rolling restart: a new generation starts, then the old one retires."""
        if self._stop_mode:
            return
        self.generation += 1
        self._rolling_since = time.monotonic()
        self.status = "restarting"
        log.info("rolling restart to generation %d", self.generation)

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, pool: Pool) -> None:
        sup, queue = pool.supervisor, pool.queue
        report = self._run_dir / f"boot-{sup.name}-{queue.name}-{len(pool.children)}-{time.time()}"
        opts = WorkerOptions(
            queue=queue.name,
            mode=str(sup.mode.value),
            concurrency=sup.concurrency,
            memory_mb=sup.memory_for(queue),
            timeout=sup.timeout,
            max_jobs=sup.max_jobs,
            max_time=sup.max_time,
            name=f"{self.name}.{sup.name}.{queue.name}",
            master=self.name,
            supervisor=sup.name,
            log_level=self.opts.log_level,
            boot_report=str(report),
        )
        env = dict(os.environ)
        if self.settings.config_path is not None:
            env["ACMEQ_CONFIG"] = str(self.settings.config_path.resolve())
        proc = subprocess.Popen(
            [sys.executable, "-m", "acmeq.worker", opts.to_json()],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup(sup.nice),
        )
        child = Child(
            proc, f"{opts.name}.{proc.pid}", time.monotonic(), time.time(), self.generation, report
        )
        pool.children.append(child)
        log.debug("spawned %s", child.name)

    def _spawn_missing(self) -> None:
        now = time.monotonic()
        for pool in self.pools.values():
            if pool.halted or now < pool.next_spawn:
                continue
            current = [c for c in pool.active if c.generation == self.generation]
            for _ in range(pool.desired - len(current)):
                self._spawn(pool)

    def _retire_excess(self) -> None:
        for pool in self.pools.values():
            old = [c for c in pool.active if c.generation != self.generation]
            new = [c for c in pool.active if c.generation == self.generation]
            if old:
                # Rolling restart: retire the old generation once its successors are up.
                ready = sum(1 for c in new if time.monotonic() - c.started > 1.0)
                waited = time.monotonic() - self._rolling_since > 15
                if ready >= min(len(old), pool.desired) or waited or pool.halted:
                    for child in old:
                        self._retire(child)
            excess = len(new) - pool.desired
            for child in sorted(new, key=lambda c: c.started)[: max(excess, 0)]:
                self._retire(child)  # oldest first
        if self.status == "restarting" and not any(
            c.generation != self.generation for p in self.pools.values() for c in p.children
        ):
            self.status = "running"

    def _retire(self, child: Child) -> None:
        child.retiring = True
        self._signal(child, signal.SIGTERM)

    def _signal(self, child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

    def _reap(self) -> None:
        for pool in self.pools.values():
            for child in list(pool.children):
                code = child.proc.poll()
                if code is None:
                    continue
                pool.children.remove(child)
                self._on_exit(pool, child, code)

    def _on_exit(self, pool: Pool, child: Child, code: int) -> None:
        lived = time.monotonic() - child.started
        if code == WorkerExit.BOOT_ERROR:
            reason = _read(child.boot_report) or "worker could not boot (see the log)"
            pool.halted = reason
            log.error("pool %s/%s halted: %s", pool.supervisor.name, pool.queue.name, reason)
            return
        if code in (WorkerExit.OK, WorkerExit.RECYCLE, WorkerExit.MEMORY_LIMIT):
            if code == WorkerExit.MEMORY_LIMIT:
                log.warning("worker %s exited over its memory limit; replacing it", child.name)
            pool.crashes = 0
            self._cleanup_dead(pool, child, "worker exited")
            return
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        log.error("worker %s died (%s) after %.1f s", child.name, how, lived)
        self._cleanup_dead(pool, child, f"worker {child.name} died ({how})")
        pool.crashes = pool.crashes + 1 if lived < 10 else 1
        delay = min(0.5 * 2 ** (pool.crashes - 1), 30.0) if pool.crashes > 1 else 0.0
        pool.next_spawn = time.monotonic() + delay

    def _cleanup_dead(self, pool: Pool, child: Child, reason: str) -> None:
        try:
            recovery.recover_dead_worker(
                self.connection, child.name, pool.queue.name, reason, self.settings
            )
        except redis.RedisError as exc:
            log.error("cannot recover jobs of %s now: %s (maintenance will)", child.name, exc)

    def _drained(self) -> bool:
        pipe = self.connection.pipeline(transaction=False)
        names = sorted({q for _, q in self.pools})
        for q in names:
            pipe.llen(f"rq:queue:{q}")
            pipe.zcard(f"rq:wip:{q}")
            pipe.zcard(f"rq:scheduled:{q}")
        return not any(pipe.execute())

    # -- balancing -----------------------------------------------------------------------------
    def _balance_all(self) -> None:
        now = time.monotonic()
        due = [
            s
            for s in self.profile.supervisors
            if now - self.last_balance.get(s.name, 0.0) >= max(s.cooldown / 3, TICK_S)
        ]
        if not due:
            return
        loads = self._measure()
        plans: dict[str, list[autoscale.Decision]] = {}
        for sup in self.profile.supervisors:
            if sup in due:
                sup_loads = [loads[(sup.name, q)] for q in sup.queues]
                decisions, self.states[sup.name] = autoscale.balance(
                    self.policies[sup.name], sup_loads, now, self.states[sup.name]
                )
                self.last_balance[sup.name] = now
                self.decisions[sup.name] = decisions
            plans[sup.name] = self.decisions.get(sup.name, [])
        fit = autoscale.fit_host_budget(plans, self.profile.max_processes, self.memory_budget)
        for sup_name, fitted in fit.plans.items():
            self.decisions[sup_name] = list(fitted)
            for d in fitted:
                self.pools[(sup_name, d.queue)].desired = d.desired

    def plan_once(self) -> dict[str, list[autoscale.Decision]]:
        """What the balancer would decide now (for `worker scale --explain` with no master)."""
        self.check_budget()
        self._balance_all()
        return {s.name: self.decisions.get(s.name, []) for s in self.profile.supervisors}

    def _measure(self) -> dict[tuple[str, str], autoscale.QueueLoad]:
        """Ready jobs, oldest age, average runtime and busy workers, in two round trips."""
        queues = sorted({q for _, q in self.pools})
        pipe = self.connection.pipeline(transaction=False)
        for q in queues:
            pipe.llen(f"rq:queue:{q}")
            pipe.lindex(f"rq:queue:{q}", 0)
            pipe.hmget(STATS_KEY.format(queue=q), ["processed", "runtime"])
        children = [c for p in self.pools.values() for c in p.active]
        for child in children:
            pipe.hget(f"rq:worker:{child.name}", "state")
        replies = pipe.execute()
        ready, heads, oldest = {}, {}, {}
        for i, q in enumerate(queues):
            ready[q] = int(replies[3 * i])
            head = replies[3 * i + 1]
            if head:
                heads[q] = text(head)
            self._update_runtime(q, replies[3 * i + 2])
        busy_state = {
            c.name: replies[3 * len(queues) + i] == b"busy" for i, c in enumerate(children)
        }
        if heads:
            pipe = self.connection.pipeline(transaction=False)
            for job_id in heads.values():
                pipe.hget(f"rq:job:{job_id}", "enqueued_at")
            for q, stamp in zip(heads, pipe.execute(), strict=True):
                oldest[q] = _age(stamp)
        loads = {}
        for (sup_name, q), pool in self.pools.items():
            loads[(sup_name, q)] = autoscale.QueueLoad.measured(
                pool.supervisor,
                pool.queue,
                ready=ready[q],
                oldest_age=oldest.get(q, 0.0),
                avg_runtime=self.runtime.get(q, 0.0),
                busy=sum(1 for c in pool.active if busy_state.get(c.name)),
                current=len([c for c in pool.active if c.generation == self.generation]),
            )
        return loads

    def _update_runtime(self, queue: str, raw: list[bytes | None]) -> None:
        processed = float(raw[0] or 0)
        runtime = float(raw[1] or 0)
        last = self.counters.get(queue)
        self.counters[queue] = (processed, runtime)
        if last is None or processed <= last[0]:
            return
        sample = (runtime - last[1]) / (processed - last[0])
        prev = self.runtime.get(queue)
        self.runtime[queue] = sample if prev is None else prev + RUNTIME_EWMA * (sample - prev)

    # -- maintenance and publishing ---------------------------------------------------------------
    def _maintain(self) -> None:
        for q in sorted({q for _, q in self.pools}):
            try:
                recovery.maintain_queue(self.connection, q)
            except redis.RedisError as exc:
                log.error("maintenance of %s failed: %s", q, exc)
        self._kill_overruns()

    def _kill_overruns(self) -> None:
        """Kill a worker whose job has overrun its timeout and the grace (stuck in C code)."""
        children = [(p, c) for p in self.pools.values() for c in p.children]
        if not children:
            return
        pipe = self.connection.pipeline(transaction=False)
        for _pool, child in children:
            pipe.smembers(f"rq:worker:{child.name}:executions")
        running = [
            (pool, child, composite)
            for (pool, child), composites in zip(children, pipe.execute(), strict=True)
            for composite in composites
        ]
        if not running:
            return
        # Every registry score in one round trip, not one ZSCORE per running job.
        pipe = self.connection.pipeline(transaction=False)
        for pool, _child, composite in running:
            pipe.zscore(f"rq:wip:{pool.queue.name}", composite)
        now = time.time()
        for (_pool, child, _composite), score in zip(running, pipe.execute(), strict=True):
            if score is not None and now > score + OVERRUN_GRACE_S:
                log.error("worker %s overran its job's timeout: killing it", child.name)
                self._signal(child, signal.SIGKILL)

    def snapshot(self) -> dict[str, Any]:
        sups = []
        for sup in self.profile.supervisors:
            pools = []
            for q in sup.queues:
                pool = self.pools[(sup.name, q)]
                pools.append(
                    {
                        "queue": q,
                        "desired": pool.desired,
                        "halted": pool.halted,
                        "processes": [
                            {
                                "name": c.name,
                                "pid": c.pid,
                                "started_at": c.started_wall,
                                "generation": c.generation,
                                "retiring": c.retiring,
                            }
                            for c in pool.children
                        ],
                    }
                )
            sups.append(
                {
                    "name": sup.name,
                    "queues": list(sup.queues),
                    "balance": sup.balance.value,
                    "strategy": sup.strategy.value,
                    "min_processes": sup.min_processes,
                    "max_processes": sup.max_processes,
                    "pools": pools,
                    "decisions": [decision_dict(d) for d in self.decisions.get(sup.name, [])],
                }
            )
        return {
            "name": self.name,
            "hostname": self.hostname,
            "pid": self.pid,
            "profile": self.profile.name,
            "status": self.status,
            "started_at": self.started_wall,
            "supervisors": sups,
        }

    def _publish(self) -> None:
        try:
            control.publish(self.connection, self.name, self.pid, self.hostname, self.snapshot())
        except redis.RedisError as exc:
            log.error("cannot publish state: %s", exc)

    # -- loop helpers ------------------------------------------------------------------------
    def _every(self, name: str, interval: float, action: Callable[[], None]) -> None:
        now = time.monotonic()
        if now - self._timers.get(name, 0.0) >= interval:
            self._timers[name] = now
            try:
                action()
            except redis.RedisError as exc:
                log.error("%s failed: %s", name, exc)

    def _sleep(self) -> None:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake_r], [], [], TICK_S)
            if ready:
                os.read(self._wake_r, 4096)


def decision_dict(d: autoscale.Decision) -> dict[str, Any]:
    """A balancing decision with its inputs, as published and shown by `worker scale --explain`."""
    return {
        "queue": d.queue,
        "ready": d.load.ready,
        "oldest_age": round(d.load.oldest_age, 3),
        "avg_runtime": round(d.load.avg_runtime, 4),
        "busy": d.load.busy,
        "current": d.current,
        "desired": d.desired,
        "action": str(d.action),
        "reason": d.reason,
    }


def _child_setup(nice: int) -> Callable[[], None]:
    def setup() -> None:
        # Die with the master (no orphans): the kernel sends SIGTERM when the master exits,
        # which makes the worker finish its job and leave.
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if nice:
            os.nice(nice)
        # The master keeps its signal handlers; the worker installs its own.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    return setup


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _age(stamp: bytes | None) -> float:
    if not stamp:
        return 0.0
    from rq.utils import utcparse

    return max(time.time() - utcparse(text(stamp)).timestamp(), 0.0)
