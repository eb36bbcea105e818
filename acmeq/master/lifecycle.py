"""The pool lifecycle of a master, as pure decisions: no processes, no Redis, no clock.

:class:`Lifecycle` holds what the master knows about its pools (which worker sits in which slot,
each slot's crash history, halts, the generation of a rolling restart, the stop in progress) and
answers the questions of the master's loop (:mod:`acmeq.supervisor`) given the time it is told:

- which slots to spawn a worker into now (:meth:`Lifecycle.spawns`);
- which workers to retire (:meth:`Lifecycle.retirements`): the old generation once its successors
  are up, and the oldest workers of a pool larger than its desired size;
- what a worker's exit means (:meth:`Lifecycle.exited`): replace it at once, back its slot off,
  halt the pool, and whether to look for its jobs;
- which workers are hung (:func:`hung`), from the age of their heartbeat files;
- what a signal or a command asks for, when the master may exit and with which status.

The crash backoff is per slot, not per pool (gunicorn restarts each worker on its own): a slot
whose workers keep dying early waits longer each time, but a slot below the pool's minimum never
waits more than :data:`FLOOR_BACKOFF_MAX_S`, so a kill storm cannot empty a pool for long.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from acmeq.constants import MasterExit, WorkerExit

STABLE_S = 10.0  # a worker that lived this long was not crash-looping: its slot starts afresh
CRASH_BACKOFF_BASE_S = 0.5  # the second early crash in a row waits this long, then doubling
CRASH_BACKOFF_MAX_S = 30.0
FLOOR_BACKOFF_MAX_S = 2.0  # a slot below the pool's minimum never waits longer than this
REDIS_BACKOFF_BASE_S = 0.5  # a worker that could not reach Redis: retried soon, Redis returns
REDIS_BACKOFF_MAX_S = 4.0
ROLLING_READY_S = 1.0  # a new-generation worker this old counts as up (rolling restart)
ROLLING_WAIT_S = 15.0  # retire the old generation after this long whatever happened
FAST_STOP_GRACE_S = 10.0
OVERRUN_GRACE_S = 30.0  # a graceful stop waits for the longest job timeout plus this
HUNG_TIMEOUT_S = 30.0  # default: a heartbeat file older than this marks a hung worker


class StopMode(StrEnum):
    GRACEFUL = "graceful"  # take no new job, let running ones finish
    FAST = "fast"  # interrupt running jobs (retried or failed, never lost)


class MasterCommand(StrEnum):
    """Commands another host sends a master through Redis (`acmeq worker terminate|restart`)."""

    TERMINATE = "terminate"
    TERMINATE_FAST = "terminate-fast"
    RESTART = "restart"


class Intent(StrEnum):
    """What a signal or a command asks the master to do."""

    NOTHING = "nothing"
    GRACEFUL_STOP = "graceful-stop"
    FAST_STOP = "fast-stop"
    RESTART = "restart"


class ExitKind(StrEnum):
    """How a worker's exit is read."""

    CLEAN = "clean"  # stopped on request, recycled, or over its memory limit: replace at once
    STOPPED = "stopped"  # ended by the signal the master sent it (stop, retire)
    CRASHED = "crashed"  # died unexpectedly: replace, backing its slot off when it repeats
    KILLED = "killed"  # the master killed it (hung, overran its job): recovered like a crash
    REDIS_UNAVAILABLE = "redis-unavailable"  # transient: retry soon, never halt
    BOOT_ERROR = "boot-error"  # can never start (import error, bad config): halt the pool


@dataclass
class Worker:
    """One worker process as the lifecycle sees it."""

    name: str
    slot: int
    generation: int
    started: float
    retiring: bool = False
    killed: str = ""  # why the master SIGKILLed it, if it did


@dataclass
class Slot:
    """The crash history of one place in a pool."""

    crashes: int = 0  # early deaths in a row
    not_before: float = 0.0  # no worker is spawned into the slot before this time


@dataclass
class Pool:
    """The lifecycle state of one pool (one queue of one supervisor)."""

    minimum: int
    desired: int
    workers: list[Worker] = field(default_factory=list)
    slots: dict[int, Slot] = field(default_factory=dict)
    halted: str | None = None

    def slot(self, index: int) -> Slot:
        return self.slots.setdefault(index, Slot())

    def active(self, generation: int | None = None) -> list[Worker]:
        """Workers not retiring (of one generation, when given)."""
        return [
            w
            for w in self.workers
            if not w.retiring and (generation is None or w.generation == generation)
        ]

    def find(self, name: str) -> Worker | None:
        return next((w for w in self.workers if w.name == name), None)

    def backoff(self, now: float, generation: int) -> tuple[int, float]:
        """Slots waiting to respawn after crashes, and the longest wait left (seconds)."""
        taken = {w.slot for w in self.active(generation)}
        waits = [
            self.slot(i).not_before - now
            for i in range(self.desired)
            if i not in taken and self.slot(i).not_before > now
        ]
        return len(waits), max(waits, default=0.0)


@dataclass(frozen=True)
class ExitVerdict:
    """What one worker's exit means for its pool."""

    kind: ExitKind
    message: str
    recover: bool  # look for the jobs it had started
    backoff: float = 0.0  # seconds before its slot gets a new worker
    halt: str | None = None  # the pool halts with this reason

    @property
    def alarming(self) -> bool:
        """Worth an ERROR in the log (an exit the master did not ask for)."""
        return self.kind in (ExitKind.CRASHED, ExitKind.BOOT_ERROR)


def describe_code(code: int) -> str:
    """``exit code 1`` or ``killed by signal 9 (SIGKILL)``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by signal {-code} ({name})"


def crash_backoff(crashes: int, below_minimum: bool) -> float:
    """Seconds a slot waits after its ``crashes``-th early death in a row."""
    if crashes <= 1:
        return 0.0
    cap = FLOOR_BACKOFF_MAX_S if below_minimum else CRASH_BACKOFF_MAX_S
    return min(CRASH_BACKOFF_BASE_S * 2.0 ** (crashes - 2), cap)


def redis_backoff(attempts: int) -> float:
    """Seconds a slot waits after its worker found Redis unreachable ``attempts`` times in a row."""
    return min(REDIS_BACKOFF_BASE_S * 2.0 ** max(attempts - 1, 0), REDIS_BACKOFF_MAX_S)


def hung(beats: Mapping[str, float | None], now: float, timeout: float) -> list[str]:
    """Workers whose heartbeat file (mtime, wall clock) is older than ``timeout`` seconds.

    A worker moves its file's mtime to now while idle, between jobs or waiting for Redis, and
    into the future (now + job timeout + grace) when a job starts; so an old mtime means it is
    stuck outside a job or far beyond its job's timeout. A missing file (None) is not judged.
    """
    return sorted(name for name, beat in beats.items() if beat is not None and now - beat > timeout)


def intent_of_signal(signum: int, stopping: StopMode | None) -> Intent:
    """SIGHUP rolling restart; SIGTERM graceful stop (a second one: fast); SIGINT fast stop."""
    if signum == signal.SIGHUP:
        return Intent.RESTART
    if signum == signal.SIGINT or (signum == signal.SIGTERM and stopping is not None):
        return Intent.FAST_STOP
    if signum == signal.SIGTERM:
        return Intent.GRACEFUL_STOP
    return Intent.NOTHING


def intent_of_command(command: str) -> Intent:
    """The intent of a command read from Redis (unknown commands ask for nothing)."""
    intents = {
        MasterCommand.TERMINATE.value: Intent.GRACEFUL_STOP,
        MasterCommand.TERMINATE_FAST.value: Intent.FAST_STOP,
        MasterCommand.RESTART.value: Intent.RESTART,
    }
    return intents.get(str(command), Intent.NOTHING)


def stop_signal(mode: StopMode) -> int:
    """A worker stops fast on SIGINT: two SIGTERMs sent back to back would merge into one
    pending signal and read as a graceful stop."""
    return signal.SIGINT if mode is StopMode.FAST else signal.SIGTERM


def stop_grace(mode: StopMode, longest_timeout: float) -> float:
    """How long workers get to stop before they are killed."""
    return FAST_STOP_GRACE_S if mode is StopMode.FAST else longest_timeout + OVERRUN_GRACE_S


@dataclass
class Lifecycle:
    """Every pool of a master, keyed by (supervisor, queue)."""

    pools: dict[tuple[str, str], Pool]
    generation: int = 0
    stopping: StopMode | None = None
    rolling_since: float | None = None  # a rolling restart is in progress since then

    # -- intents -------------------------------------------------------------------------------
    def stop(self, mode: StopMode) -> bool:
        """Begin or escalate a stop; False when it changes nothing (fast wins)."""
        if self.stopping is StopMode.FAST or self.stopping is mode:
            return False
        self.stopping = mode
        return True

    def restart(self, now: float) -> bool:
        """Rolling restart: a new generation starts, the old one retires; halted pools revive.

        False while stopping (a stop wins over a restart)."""
        if self.stopping is not None:
            return False
        self.generation += 1
        self.rolling_since = now
        for pool in self.pools.values():
            pool.halted = None
            pool.slots.clear()  # a deploy is a fresh start for crash-looping slots
        return True

    @property
    def status(self) -> str:
        if self.stopping is not None:
            return "terminating"
        if self.rolling_since is not None:
            return "restarting"
        return "running"

    # -- spawning and retiring -------------------------------------------------------------------
    def spawns(self, now: float) -> list[tuple[tuple[str, str], int]]:
        """(pool, slot) pairs that should get a new worker now."""
        if self.stopping is not None:
            return []
        out = []
        for key, pool in self.pools.items():
            if pool.halted:
                continue
            taken = {w.slot for w in pool.active(self.generation)}
            out += [
                (key, i)
                for i in range(pool.desired)
                if i not in taken and pool.slot(i).not_before <= now
            ]
        return out

    def add(self, key: tuple[str, str], slot: int, name: str, now: float) -> Worker:
        """Record a worker spawned into ``slot``."""
        worker = Worker(name, slot, self.generation, now)
        self.pools[key].workers.append(worker)
        return worker

    def retirements(self, now: float) -> list[tuple[tuple[str, str], Worker]]:
        """Workers to retire now (marked retiring): the old generation once the new one is up,
        and beyond a pool's desired size the oldest first."""
        if self.stopping is not None:
            return []
        out: list[tuple[tuple[str, str], Worker]] = []
        for key, pool in self.pools.items():
            new = pool.active(self.generation)
            old = [w for w in pool.active() if w.generation != self.generation]
            if old:
                up = sum(1 for w in new if now - w.started >= ROLLING_READY_S)
                waited = (
                    self.rolling_since is not None and now - self.rolling_since > ROLLING_WAIT_S
                )
                if up >= min(len(old), pool.desired) or waited or pool.halted:
                    out += [(key, w) for w in old]
            excess = len(new) - pool.desired
            if excess > 0:
                out += [(key, w) for w in sorted(new, key=lambda w: w.started)[:excess]]
        for _key, worker in out:
            worker.retiring = True
        for pool in self.pools.values():
            self._compact(pool)
        if self.rolling_since is not None and not any(
            w.generation != self.generation for p in self.pools.values() for w in p.workers
        ):
            self.rolling_since = None
        return out

    def _compact(self, pool: Pool) -> None:
        # After the oldest retire, survivors may sit in slots beyond the desired size: move
        # them into the free slots below it (the slots keep their own crash history).
        active = pool.active(self.generation)
        taken = {w.slot for w in active}
        free = [i for i in range(pool.desired) if i not in taken]
        for worker in sorted(active, key=lambda w: w.slot):
            if worker.slot >= pool.desired and free:
                worker.slot = free.pop(0)

    # -- exits -----------------------------------------------------------------------------------
    def exited(
        self,
        key: tuple[str, str],
        name: str,
        code: int,
        now: float,
        *,
        redis_ok: bool = True,
        boot_reason: str = "",
    ) -> ExitVerdict:
        """Record that worker ``name`` of pool ``key`` exited with ``code`` (negative: killed by
        that signal) and decide what follows. ``redis_ok`` says whether the master itself can
        reach Redis: a boot error while it cannot is read as Redis being away, not a bad boot."""
        pool = self.pools[key]
        worker = pool.find(name)
        if worker is None:
            return ExitVerdict(ExitKind.CLEAN, f"unknown worker {name} exited", recover=True)
        pool.workers.remove(worker)
        lived = now - worker.started
        how = describe_code(code)
        current = worker.generation == self.generation and not worker.retiring
        slot = pool.slot(worker.slot) if current else Slot()
        if worker.killed:
            verdict = self._crash(pool, worker, slot, lived, now, ExitKind.KILLED, worker.killed)
        elif code == WorkerExit.REDIS_UNAVAILABLE or (
            code == WorkerExit.BOOT_ERROR and not redis_ok
        ):
            slot.crashes += 1
            wait = redis_backoff(slot.crashes)
            slot.not_before = now + wait
            verdict = ExitVerdict(
                ExitKind.REDIS_UNAVAILABLE,
                f"worker {name} could not reach Redis ({how}); retrying in {wait:.1f} s",
                recover=True,
                backoff=wait,
            )
        elif code == WorkerExit.BOOT_ERROR:
            reason = boot_reason or "worker could not boot (see the log)"
            pool.halted = reason
            verdict = ExitVerdict(ExitKind.BOOT_ERROR, reason, recover=False, halt=reason)
        elif code in (WorkerExit.OK, WorkerExit.RECYCLE, WorkerExit.MEMORY_LIMIT):
            slot.crashes, slot.not_before = 0, 0.0
            what = {
                WorkerExit.OK: "stopped",
                WorkerExit.RECYCLE: "recycled itself (max_jobs/max_time)",
                WorkerExit.MEMORY_LIMIT: "exited over its memory limit; replacing it",
            }[WorkerExit(code)]
            verdict = ExitVerdict(ExitKind.CLEAN, f"worker {name} {what}", recover=True)
        elif (self.stopping is not None or worker.retiring) and -code in (
            signal.SIGTERM,
            signal.SIGINT,
        ):
            # It was told to stop and the signal ended it before its handler was installed.
            verdict = ExitVerdict(ExitKind.STOPPED, f"worker {name} stopped ({how})", recover=True)
        else:
            verdict = self._crash(pool, worker, slot, lived, now, ExitKind.CRASHED, how)
        return verdict

    def _crash(
        self,
        pool: Pool,
        worker: Worker,
        slot: Slot,
        lived: float,
        now: float,
        kind: ExitKind,
        how: str,
    ) -> ExitVerdict:
        slot.crashes = slot.crashes + 1 if lived < STABLE_S else 1
        floor = max(pool.minimum, 1 if pool.desired else 0)
        wait = crash_backoff(slot.crashes, worker.slot < floor)
        slot.not_before = now + wait
        after = f"; its slot waits {wait:.1f} s" if wait else ""
        verb = "was killed" if kind is ExitKind.KILLED else "died"
        return ExitVerdict(
            kind,
            f"worker {worker.name} {verb} ({how}) after {lived:.1f} s{after}",
            recover=True,
            backoff=wait,
        )

    def kill(self, key: tuple[str, str], name: str, reason: str) -> Worker | None:
        """Mark a worker the master is about to SIGKILL (its exit is then read as ``KILLED``)."""
        worker = self.pools[key].find(name)
        if worker is not None and not worker.killed:
            worker.killed = reason
            return worker
        return None

    # -- the master as a whole -------------------------------------------------------------------
    def all_halted(self) -> bool:
        return bool(self.pools) and all(p.halted for p in self.pools.values())

    def done(self) -> bool:
        """A stop is under way and every worker has exited."""
        return self.stopping is not None and not any(p.workers for p in self.pools.values())

    def exit_status(self) -> MasterExit:
        return MasterExit.HALTED if self.all_halted() else MasterExit.OK

    def backing_off(self, now: float) -> dict[tuple[str, str], tuple[int, float]]:
        """Pools with slots waiting after crashes: (slots, longest wait left)."""
        out = {}
        for key, pool in self.pools.items():
            slots, wait = pool.backoff(now, self.generation)
            if slots:
                out[key] = (slots, wait)
        return out


def pools_at_start(counts: Iterable[tuple[tuple[str, str], int, int]]) -> Lifecycle:
    """A lifecycle for pools given as ((supervisor, queue), minimum, desired) triples."""
    return Lifecycle({key: Pool(minimum, desired) for key, minimum, desired in counts})
