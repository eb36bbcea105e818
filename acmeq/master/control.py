"""Cluster-wide view and control of masters through Redis.

Every master publishes a snapshot of itself (supervisors, pools, processes, last balancing
decisions) under ``acmeq:masters`` and keeps a heartbeat key with a short TTL. Commands from any
host (`acmeq worker terminate|restart`) are pushed onto a master's command list, which the master
reads every tick; pauses are plain keys the workers check in their start script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from acmeq.constants import (
    MASTER_COMMANDS_KEY,
    MASTER_KEY,
    MASTERS_KEY,
    PAUSED_QUEUE_KEY,
    PAUSED_SUPERVISOR_KEY,
)
from acmeq.errors import UsageError
from acmeq.storage.redis_client import text

MASTER_TTL_S = 15  # a master not heard of for this long is shown as gone
GONE_KEEP_S = 300  # and forgotten this long after that
COMMANDS = ("terminate", "terminate-fast", "restart")


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


@dataclass
class MasterView:
    name: str
    hostname: str
    pid: int
    profile: str
    status: str  # running | terminating | restarting | gone
    started_at: float
    last_seen: float
    supervisors: list[dict[str, Any]] = field(default_factory=list)
    processes: list[ProcessView] = field(default_factory=list)

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
    if connection.set(MASTER_KEY.format(name=name), holder, nx=True, ex=MASTER_TTL_S):
        return None
    current = connection.get(MASTER_KEY.format(name=name))
    return text(current) if current else None


def publish(
    connection: redis.Redis, name: str, pid: int, hostname: str, snapshot: dict[str, Any]
) -> None:
    """Refresh the master's heartbeat and snapshot (one round trip)."""
    snapshot = dict(snapshot, last_seen=time.time())
    pipe = connection.pipeline(transaction=False)
    pipe.set(MASTER_KEY.format(name=name), f"{hostname}:{pid}", ex=MASTER_TTL_S)
    pipe.hset(MASTERS_KEY, name, json.dumps(snapshot))
    pipe.execute()


def withdraw(connection: redis.Redis, name: str) -> None:
    """Remove a master that stopped cleanly."""
    pipe = connection.pipeline()
    pipe.delete(MASTER_KEY.format(name=name), MASTER_COMMANDS_KEY.format(name=name))
    pipe.hdel(MASTERS_KEY, name)
    pipe.execute()


def pop_commands(connection: redis.Redis, name: str) -> list[dict[str, Any]]:
    key = MASTER_COMMANDS_KEY.format(name=name)
    pipe = connection.pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    raw, _ = pipe.execute()
    return [json.loads(item) for item in raw]


def send(connection: redis.Redis, command: str, master: str | None = None) -> list[str]:
    """Queue a command for one master or all running ones; return the masters addressed."""
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
        pipe.rpush(MASTER_COMMANDS_KEY.format(name=name), payload)
        pipe.expire(MASTER_COMMANDS_KEY.format(name=name), 3600)
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
    keys = [PAUSED_QUEUE_KEY.format(queue=q) for q in queues]
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
        keys += [
            PAUSED_SUPERVISOR_KEY.format(master=m.name, supervisor=s)
            for m in masters
            for s in wanted
            if s in {x["name"] for x in m.supervisors}
        ]
    if not keys:
        raise UsageError("say what to pause: --queue Q and/or --supervisor S")
    if paused:
        pipe = connection.pipeline()
        for key in keys:
            pipe.set(key, str(time.time()))
        pipe.execute()
    else:
        connection.delete(*keys)
    return keys


def list_masters(connection: redis.Redis, with_processes: bool = False) -> list[MasterView]:
    """Every master known to Redis; gone ones are marked and, after a while, cleaned up."""
    raw = connection.hgetall(MASTERS_KEY)
    names = sorted(text(k) for k in raw)
    alive = connection.pipeline(transaction=False)
    for name in names:
        alive.exists(MASTER_KEY.format(name=name))
    flags = alive.execute() if names else []
    views: list[MasterView] = []
    stale: list[str] = []
    for name, is_alive in zip(names, flags, strict=True):
        snap = json.loads(raw[name.encode()])
        view = MasterView(
            name=name,
            hostname=snap.get("hostname", ""),
            pid=int(snap.get("pid", 0)),
            profile=snap.get("profile", ""),
            status=snap.get("status", "running"),
            started_at=float(snap.get("started_at", 0)),
            last_seen=float(snap.get("last_seen", 0)),
            supervisors=snap.get("supervisors", []),
        )
        if not is_alive:
            view.status = "gone"
            if time.time() - view.last_seen > MASTER_TTL_S + GONE_KEEP_S:
                stale.append(name)
                continue
        if with_processes:
            view.processes = _processes(snap, view.status == "gone")
        views.append(view)
    if stale:
        connection.hdel(MASTERS_KEY, *stale)
    if with_processes:
        _fill_live(connection, [p for v in views if v.status != "gone" for p in v.processes])
    return views


def _processes(snap: dict[str, Any], gone: bool) -> list[ProcessView]:
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
                        uptime_s=max(time.time() - proc.get("started_at", time.time()), 0.0),
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
            f"rq:worker:{p.name}",
            ["state", "acmeq_rss_mb", "acmeq_jobs", "successful_job_count", "failed_job_count"],
        )
        pipe.smembers(f"rq:worker:{p.name}:executions")
    replies = pipe.execute()
    for i, p in enumerate(procs):
        state, rss, jobs, ok, failed = replies[2 * i]
        if state is not None:
            p.state = text(state)
        p.rss_mb = float(rss) if rss else None
        p.jobs_done = int(ok or 0) + int(failed or 0) or int(jobs or 0)
        executions = sorted(text(c).rpartition(":")[0] for c in replies[2 * i + 1])
        p.current_job = ", ".join(executions) or None
