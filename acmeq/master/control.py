"""Cluster-wide view and control of masters through Redis.

Every master publishes a snapshot of itself (supervisors, pools, processes, last balancing
decisions) under ``acmeq:masters`` and keeps a heartbeat key with a short TTL. Commands from any
host (`acmeq worker terminate|restart`) are pushed onto a master's command list, which the master
reads every tick; pauses are plain keys the workers check in their start script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from acmeq import keys
from acmeq.config.settings import ProfileSpec
from acmeq.errors import UsageError
from acmeq.master.lifecycle import Lifecycle, MasterCommand
from acmeq.storage.redis_client import text

MASTER_TTL_S = 15  # a master not heard of for this long is shown as gone
GONE_KEEP_S = 300  # and forgotten this long after that
COMMANDS = tuple(MasterCommand)


@dataclass
class ProcessView:
    name: str
    pid: int
    queue: str
    supervisor: str
    state: str = "starting"
    current_job: str | None = None
    rss_mb: float | None = None
    jobs_done: int = 0
    uptime_s: float = 0.0
    retiring: bool = False


@dataclass(frozen=True)
class SupervisorView:
    """One supervisor of a master as `acmeq status` shows it."""

    name: str
    queues: tuple[str, ...]
    paused: bool
    processes_busy: int
    processes_total: int
    # Pools not at full strength: "payments halted: <reason>", "payments backing off: 1 slot
    # waits 1.5 s after crashes" (from the master's snapshot).
    problems: tuple[str, ...] = ()


@dataclass
class MasterView:
    """One master as Redis knows it (`acmeq worker list`, `acmeq status`)."""

    name: str
    hostname: str
    pid: int
    profile: str
    status: str  # running | terminating | restarting | gone
    started_at: float
    last_seen: float
    supervisors: list[dict[str, Any]] = field(default_factory=list)  # as the master published
    processes: list[ProcessView] = field(default_factory=list)
    paused_supervisors: frozenset[str] = frozenset()

    @property
    def processes_busy(self) -> int:
        return sum(1 for p in self.processes if p.state == "busy")

    @property
    def processes_total(self) -> int:
        return len(self.processes)

    @property
    def supervisor_views(self) -> tuple[SupervisorView, ...]:
        return tuple(
            SupervisorView(
                name=sup["name"],
                queues=tuple(sup.get("queues", [])),
                paused=sup["name"] in self.paused_supervisors,
                processes_busy=sum(
                    1 for p in self.processes if p.supervisor == sup["name"] and p.state == "busy"
                ),
                processes_total=sum(1 for p in self.processes if p.supervisor == sup["name"]),
                problems=pool_problems(sup),
            )
            for sup in self.supervisors
        )

    def forgotten(self, now: float | None = None) -> bool:
        """Gone for so long that it is no longer listed."""
        now = time.time() if now is None else now
        return self.status == "gone" and now - self.last_seen > MASTER_TTL_S + GONE_KEEP_S

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hostname": self.hostname,
            "pid": self.pid,
            "profile": self.profile,
            "status": self.status,
            "started_at": self.started_at,
            "last_seen": self.last_seen,
            "supervisors": self.supervisors,
            "processes": [vars(p) for p in self.processes],
        }


def claim_name(connection: redis.Redis, name: str, pid: int, hostname: str) -> str | None:
    """Take the master name cluster-wide; return who holds it when it is taken."""
    holder = f"{hostname}:{pid}"
    if connection.set(keys.master(name), holder, nx=True, ex=MASTER_TTL_S):
        return None
    current = connection.get(keys.master(name))
    return text(current) if current else None


def publish(
    connection: redis.Redis, name: str, pid: int, hostname: str, snapshot: dict[str, Any]
) -> None:
    """Refresh the master's heartbeat and snapshot (one round trip)."""
    snapshot = dict(snapshot, last_seen=time.time())
    pipe = connection.pipeline(transaction=False)
    pipe.set(keys.master(name), f"{hostname}:{pid}", ex=MASTER_TTL_S)
    pipe.hset(keys.MASTERS, name, json.dumps(snapshot))
    pipe.execute()


def snapshot(
    header: dict[str, Any],
    profile: ProfileSpec,
    life: Lifecycle,
    processes: Mapping[str, tuple[int, float]],
    decisions: Mapping[str, list[dict[str, Any]]],
    now: float,
) -> dict[str, Any]:
    """A master's published state: ``header`` (name, host, pid, status ...) plus every
    supervisor's pools (desired size, halt, crash backoff, processes as ``name -> (pid,
    started_at)``) and last balancing decisions. ``now`` is the lifecycle's clock."""
    backing_off = life.backing_off(now)
    sups = []
    for sup in profile.supervisors:
        pools = []
        for q in sup.queues:
            pool = life.pools[(sup.name, q)]
            slots, wait = backing_off.get((sup.name, q), (0, 0.0))
            procs = [
                {
                    "name": w.name,
                    "pid": processes[w.name][0],
                    "started_at": processes[w.name][1],
                    "generation": w.generation,
                    "retiring": w.retiring,
                }
                for w in pool.workers
                if w.name in processes
            ]
            backoff = {"slots": slots, "seconds": round(wait, 1)} if slots else None
            pools.append(
                {
                    "queue": q,
                    "desired": pool.desired,
                    "halted": pool.halted,
                    "backoff": backoff,
                    "processes": procs,
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
                "decisions": decisions.get(sup.name, []),
            }
        )
    return dict(header, supervisors=sups)


def withdraw(connection: redis.Redis, name: str) -> None:
    """Remove a master that stopped cleanly."""
    pipe = connection.pipeline()
    pipe.delete(keys.master(name), keys.master_commands(name))
    pipe.hdel(keys.MASTERS, name)
    pipe.execute()


def pop_commands(connection: redis.Redis, name: str) -> list[dict[str, Any]]:
    key = keys.master_commands(name)
    pipe = connection.pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    raw, _ = pipe.execute()
    return [json.loads(item) for item in raw]


def send(connection: redis.Redis, command: str, master: str | None = None) -> list[str]:
    """Queue a command (a :class:`MasterCommand`) for one master or all running ones; return
    the masters addressed."""
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; valid: {', '.join(COMMANDS)}")
    targets = [m.name for m in list_masters(connection) if m.status != "gone"]
    if master is not None:
        if master not in targets:
            raise UsageError(
                f"no running master named {master!r}; running: {', '.join(targets) or '(none)'}"
            )
        targets = [master]
    payload = json.dumps({"command": command, "at": time.time()})
    pipe = connection.pipeline()
    for name in targets:
        pipe.rpush(keys.master_commands(name), payload)
        pipe.expire(keys.master_commands(name), 3600)
    pipe.execute()
    return targets


def set_paused(
    connection: redis.Redis,
    paused: bool,
    queues: Iterable[str] = (),
    supervisors: Iterable[str] = (),
    master: str | None = None,
) -> list[str]:
    """Pause or continue queues (cluster-wide) or supervisors (of one or every master)."""
    flags = [keys.paused_queue(q) for q in queues]
    wanted = list(supervisors)
    if wanted:
        masters = [m for m in list_masters(connection) if m.status != "gone"]
        if master is not None:
            masters = [m for m in masters if m.name == master]
        known = {s["name"] for m in masters for s in m.supervisors}
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise UsageError(
                f"no running supervisor named {unknown[0]!r}; running: "
                f"{', '.join(sorted(known)) or '(none)'}"
            )
        flags += [
            keys.paused_supervisor(m.name, s)
            for m in masters
            for s in wanted
            if s in {x["name"] for x in m.supervisors}
        ]
    if not flags:
        raise UsageError("say what to pause: --queue Q and/or --supervisor S")
    if paused:
        pipe = connection.pipeline()
        for key in flags:
            pipe.set(key, str(time.time()))
        pipe.execute()
    else:
        connection.delete(*flags)
    return flags


def parse_snapshots(raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """The published snapshots by master name; unreadable ones are left out."""
    snaps = {}
    for key in sorted(raw):
        try:
            snap = json.loads(raw[key])
        except ValueError:
            continue
        if isinstance(snap, dict):
            snaps[text(key)] = snap
    return snaps


def pool_problems(supervisor: dict[str, Any]) -> tuple[str, ...]:
    """What keeps a published supervisor's pools below strength: halts and crash backoffs."""
    out = []
    for pool in supervisor.get("pools", []):
        if pool.get("halted"):
            out.append(f"{pool['queue']} halted: {pool['halted']}")
        backoff = pool.get("backoff")
        if backoff:
            slots = int(backoff.get("slots", 0))
            out.append(
                f"{pool['queue']} backing off: {slots} slot{'s' if slots != 1 else ''} "
                f"wait{'s' if slots == 1 else ''} up to {float(backoff.get('seconds', 0)):.1f} s "
                "after crashes"
            )
    return tuple(out)


def view_of(name: str, snap: dict[str, Any], alive: bool) -> MasterView:
    """A master's view from its snapshot; ``alive``: its heartbeat key exists."""
    return MasterView(
        name=name,
        hostname=str(snap.get("hostname", "")),
        pid=int(snap.get("pid", 0)),
        profile=str(snap.get("profile", "")),
        status=str(snap.get("status", "running")) if alive else "gone",
        started_at=float(snap.get("started_at", 0)),
        last_seen=float(snap.get("last_seen", 0)),
        supervisors=list(snap.get("supervisors", [])),
        processes=_processes(snap, not alive),
    )


def list_masters(connection: redis.Redis, with_processes: bool = False) -> list[MasterView]:
    """Every master known to Redis; gone ones are marked and, after a while, cleaned up."""
    snaps = parse_snapshots(connection.hgetall(keys.MASTERS))
    alive = connection.pipeline(transaction=False)
    for name in snaps:
        alive.exists(keys.master(name))
    flags = alive.execute() if snaps else []
    views: list[MasterView] = []
    stale: list[str] = []
    for (name, snap), is_alive in zip(snaps.items(), flags, strict=True):
        view = view_of(name, snap, bool(is_alive))
        if view.forgotten():
            stale.append(name)
            continue
        if not with_processes:
            view.processes = []
        views.append(view)
    if stale:
        connection.hdel(keys.MASTERS, *stale)
    if with_processes:
        _fill_live(connection, [p for v in views if v.status != "gone" for p in v.processes])
    return views


def _processes(snap: dict[str, Any], gone: bool) -> list[ProcessView]:
    # A gone master's processes are not running: their uptime stops when it was last seen.
    clock = float(snap.get("last_seen") or time.time()) if gone else time.time()
    out = []
    for sup in snap.get("supervisors", []):
        for pool in sup.get("pools", []):
            for proc in pool.get("processes", []):
                out.append(
                    ProcessView(
                        name=proc["name"],
                        pid=proc["pid"],
                        queue=pool["queue"],
                        supervisor=sup["name"],
                        state="gone" if gone else "starting",
                        uptime_s=max(clock - proc.get("started_at", clock), 0.0),
                        retiring=proc.get("retiring", False),
                    )
                )
    return out


def _fill_live(connection: redis.Redis, procs: list[ProcessView]) -> None:
    """State, current job, RSS and jobs done of each process, from its RQ worker hash."""
    if not procs:
        return
    pipe = connection.pipeline(transaction=False)
    for p in procs:
        pipe.hmget(
            keys.worker(p.name),
            ["state", "acmeq_rss_mb", "acmeq_jobs", "successful_job_count", "failed_job_count"],
        )
        pipe.smembers(keys.worker_executions(p.name))
    replies = pipe.execute()
    for i, p in enumerate(procs):
        state, rss, jobs, ok, failed = replies[2 * i]
        if state is not None:
            p.state = text(state)
        p.rss_mb = float(rss) if rss else None
        p.jobs_done = int(ok or 0) + int(failed or 0) or int(jobs or 0)
        executions = sorted(text(c).rpartition(":")[0] for c in replies[2 * i + 1])
        p.current_job = ", ".join(executions) or None
