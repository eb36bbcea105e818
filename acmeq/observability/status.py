"""The one-screen view of acmeq (`acmeq status`): Redis, queues, masters, alerts.

:func:`collect` reads everything with counts and bounded reads, in two pipelined round trips,
so it costs the same with ten jobs as with a million:

1. ``INFO``, ``CONFIG GET save``; per queue ``LLEN``, five ``ZCARD`` (scheduled, started,
   deferred, failed, finished), ``LINDEX 0`` (the oldest ready job), the pause key and the set of
   RQ workers registered for it; the masters' snapshots; the active alerts; the metric fields of
   the last five minute buckets;
2. ``HGET enqueued_at`` of each queue's oldest job, each worker's state, each master's heartbeat
   key and each supervisor's pause key.

Never ``KEYS``/``SCAN`` and never a read per job. It only reads: masters that have been gone for
long are skipped here and forgotten by ``acmeq worker list`` (:mod:`acmeq.master.control`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import redis

from acmeq.config.settings import Settings
from acmeq.constants import (
    ALERTS_ACTIVE_KEY,
    MASTER_KEY,
    MASTERS_KEY,
    PAUSED_QUEUE_KEY,
    PAUSED_SUPERVISOR_KEY,
)
from acmeq.master.control import GONE_KEEP_S, MASTER_TTL_S
from acmeq.observability import metrics_report as metrics_read
from acmeq.storage.redis_client import describe, text

# Written by the alert evaluator: field = alert id, value = JSON with at least rule, queue,
# message, since (epoch s) and severity. Absent: no alert is active.
ALERTS_KEY = ALERTS_ACTIVE_KEY
SCHEMA_VERSION = 1
SEVERITY_ORDER = ("critical", "warning", "info")  # display order; unknown ones come last

# RQ's key layout (rq.Queue / rq.registry), written out so that `acmeq status` starts without
# importing RQ.
_READY = "rq:queue:{}"
_REGISTRIES = ("scheduled", "wip", "deferred", "failed", "finished")
_WORKERS_OF_QUEUE = "rq:workers:{}"
_WORKER = "rq:worker:"


@dataclass(frozen=True)
class RedisView:
    where: str
    version: str
    used_memory: int  # bytes
    used_memory_human: str
    maxmemory: int  # bytes; 0: no limit
    maxmemory_policy: str
    aof_enabled: bool
    rdb_save: str | None  # CONFIG GET save ("" = no snapshots); None when CONFIG is refused
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class QueueView:
    name: str
    priority: int
    ready: int
    scheduled: int
    started: int
    deferred: int
    failed: int
    finished: int
    oldest_age_s: float | None  # age of the oldest ready job; None when none (or unreadable)
    wait_threshold_s: int
    throughput_per_min: float  # runs (processed + failed) per minute, last five minutes
    processed_5m: int
    failed_5m: int
    runtime_avg_s: float | None
    runtime_p95_s: float | None
    processes_busy: int
    processes_total: int
    paused: bool

    @property
    def waiting_too_long(self) -> bool:
        return self.oldest_age_s is not None and self.oldest_age_s > self.wait_threshold_s


@dataclass(frozen=True)
class SupervisorView:
    name: str
    queues: tuple[str, ...]
    paused: bool
    processes_busy: int
    processes_total: int


@dataclass(frozen=True)
class MasterView:
    name: str
    hostname: str
    pid: int
    profile: str
    status: str  # running | terminating | restarting | gone
    started_at: float
    last_seen: float
    processes_busy: int
    processes_total: int
    supervisors: tuple[SupervisorView, ...]


@dataclass(frozen=True)
class Alert:
    id: str
    rule: str
    queue: str | None
    message: str
    since: float
    severity: str


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    redis: RedisView
    queues: tuple[QueueView, ...]
    masters: tuple[MasterView, ...]
    alerts: tuple[Alert, ...]

    @property
    def alerting(self) -> bool:
        return bool(self.alerts)

    def as_dict(self) -> dict[str, Any]:
        """The documented `status --json` document (docs/monitoring.md; schema 1)."""
        redis_view = asdict(self.redis)
        redis_view["warnings"] = list(self.redis.warnings)
        return {
            "schema": SCHEMA_VERSION,
            "taken_at": round(self.taken_at, 3),
            "redis": redis_view,
            "queues": [_rounded(asdict(q)) for q in self.queues],
            "masters": [
                {
                    **{k: v for k, v in asdict(m).items() if k != "supervisors"},
                    "supervisors": [{**asdict(s), "queues": list(s.queues)} for s in m.supervisors],
                }
                for m in self.masters
            ],
            "alerts": [asdict(a) for a in self.alerts],
        }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def collect(settings: Settings, connection: redis.Redis, now: float | None = None) -> Snapshot:
    """Everything `acmeq status` shows, in two pipelined round trips."""
    now = time.time() if now is None else now
    names = metrics_read.queue_names(settings)
    recent = metrics_read.recent_window(now)

    pipe = connection.pipeline(transaction=False)
    pipe.info()
    pipe.config_get("save")
    for q in names:
        pipe.llen(_READY.format(q))
        for registry in _REGISTRIES:
            pipe.zcard(f"rq:{registry}:{q}")
        pipe.lindex(_READY.format(q), 0)
        pipe.exists(PAUSED_QUEUE_KEY.format(queue=q))
        pipe.smembers(_WORKERS_OF_QUEUE.format(q))
    pipe.hgetall(MASTERS_KEY)
    pipe.hgetall(ALERTS_KEY)
    metrics_read.queue_reads(pipe, recent, names)
    # CONFIG may be refused (managed Redis, ACLs): that one error must not fail the command.
    first = pipe.execute(raise_on_error=False)
    for reply in first[:1] + first[2:]:
        if isinstance(reply, Exception):
            raise reply
    info: dict[str, Any] = first[0]
    save = None if isinstance(first[1], Exception) else str(first[1].get("save", ""))
    per_queue = 9
    rows = first[2 : 2 + per_queue * len(names)]
    masters_raw, alerts_raw = first[2 + per_queue * len(names) : 4 + per_queue * len(names)]
    recent_totals = metrics_read.parse_reads(first[4 + per_queue * len(names) :], names)

    counts: dict[str, list[int]] = {}
    heads: dict[str, str] = {}
    paused: dict[str, bool] = {}
    workers_of: dict[str, list[str]] = {}
    for i, q in enumerate(names):
        row = rows[per_queue * i : per_queue * (i + 1)]
        counts[q] = [int(n) for n in row[:6]]
        if row[6]:
            heads[q] = text(row[6])
        paused[q] = bool(row[7])
        workers_of[q] = sorted(text(k).removeprefix(_WORKER) for k in row[8])
    snaps = _snapshots(masters_raw, now)
    process_names = {p for snap in snaps for p in _process_names(snap)}
    worker_names = sorted({w for ws in workers_of.values() for w in ws} | process_names)
    sup_keys = [
        (snap["name"], sup["name"]) for snap in snaps for sup in snap.get("supervisors", [])
    ]

    pipe = connection.pipeline(transaction=False)
    for q in heads:
        pipe.hget(f"rq:job:{heads[q]}", "enqueued_at")
    for w in worker_names:
        # An idle acmeq worker has no `state` until its first job; `birth` without `death` is
        # what says it is alive (RQ sets `death` on a clean exit; the hash expires otherwise).
        pipe.hmget(_WORKER + w, ["state", "birth", "death"])
    for snap in snaps:
        pipe.exists(MASTER_KEY.format(name=snap["name"]))
    for master, sup in sup_keys:
        pipe.exists(PAUSED_SUPERVISOR_KEY.format(master=master, supervisor=sup))
    second = pipe.execute() if (heads or worker_names or snaps) else []
    stamps = dict(zip(heads, second[: len(heads)], strict=True))
    offset = len(heads)
    states: dict[str, str] = {}  # live workers only: busy | idle | ...
    for w, (state, birth, death) in zip(
        worker_names, second[offset : offset + len(worker_names)], strict=True
    ):
        if birth is not None and death is None:
            states[w] = text(state) if state is not None else "idle"
    offset += len(worker_names)
    alive = [bool(x) for x in second[offset : offset + len(snaps)]]
    offset += len(snaps)
    sup_paused = dict(zip(sup_keys, (bool(x) for x in second[offset:]), strict=True))

    queues = []
    for q in names:
        spec = settings.queues[q]
        ready, scheduled, started, deferred, failed, finished = counts[q]
        live = [w for w in workers_of[q] if w in states]
        t = metrics_read.fold(recent_totals[q])
        queues.append(
            QueueView(
                name=q,
                priority=spec.priority,
                ready=ready,
                scheduled=scheduled,
                started=started,
                deferred=deferred,
                failed=failed,
                finished=finished,
                oldest_age_s=_age(stamps.get(q), now),
                wait_threshold_s=spec.wait_threshold,
                throughput_per_min=t.runs * 60.0 / recent.elapsed,
                processed_5m=t.processed,
                failed_5m=t.failed,
                runtime_avg_s=t.runtime_avg,
                runtime_p95_s=t.runtime_pct(0.95),
                processes_busy=sum(1 for w in live if states[w] == "busy"),
                processes_total=len(live),
                paused=paused[q],
            )
        )
    masters = [
        _master(snap, is_alive, states, sup_paused)
        for snap, is_alive in zip(snaps, alive, strict=True)
    ]
    return Snapshot(
        taken_at=now,
        redis=_redis_view(describe(settings), info, save),
        queues=tuple(queues),
        masters=tuple(masters),
        alerts=tuple(_alerts(alerts_raw)),
    )


def _age(stamp: bytes | None, now: float) -> float | None:
    """Seconds since an RQ timestamp (``2026-05-01T10:00:00.123456Z``)."""
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(text(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(now - when.timestamp(), 0.0)


def _redis_view(where: str, info: dict[str, Any], save: str | None) -> RedisView:
    aof = str(info.get("aof_enabled", "0")) == "1"
    policy = str(info.get("maxmemory_policy", ""))
    used = int(info.get("used_memory", 0))
    limit = int(info.get("maxmemory", 0))
    warnings = []
    if not aof and save is not None and not save.strip():
        warnings.append("persistence is off (no AOF, no RDB): a Redis restart loses every job")
    if policy and policy != "noeviction":
        warnings.append(f"maxmemory-policy is {policy}: Redis may evict jobs; use noeviction")
    if limit and used >= 0.9 * limit:
        warnings.append(
            f"Redis uses {used * 100 // limit}% of maxmemory: at 100% it refuses new jobs"
        )
    return RedisView(
        where=where,
        version=str(info.get("redis_version", "")),
        used_memory=used,
        used_memory_human=str(info.get("used_memory_human", "")),
        maxmemory=limit,
        maxmemory_policy=policy,
        aof_enabled=aof,
        rdb_save=save,
        warnings=tuple(warnings),
    )


def _snapshots(raw: dict[bytes, bytes], now: float) -> list[dict[str, Any]]:
    """The masters' published snapshots, by name; long-gone ones are left out."""
    snaps = []
    for name in sorted(raw):
        try:
            snap = json.loads(raw[name])
        except ValueError:
            continue
        if not isinstance(snap, dict):
            continue
        snap["name"] = text(name)
        # A master unheard of for this long is gone for good (`worker list` forgets it).
        if now - float(snap.get("last_seen", 0)) > MASTER_TTL_S + GONE_KEEP_S:
            continue
        snaps.append(snap)
    return snaps


def _process_names(snap: dict[str, Any]) -> list[str]:
    return [
        proc["name"]
        for sup in snap.get("supervisors", [])
        for pool in sup.get("pools", [])
        for proc in pool.get("processes", [])
    ]


def _master(
    snap: dict[str, Any],
    alive: bool,
    states: dict[str, str],
    sup_paused: dict[tuple[str, str], bool],
) -> MasterView:
    supervisors = []
    for sup in snap.get("supervisors", []):
        procs = [p["name"] for pool in sup.get("pools", []) for p in pool.get("processes", [])]
        busy = sum(1 for p in procs if alive and states.get(p) == "busy")
        supervisors.append(
            SupervisorView(
                name=sup["name"],
                queues=tuple(sup.get("queues", [])),
                paused=sup_paused.get((snap["name"], sup["name"]), False),
                processes_busy=busy,
                processes_total=len(procs),
            )
        )
    return MasterView(
        name=snap["name"],
        hostname=str(snap.get("hostname", "")),
        pid=int(snap.get("pid", 0)),
        profile=str(snap.get("profile", "")),
        status=str(snap.get("status", "running")) if alive else "gone",
        started_at=float(snap.get("started_at", 0)),
        last_seen=float(snap.get("last_seen", 0)),
        processes_busy=sum(s.processes_busy for s in supervisors),
        processes_total=sum(s.processes_total for s in supervisors),
        supervisors=tuple(supervisors),
    )


def _alerts(raw: dict[bytes, bytes]) -> list[Alert]:
    alerts = []
    for key, value in raw.items():
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # Still an active alert: show it rather than hide a problem behind a parse error.
            data = {"rule": "unknown", "message": f"unreadable alert record {text(value)[:80]!r}"}
        queue = data.get("queue")
        alerts.append(
            Alert(
                id=text(key),
                rule=str(data.get("rule", "unknown")),
                queue=str(queue) if queue else None,
                message=str(data.get("message", "")),
                since=_float(data.get("since")),
                severity=str(data.get("severity", "warning")),
            )
        )
    return sorted(alerts, key=lambda a: (_severity_rank(a.severity), a.since, a.id))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _severity_rank(severity: str) -> int:
    try:
        return SEVERITY_ORDER.index(severity)
    except ValueError:
        return len(SEVERITY_ORDER)


def totals(snapshot: Snapshot) -> dict[str, int]:
    """Cluster-wide sums for headers and the `--check` line."""
    queues: Sequence[QueueView] = snapshot.queues
    return {
        "queues": len(queues),
        "ready": sum(q.ready for q in queues),
        "failed": sum(q.failed for q in queues),
        "processes_busy": sum(q.processes_busy for q in queues),
        "processes_total": sum(q.processes_total for q in queues),
        "masters": sum(1 for m in snapshot.masters if m.status != "gone"),
        "alerts": len(snapshot.alerts),
    }
