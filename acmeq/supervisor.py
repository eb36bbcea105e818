"""The master: runs a profile's supervisors, one pool of worker processes per queue.

A thin shell (gunicorn's Arbiter is the model) around two pure parts: the pool lifecycle
(:mod:`acmeq.master.lifecycle`: what to spawn, retire, back off or halt) and the balancing policy
(:mod:`acmeq.master.autoscale`). Signal handlers only queue the signal and wake the loop; the loop
reaps exited workers, asks the lifecycle what follows, spawns and retires processes, kills hung
workers (their heartbeat file went stale), runs registry maintenance and RQ's scheduler for every
queue it serves, and publishes its state to Redis for `acmeq worker list` and `acmeq status`.

Signals: SIGTERM graceful stop (workers finish their jobs), a second SIGTERM or SIGINT fast stop
(running jobs are interrupted and retried or failed), SIGHUP rolling restart (new workers start
before the old ones retire; halted pools try again). The same commands arrive through Redis.

Redis may go away at any time: the master then keeps its workers, logs the outage once, retries
what failed (recovering a dead worker's jobs included) and resumes as soon as Redis is back; it
never exits or halts a pool for that. An unexpected exception in the loop is logged with its
traceback, the workers are stopped gracefully and the master exits with
:attr:`~acmeq.constants.MasterExit.INTERNAL_ERROR`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

from acmeq.config.settings import ProfileSpec, Settings, SupervisorSpec
from acmeq.constants import MasterExit, WorkerExit
from acmeq.errors import UsageError
from acmeq.master import autoscale, budget, control, daemon, readings
from acmeq.master import lifecycle as lc
from acmeq.master.scheduler import Scheduler
from acmeq.worker import recovery
from acmeq.worker.options import WorkerOptions

log = logging.getLogger("acmeq.master")

TICK_S = 0.2
PUBLISH_S = 2.0
MAINTAIN_S = 5.0
SCHEDULE_S = 1.0
ALERTS_S = 5.0  # every master offers; only the holder of the alert lock evaluates
HUNG_CHECK_S = 1.0
PING_S = 0.5  # while Redis is away, how often the master checks whether it is back
RECOVER_RETRY_S = 1.0  # recovery that failed (Redis away) is tried again this often
BOOT_GRACE_S = 30.0  # a new worker's heartbeat file starts this far in the future
LOST_JUDGE_AFTER_S = 20.0  # Redis up this long before missing job heartbeats count (beats: 10 s)
CRASH_STOP_S = 30.0  # after an internal error, workers get this long to stop gracefully
FAIL_HOOK_ENV = "ACMEQ_TEST_MASTER_FAIL_FILE"  # tests: the loop raises once this file exists


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    name: str
    key: tuple[str, str]  # (supervisor, queue)
    started_wall: float
    boot_report: Path
    heartbeat: Path


@dataclass
class MasterOptions:
    profile: str
    name: str = ""  # master name; default: the host name
    hostname: str = ""  # shown in `worker list`; default: socket.gethostname()
    burst: bool = False  # tests and the demo: stop when every queue is empty and idle
    log_level: str = "INFO"
    hung_timeout: float = lc.HUNG_TIMEOUT_S  # a worker's heartbeat file older than this: killed


class Master:
    """One master process. Constructing it has no side effects; :meth:`run` does the work."""

    def __init__(self, settings: Settings, opts: MasterOptions, connection: redis.Redis) -> None:
        self.settings = settings
        self.profile: ProfileSpec = settings.profile(opts.profile)
        self.hostname = opts.hostname or socket.gethostname()
        self.name = opts.name or self.hostname
        self.opts = opts
        self.connection = connection
        self.pid = os.getpid()
        self.started_wall = time.time()
        self.policies = {
            s.name: autoscale.PoolPolicy.from_spec(s) for s in self.profile.supervisors
        }
        self.states = {s.name: autoscale.BalancerState() for s in self.profile.supervisors}
        self.decisions: dict[str, list[autoscale.Decision]] = {}
        self.last_balance: dict[str, float] = {}
        self.runtimes = readings.Runtimes()
        counts = []
        for sup in self.profile.supervisors:
            start = autoscale.initial_counts(self.policies[sup.name])
            counts += [((sup.name, q), sup.min_processes, start[q]) for q in sup.queues]
        self.life = lc.pools_at_start(counts)
        self.queues = sorted({q for s in self.profile.supervisors for q in s.queues})
        self.scheduler = Scheduler(self.queues, connection, self.name)
        self.children: dict[str, Child] = {}
        self.redis = readings.RedisHealth()
        self.memory_budget = 0
        self._signals: list[int] = []
        self._wake: tuple[int, int] | None = None
        self._stop_deadline = 0.0
        self._timers: dict[str, float] = {}
        self._pending: dict[str, tuple[str, str]] = {}  # worker -> (queue, reason) to recover
        self._run_dir: Path | None = None
        self._seq = 0

    # -- start and stop ----------------------------------------------------------------------
    def check_budget(self) -> None:
        memory = self.profile.memory_budget_mb or int(
            psutil.virtual_memory().total / (1024 * 1024) * 0.8
        )
        problems = budget.validate_budget(self.profile, self.settings.queues, memory)
        if problems:
            raise UsageError("; ".join(problems))
        self.memory_budget = memory

    def run(self) -> MasterExit:
        """Serve until stopped; return the exit status."""
        self.check_budget()
        holder = control.claim_name(self.connection, self.name, self.pid, self.hostname)
        if holder is not None:
            raise UsageError(
                f"a master named {self.name!r} is already running ({holder}); "
                "stop it or start this one with another --hostname/--name"
            )
        self._wake = os.pipe()
        self._run_dir = daemon.make_run_dir()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        log.info(
            "master %s (pid %d) starting profile %s: %s",
            self.name,
            self.pid,
            self.profile.name,
            ", ".join(f"{s}/{q}={p.desired}" for (s, q), p in self.life.pools.items()),
        )
        status = MasterExit.OK
        try:
            self._loop()
            status = self.life.exit_status()
        except Exception:
            log.exception("internal error in the master's loop; stopping the workers")
            self._stop_after_crash()
            status = MasterExit.INTERNAL_ERROR
        finally:
            self._cleanup()
        log.info("master %s exits with status %d (%s)", self.name, status, status.name)
        return status

    def _loop(self) -> None:
        fail_file = os.environ.get(FAIL_HOOK_ENV)
        while True:
            self._handle_signals()
            self._reap()
            # While Redis is away only processes are looked after (reap, spawn, hung workers);
            # a ping every PING_S says when it is back.
            up = self.redis.down_since is None or bool(self._every("ping", PING_S, self._ping))
            if up:
                self._handle_commands()
            if self.life.stopping is not None:
                if self.life.done():
                    return
                self._push_stop()
            else:
                self._serve_pools(up)
            if up:
                self._every("publish", PUBLISH_S, self._publish)
                if self._pending:
                    self._every("recover", RECOVER_RETRY_S, self._retry_recovery)
            if fail_file and os.path.exists(fail_file):
                raise RuntimeError(f"injected failure ({FAIL_HOOK_ENV} exists)")
            self._sleep()

    def _serve_pools(self, redis_up: bool) -> None:
        if redis_up:
            self._every("balance", TICK_S, self._balance_all)
        now = time.monotonic()
        for key, slot in self.life.spawns(now):
            self._spawn(key, slot, now)
        for _key, worker in self.life.retirements(now):
            self._signal(worker.name, signal.SIGTERM)
        self._every("hung", HUNG_CHECK_S, self._kill_hung)
        if not redis_up:
            return
        self._every("maintain", MAINTAIN_S, self._maintain)
        self._every("schedule", SCHEDULE_S, self.scheduler.tick)
        self._every("schedules", SCHEDULE_S, self._schedules)
        self._every("alerts", ALERTS_S, self._alerts)
        if self.opts.burst and self._every("drained", 1.0, self._drained):
            self.stop(lc.StopMode.GRACEFUL)
        if self.life.all_halted():
            log.error("every pool is halted; master exits")
            self.stop(lc.StopMode.GRACEFUL)

    def stop(self, mode: lc.StopMode) -> None:
        """Begin a graceful or fast stop (idempotent; fast wins)."""
        if not self.life.stop(mode):
            return
        log.info("master %s: %s stop", self.name, mode)
        for child in self.children.values():
            self._signal(child.name, lc.stop_signal(mode))
        longest = max(
            (
                self.profile_supervisor(k).timeout_for(self.settings.queues[k[1]])
                for k in self.life.pools
            ),
            default=0,
        )
        self._stop_deadline = time.monotonic() + lc.stop_grace(mode, longest)

    def profile_supervisor(self, key: tuple[str, str]) -> SupervisorSpec:
        return next(s for s in self.profile.supervisors if s.name == key[0])

    def _push_stop(self) -> None:
        if time.monotonic() < self._stop_deadline:
            return
        for child in self.children.values():
            log.warning("worker %s did not stop in time: killing it", child.name)
            self.life.kill(child.key, child.name, "did not stop in time")
            self._signal(child.name, signal.SIGKILL)
        self._stop_deadline = time.monotonic() + 5

    def _stop_after_crash(self) -> None:
        """Stop the workers gracefully (bounded), after the loop itself failed."""
        self.life.stopping = None
        with contextlib.suppress(Exception):
            self.stop(lc.StopMode.GRACEFUL)
        self._stop_deadline = min(self._stop_deadline, time.monotonic() + CRASH_STOP_S)
        deadline = time.monotonic() + CRASH_STOP_S + 10
        while self.children and time.monotonic() < deadline:
            try:
                self._reap()
                self._push_stop()
            except Exception:
                log.exception("while stopping the workers")
                for child in self.children.values():
                    self._signal(child.name, signal.SIGKILL)
            time.sleep(TICK_S)

    def _cleanup(self) -> None:
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if self._wake is not None:
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(redis.RedisError):
            self.scheduler.stop()
        with contextlib.suppress(redis.RedisError):
            control.withdraw(self.connection, self.name)

    # -- signals and commands ------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only queue it: everything happens in the loop (gunicorn's Arbiter).
        self._signals.append(signum)
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b".")

    def _handle_signals(self) -> None:
        while self._signals:
            self._act(lc.intent_of_signal(self._signals.pop(0), self.life.stopping))

    def _handle_commands(self) -> None:
        commands = self._redis("commands", lambda: control.pop_commands(self.connection, self.name))
        for cmd in commands or []:
            log.info("command from Redis: %s", cmd.get("command"))
            self._act(lc.intent_of_command(str(cmd.get("command"))))

    def _act(self, intent: lc.Intent) -> None:
        if intent is lc.Intent.RESTART:
            self.restart()
        elif intent is lc.Intent.FAST_STOP:
            self.stop(lc.StopMode.FAST)
        elif intent is lc.Intent.GRACEFUL_STOP:
            self.stop(lc.StopMode.GRACEFUL)

    def restart(self) -> None:
        """Rolling restart: a new generation starts, then the old one retires."""
        if self.life.restart(time.monotonic()):
            log.info("rolling restart to generation %d", self.life.generation)

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, key: tuple[str, str], slot: int, now: float) -> None:
        sup, queue = self.profile_supervisor(key), self.settings.queues[key[1]]
        assert self._run_dir is not None
        self._seq += 1
        report = self._run_dir / f"boot-{self._seq}"
        # The worker's liveness file: it starts BOOT_GRACE_S in the future (imports, waiting
        # for Redis at boot), then the worker keeps its mtime current (acmeq.worker.liveness).
        beat = self._run_dir / f"heartbeat-{self._seq}"
        beat.touch()
        stamp = time.time() + BOOT_GRACE_S
        os.utime(beat, (stamp, stamp))
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
            heartbeat_file=str(beat),
        )
        env = dict(os.environ)
        if self.settings.config_path is not None:
            env["ACMEQ_CONFIG"] = str(self.settings.config_path.resolve())
        # No preexec_fn (unsafe while other threads run): the worker sets its parent-death
        # signal itself; its own session keeps a terminal's Ctrl-C from reaching it directly.
        proc = subprocess.Popen(
            [sys.executable, "-m", "acmeq.worker", opts.to_json()],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if sup.nice:
            with contextlib.suppress(OSError):
                base = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, proc.pid, base + sup.nice)
        name = f"{opts.name}.{proc.pid}"
        self.children[name] = Child(proc, name, key, time.time(), report, beat)
        self.life.add(key, slot, name, now)
        log.debug("spawned %s into slot %d", name, slot)

    def _signal(self, name: str, sig: int) -> None:
        child = self.children.get(name)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)

    def _reap(self) -> None:
        for child in list(self.children.values()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[child.name]
            redis_ok = True
            if code == WorkerExit.BOOT_ERROR:  # while Redis is away it is Redis, not the boot
                redis_ok = bool(self._redis("ping", self.connection.ping))
            verdict = self.life.exited(
                child.key,
                child.name,
                code,
                time.monotonic(),
                redis_ok=redis_ok,
                boot_reason=_read(child.boot_report),
            )
            level = logging.ERROR if verdict.alarming else logging.WARNING
            if verdict.kind in (lc.ExitKind.CLEAN, lc.ExitKind.STOPPED):
                level = logging.INFO
            halted = f"pool {child.key[0]}/{child.key[1]} halted: " if verdict.halt else ""
            log.log(level, "%s%s", halted, verdict.message)
            for path in (child.boot_report, child.heartbeat):
                path.unlink(missing_ok=True)
            if verdict.recover:
                self._recover(child.name, child.key[1], verdict.message)

    def _recover(self, worker: str, queue: str, reason: str) -> None:
        try:
            recovery.recover_dead_worker(self.connection, worker, queue, reason, self.settings)
            self._pending.pop(worker, None)
        except redis.RedisError as exc:
            self.redis.failed("recovering a dead worker's jobs", exc)
            if worker not in self._pending:
                log.warning("cannot recover the jobs of %s now; retrying every second", worker)
            self._pending[worker] = (queue, reason)

    def _retry_recovery(self) -> None:
        for worker, (queue, reason) in list(self._pending.items()):
            self._recover(worker, queue, reason)
            if worker in self._pending:
                return  # still unreachable: try the rest next time

    def _kill_hung(self) -> None:
        beats: dict[str, float | None] = {}
        for child in self.children.values():
            beats[child.name] = None
            with contextlib.suppress(OSError):
                beats[child.name] = child.heartbeat.stat().st_mtime
        for name in lc.hung(beats, time.time(), self.opts.hung_timeout):
            child = self.children[name]
            reason = f"hung: no heartbeat for over {self.opts.hung_timeout:g} s"
            if self.life.kill(child.key, name, reason) is not None:
                log.error("worker %s is %s; killing it", name, reason)
                self._signal(name, signal.SIGKILL)

    def _drained(self) -> bool:
        return readings.drained(self.connection, self.queues) and not self._pending

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
        fit = budget.fit_host_budget(plans, self.profile.max_processes, self.memory_budget)
        for sup_name, fitted in fit.plans.items():
            self.decisions[sup_name] = list(fitted)
            for d in fitted:
                self.life.pools[(sup_name, d.queue)].desired = d.desired

    def plan_once(self) -> dict[str, list[autoscale.Decision]]:
        """What the balancer would decide now (for `worker scale --explain` with no master)."""
        self.check_budget()
        self._balance_all()
        return {s.name: self.decisions.get(s.name, []) for s in self.profile.supervisors}

    def _measure(self) -> dict[tuple[str, str], autoscale.QueueLoad]:
        return readings.measure(
            self.connection, self.name, self.profile, self.settings, self.life, self.runtimes
        )

    # -- maintenance and publishing ---------------------------------------------------------------
    def _maintain(self) -> None:
        judge = self.redis.up_for() >= LOST_JUDGE_AFTER_S
        for q in self.queues:
            recovery.maintain_queue(self.connection, q)
            if judge:
                recovery.recover_lost_workers(self.connection, q, set(self.children), self.settings)
        self._kill_overruns()

    def _kill_overruns(self) -> None:
        """Kill a worker whose job has overrun its timeout and the grace (stuck in C code)."""
        workers = [(c.name, c.key[1]) for c in self.children.values()]
        for name in readings.overrunning(self.connection, workers, lc.OVERRUN_GRACE_S):
            child = self.children[name]
            if self.life.kill(child.key, name, "overran its job's timeout"):
                log.error("worker %s overran its job's timeout: killing it", name)
                self._signal(name, signal.SIGKILL)

    def _alerts(self) -> None:
        # Imported here: the process manager does not load mail and webhook code at start.
        from acmeq.observability.alerts import engine

        engine.maybe_evaluate(self.connection, self.settings, self.name)

    def _schedules(self) -> None:
        # Periodic jobs ([schedules.NAME], docs/schedules.md): every master offers, only the
        # holder of the scheduler lock enqueues.
        from acmeq import schedules

        schedules.tick(self.connection, self.settings, time.time(), f"{self.name}:{self.pid}")

    def snapshot(self) -> dict[str, Any]:
        """The master as `acmeq worker list` and `acmeq status` show it."""
        return control.snapshot(
            {
                "name": self.name,
                "hostname": self.hostname,
                "pid": self.pid,
                "profile": self.profile.name,
                "status": self.life.status,
                "started_at": self.started_wall,
            },
            self.profile,
            self.life,
            {n: (c.proc.pid, c.started_wall) for n, c in self.children.items()},
            {name: [d.as_dict() for d in ds] for name, ds in self.decisions.items()},
            time.monotonic(),
        )

    def _publish(self) -> None:
        control.publish(self.connection, self.name, self.pid, self.hostname, self.snapshot())

    # -- loop helpers ------------------------------------------------------------------------
    def _redis(self, what: str, action: Callable[[], Any]) -> Any:
        """Run a Redis action; on a Redis error note the outage (logged once) and return None.
        Only :meth:`_ping` ends an outage (some actions swallow their own Redis errors)."""
        try:
            return action()
        except redis.RedisError as exc:
            self.redis.failed(what, exc)
            return None

    def _ping(self) -> bool:
        self.connection.ping()
        self.redis.ok()
        return True

    def _every(self, name: str, interval: float, action: Callable[[], Any]) -> Any:
        """Run a periodic task when due. A Redis error is an outage (see :meth:`_redis`); any
        other error is a bug in that task: logged with its traceback (at most once a minute
        per task), and the loop goes on."""
        now = time.monotonic()
        if now - self._timers.get(name, 0.0) < interval:
            return None
        self._timers[name] = now
        try:
            return self._redis(name, action)
        except Exception:
            if now - self._timers.get(f"error:{name}", -60.0) >= 60.0:
                self._timers[f"error:{name}"] = now
                log.exception("%s failed; the master goes on", name)
            return None

    def _sleep(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake[0]], [], [], TICK_S)
            if ready:
                os.read(self._wake[0], 4096)


# -- running a master as a service -----------------------------------------------------------------


def serve(
    settings: Settings,
    opts: MasterOptions,
    *,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    started: Callable[[], None] | None = None,
) -> MasterExit:
    """Run a master in this process until it stops: lock the pidfile, set up logging, connect
    to Redis, serve. Returns the exit status; raises UsageError (name taken, bad profile) and
    UnreachableError (Redis cannot be reached at start) before anything is started."""
    from acmeq.storage.redis_client import connect_checked

    name = opts.name or opts.hostname or socket.gethostname()
    pid_path = pidfile or settings.state_dir / "run" / f"master-{name}.pid"
    lock = daemon.lock_pidfile(pid_path, name)
    try:
        daemon.setup_logging(opts.log_level, log_file)
        connection = connect_checked(settings)
        if started is not None:
            started()
        return Master(settings, opts, connection).run()
    finally:
        daemon.release_pidfile(lock, pid_path)


def start_detached(
    settings: Settings,
    opts: MasterOptions,
    *,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> daemon.Detached:
    """Start a master in the background (double fork, own session); return once it is up.

    Its log goes to ``log_file`` (default ``<state>/logs/master-<name>.log``); ``environ``
    replaces the daemon's environment (and so its workers'). The returned handle's ``wait``
    gives the master's exit status."""
    name = opts.name or opts.hostname or socket.gethostname()
    log_path = log_file or settings.state_dir / "logs" / f"master-{name}.log"

    def run(started: Callable[[], None]) -> int:
        return int(serve(settings, opts, pidfile=pidfile, log_file=log_path, started=started))

    return daemon.detach(run, log_path, environ)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
