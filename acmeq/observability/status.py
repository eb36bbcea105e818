"""The one-screen view of acmeq (`acmeq status`): Redis, queues, masters, alerts.

:func:`collect` reads everything with counts and bounded reads, in two pipelined round trips,
so it costs the same with ten jobs as with a million:

1. ``INFO``, ``CONFIG GET save``, the queue probe (:mod:`acmeq.observability.probe`: per queue
   its counts, oldest job's age, pause and workers, in one ``EVAL``), the masters' snapshots, the
   active alerts with the dead-man clocks and the evaluator's lock, and the metric fields of the
   last five minute buckets;
2. each master's heartbeat key, each supervisor's pause key and the state of each master's
   worker processes.

Alerts tell the truth: every active alert is re-checked against the probe of the same read
(:func:`acmeq.observability.alerts.rules.standing`), so a queue cleared after a backlog alert
shows no backlog alert, even when no master runs to resolve it; what cannot be re-checked is
marked stale with its age when no evaluator is running.

Never ``KEYS``/``SCAN`` and never a read per job. It only reads: masters that have been gone for
long are skipped here and forgotten by ``acmeq worker list`` (:mod:`acmeq.master.control`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.master.control import MasterView, parse_snapshots, view_of
from acmeq.observability import metrics_report as metrics_read
from acmeq.observability import probe
from acmeq.observability.alerts.notice import duration
from acmeq.observability.alerts.rules import Standing, load_json_hash, standing
from acmeq.storage.redis_client import describe, text

SCHEMA_VERSION = 1
SEVERITY_ORDER = ("critical", "warning", "info")  # display order; unknown ones come last


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
    paused: bool  # its own pause or RQ's suspension

    @property
    def waiting_too_long(self) -> bool:
        return self.oldest_age_s is not None and self.oldest_age_s > self.wait_threshold_s


@dataclass(frozen=True)
class Alert:
    id: str
    rule: str
    queue: str | None
    message: str
    since: float
    severity: str
    stale_s: float | None = None  # not re-evaluated for this long (no evaluator); None: current


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    redis: RedisView
    queues: tuple[QueueView, ...]
    masters: tuple[MasterView, ...]
    alerts: tuple[Alert, ...]
    probe: probe.Probe | None = None  # the raw probe (Prometheus' counters); not in as_dict

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
            "masters": [_master_dict(m) for m in self.masters],
            "alerts": [asdict(a) for a in self.alerts],
        }


def _master_dict(m: MasterView) -> dict[str, Any]:
    return {
        "name": m.name,
        "hostname": m.hostname,
        "pid": m.pid,
        "profile": m.profile,
        "status": m.status,
        "started_at": m.started_at,
        "last_seen": m.last_seen,
        "processes_busy": m.processes_busy,
        "processes_total": m.processes_total,
        "supervisors": [{**asdict(s), "queues": list(s.queues)} for s in m.supervisor_views],
    }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


@dataclass(frozen=True)
class _FirstRead:
    info: dict[str, Any]
    save: str | None
    probe: probe.Probe
    masters: dict[str, dict[str, Any]]
    alerts: dict[bytes, bytes]
    clocks: dict[str, dict[str, Any]]
    evaluator_running: bool
    recent: dict[str, list[metrics_read.Totals]]


def collect(settings: Settings, connection: redis.Redis, now: float | None = None) -> Snapshot:
    """Everything `acmeq status` shows, in two pipelined round trips."""
    now = time.time() if now is None else now
    names = metrics_read.queue_names(settings)
    recent = metrics_read.recent_window(now)
    first = _read(connection, names, recent, now)
    queues = []
    for q in names:
        load, t = first.probe.queues[q], metrics_read.fold(first.recent[q])
        queues.append(
            QueueView(
                name=q,
                priority=settings.queues[q].priority,
                ready=load.ready,
                scheduled=load.scheduled,
                started=load.started,
                deferred=load.deferred,
                failed=load.failed,
                finished=load.finished,
                oldest_age_s=load.oldest_age_s,
                wait_threshold_s=settings.queues[q].wait_threshold,
                throughput_per_min=t.runs * 60.0 / recent.elapsed,
                processed_5m=t.processed,
                failed_5m=t.failed,
                runtime_avg_s=t.runtime_avg,
                runtime_p95_s=t.runtime_pct(0.95),
                processes_busy=load.workers_busy,
                processes_total=load.workers_total,
                paused=load.paused,
            )
        )
    active = _active_records(first.alerts)
    current = standing(
        settings, first.probe.queues, active, first.clocks, now, first.evaluator_running
    )
    return Snapshot(
        taken_at=now,
        redis=_redis_view(describe(settings), first.info, first.save),
        queues=tuple(queues),
        masters=tuple(_masters(connection, first.masters, now)),
        alerts=tuple(sorted((_alert(s) for s in current), key=_alert_order)),
        probe=first.probe,
    )


def _read(
    connection: redis.Redis, names: Sequence[str], recent: metrics_read.Window, now: float
) -> _FirstRead:
    pipe = connection.pipeline(transaction=False)
    pipe.info()
    pipe.config_get("save")
    probe.queue_reads(pipe, names)
    pipe.hgetall(keys.MASTERS)
    pipe.hgetall(keys.ALERTS_ACTIVE)
    pipe.hgetall(keys.ALERTS_PROGRESS)
    pipe.exists(keys.ALERTS_LOCK)
    metrics_read.queue_reads(pipe, recent, names)
    # CONFIG may be refused (managed Redis, ACLs): that one error must not fail the command.
    replies = pipe.execute(raise_on_error=False)
    for reply in replies[:1] + replies[2:]:
        if isinstance(reply, Exception):
            raise reply
    save = None if isinstance(replies[1], Exception) else str(replies[1].get("save", ""))
    return _FirstRead(
        info=replies[0],
        save=save,
        probe=probe.parse(replies[2], names, now=now),
        masters=parse_snapshots(replies[3]),
        alerts=replies[4],
        clocks=load_json_hash(replies[5]),
        evaluator_running=bool(replies[6]),
        recent=metrics_read.parse_reads(replies[7:], names),
    )


def _masters(
    connection: redis.Redis, snaps: Mapping[str, dict[str, Any]], now: float
) -> list[MasterView]:
    """Masters with their heartbeat, paused supervisors and processes' states (one round trip)."""
    if not snaps:
        return []
    sup_keys = [
        (name, str(sup.get("name", "")))
        for name, snap in snaps.items()
        for sup in snap.get("supervisors", [])
    ]
    views = [view_of(name, snap, alive=True) for name, snap in snaps.items()]
    procs = sorted({p.name for v in views for p in v.processes})
    pipe = connection.pipeline(transaction=False)
    for name in snaps:
        pipe.exists(keys.master(name))
    for master, sup in sup_keys:
        pipe.exists(keys.paused_supervisor(master, sup))
    for w in procs:
        # An idle acmeq worker has no `state` until its first job; `birth` without `death` is
        # what says it is alive (RQ sets `death` on a clean exit; the hash expires otherwise).
        pipe.hmget(keys.worker(w), ["state", "birth", "death"])
    replies = pipe.execute()
    alive = [bool(x) for x in replies[: len(snaps)]]
    flags = replies[len(snaps) : len(snaps) + len(sup_keys)]
    paused = {k for k, flag in zip(sup_keys, flags, strict=True) if flag}
    states = {}
    for w, (state, birth, death) in zip(procs, replies[len(snaps) + len(sup_keys) :], strict=True):
        if birth is not None and death is None:
            states[w] = text(state) if state is not None else "idle"
    out = []
    for (name, snap), is_alive in zip(snaps.items(), alive, strict=True):
        view = view_of(name, snap, is_alive)
        if view.forgotten(now):
            continue
        view.paused_supervisors = frozenset(s for m, s in paused if m == name)
        for p in view.processes:
            if is_alive and p.name in states:
                p.state = states[p.name]
        out.append(view)
    return out


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


def _active_records(raw: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """The active alert records; an unreadable one is kept as such, never silently dropped."""
    records = {}
    for key, value in raw.items():
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {"rule": "unknown", "message": f"unreadable alert record {text(value)[:80]!r}"}
        records[text(key)] = data
    return records


def _alert(current: Standing) -> Alert:
    data = current.record
    queue = data.get("queue")
    message = str(data.get("message", ""))
    if current.stale_s is not None:
        # No evaluator runs to re-check it: say how old it is (docs/monitoring.md).
        message += f" (stale, {duration(current.stale_s)} old)"
    return Alert(
        id=current.id,
        rule=str(data.get("rule", "unknown")),
        queue=str(queue) if queue else None,
        message=message,
        since=_float(data.get("since")),
        severity=str(data.get("severity", "warning")),
        stale_s=None if current.stale_s is None else round(current.stale_s, 3),
    )


def _alert_order(a: Alert) -> tuple[int, float, str]:
    return (_severity_rank(a.severity), a.since, a.id)


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
