"""Periodic jobs: ``[schedules.NAME]`` (cron + time zone) run by the worker master.

Every master calls :func:`tick` from its loop (about once a second). Exactly one of them acts:
the holder of a Redis lock with a TTL (``acmeq:scheduler:leader``, renewed on every tick, taken
over by another master within :data:`LEADER_TTL_MS` when the holder dies). For each schedule the
leader asks :func:`acmeq.schedules.plan.plan` what is due and, to run a tick:

1. skips it when the job is not registered (a warning, once per process);
2. skips it when ``overlap = false`` and the previous run of the schedule is still queued,
   scheduled or started (the overlap guard);
3. claims the tick with ``SET NX`` on ``acmeq:schedule:<name>:tick:<tick>`` (kept two days), so
   a tick is enqueued once even if two masters both believed they led (a paused leader whose lock
   expired), and enqueues the job with the deterministic id ``schedule-<name>-<tick>``.

The outcome of every tick (run, skipped, missed) is kept in ``acmeq:schedule:<name>`` and shown by
``acmeq schedule list``. Why this and not rq-scheduler: docs/schedules.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from acmeq import keys
from acmeq.config.schedules import ScheduleSpec
from acmeq.config.settings import Settings
from acmeq.errors import UnknownScheduleError
from acmeq.schedules.plan import Action, Plan, latest_tick, next_tick, plan, tick_id

log = logging.getLogger("acmeq.schedules")

LEADER_KEY = keys.SCHEDULER_LEADER
LEADER_TTL_MS = 15_000
TICK_TTL_S = 2 * 86400
HISTORY_LEN = 20
ACTIVE = {"queued", "started", "scheduled", "deferred"}

# Take the lock when free, renew it when ours; 1 when we lead.
_LEAD = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_warned: set[str] = set()


def state_key(name: str) -> str:
    return keys.schedule(name)


def tick_key(name: str, tick: datetime) -> str:
    return keys.schedule_tick(name, tick_id(tick))


def history_key(name: str) -> str:
    return keys.schedule_history(name)


def _state(connection: redis.Redis, name: str) -> dict[bytes, bytes]:
    return cast(dict[bytes, bytes], connection.hgetall(state_key(name)))


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Outcome:
    schedule: str
    action: str  # enqueued | skipped | missed | init
    tick: str | None = None
    job_id: str | None = None
    note: str = ""


def lead(connection: redis.Redis, holder: str) -> bool:
    return bool(connection.eval(_LEAD, 1, LEADER_KEY, holder, LEADER_TTL_MS))


def resign(connection: redis.Redis, holder: str) -> None:
    """Give the lock up at a clean stop so another master takes over at once."""
    script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"
    connection.eval(script, 1, LEADER_KEY, holder)


def _fingerprint(spec: ScheduleSpec) -> str:
    return json.dumps([spec.cron, spec.timezone, spec.job], separators=(",", ":"))


def tick(
    connection: redis.Redis,
    settings: Settings,
    now: float | datetime | None = None,
    holder: str | None = None,
) -> list[Outcome]:
    """One scheduler step (the master calls it every second); only the lock holder acts.

    Never raises for a single bad schedule: its problem is logged and recorded as its outcome.
    """
    if not settings.scheduler.enabled or not settings.schedules:
        return []
    at = _aware(now)
    if not lead(connection, holder or default_holder()):
        return []
    outcomes = []
    for spec in settings.schedules.values():
        if not spec.enabled:
            continue
        try:
            outcome = _step(connection, settings, spec, at)
        except redis.RedisError:
            raise
        except Exception as exc:  # one bad schedule must not stop the others (or the master)
            log.exception("schedule %s failed", spec.name)
            outcome = Outcome(spec.name, "skipped", note=f"error: {type(exc).__name__}: {exc}")
            _remember(connection, spec, outcome, None)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _aware(now: float | datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return now if now.tzinfo else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(now, UTC)


def _last_tick(state: dict[bytes, bytes], spec: ScheduleSpec) -> datetime | None:
    raw = state.get(b"last_tick")
    if raw is None or state.get(b"fingerprint", b"").decode() != _fingerprint(spec):
        return None
    return datetime.fromtimestamp(float(raw), UTC)


def _step(
    connection: redis.Redis, settings: Settings, spec: ScheduleSpec, at: datetime
) -> Outcome | None:
    state = _state(connection, spec.name)
    decision = plan(spec, _last_tick(state, spec), at, settings.scheduler.grace)
    if decision.action is Action.NONE:
        return None
    assert decision.tick is not None
    if decision.action is Action.INIT:
        outcome = Outcome(spec.name, "init", tick=decision.tick.isoformat(), note="first seen")
    elif decision.action is Action.MISSED:
        note = f"missed {decision.missed} tick(s); policy skip"
        outcome = Outcome(spec.name, "missed", tick=decision.tick.isoformat(), note=note)
        log.warning("schedule %s: %s (latest %s)", spec.name, note, decision.tick.isoformat())
    else:
        outcome = _run(connection, settings, spec, decision, state)
    _remember(connection, spec, outcome, decision.tick)
    return outcome


def _run(
    connection: redis.Redis,
    settings: Settings,
    spec: ScheduleSpec,
    decision: Plan,
    state: dict[bytes, bytes],
) -> Outcome:
    assert decision.tick is not None
    when = decision.tick.isoformat()
    note = f"late by {decision.late_s:.0f} s" if decision.late_s > settings.scheduler.grace else ""
    if decision.missed:
        note = ", ".join(filter(None, [note, f"{decision.missed} earlier tick(s) not run"]))
    blocked = _blocked(connection, settings, spec, state)
    if blocked:
        return Outcome(spec.name, "skipped", tick=when, note=blocked)
    if not connection.set(tick_key(spec.name, decision.tick), "1", nx=True, ex=TICK_TTL_S):
        return Outcome(spec.name, "skipped", tick=when, note="tick already enqueued elsewhere")
    job_id = f"schedule-{spec.name}-{tick_id(decision.tick)}"
    _enqueue(connection, settings, spec, job_id, when)
    return Outcome(spec.name, "enqueued", tick=when, job_id=job_id, note=note)


def _blocked(
    connection: redis.Redis, settings: Settings, spec: ScheduleSpec, state: dict[bytes, bytes]
) -> str:
    """Why the schedule may not run now ('' when it may): unregistered job, overlap guard."""
    from acmeq.queues import registry_for

    if spec.job not in registry_for(settings):
        if spec.job not in _warned:
            _warned.add(spec.job)
            log.warning("schedule %s: job %r is not registered; skipped", spec.name, spec.job)
        return f"job {spec.job!r} is not registered"
    last = state.get(b"last_job_id")
    if not spec.overlap and last:
        status = job_status(connection, last.decode())
        if status in ACTIVE:
            return f"previous run {last.decode()} still {status} (overlap guard)"
    return ""


def job_status(connection: redis.Redis, job_id: str) -> str:
    raw = connection.hget(keys.job(job_id), "status")
    return _text(raw) if raw else "expired"


def _enqueue(
    connection: redis.Redis, settings: Settings, spec: ScheduleSpec, job_id: str, tick: str
) -> None:
    from acmeq.queues import Enqueuer, JobCall

    Enqueuer(settings, connection).enqueue_call(
        JobCall(
            spec.job,
            tuple(spec.args),
            dict(spec.kwargs),
            job_id=job_id,
            meta={"schedule": spec.name, "tick": tick},
        )
    )


def _remember(
    connection: redis.Redis, spec: ScheduleSpec, outcome: Outcome, tick_at: datetime | None
) -> None:
    mapping: dict[str, str] = {
        "fingerprint": _fingerprint(spec),
        "last_outcome": outcome.action + (f": {outcome.note}" if outcome.note else ""),
        "last_checked": str(time.time()),
    }
    if tick_at is not None:
        mapping["last_tick"] = str(tick_at.timestamp())
    if outcome.job_id:
        mapping["last_job_id"] = outcome.job_id
        mapping["last_run_at"] = str(time.time())
    pipe = connection.pipeline()
    pipe.hset(state_key(spec.name), mapping=cast(Any, mapping))
    if outcome.action != "init":
        entry = {"at": time.time(), **outcome.__dict__}
        pipe.lpush(history_key(spec.name), json.dumps(entry))
        pipe.ltrim(history_key(spec.name), 0, HISTORY_LEN - 1)
    pipe.execute()


# -- the operator's view and actions ---------------------------------------------------------------


def spec_of(settings: Settings, name: str) -> ScheduleSpec:
    try:
        return settings.schedules[name]
    except KeyError:
        raise UnknownScheduleError(name, settings.schedules) from None


def describe(
    connection: redis.Redis, settings: Settings, now: datetime | None = None
) -> list[dict[str, Any]]:
    """One row per schedule: definition, next run, last run and its outcome (`schedule list`)."""
    from acmeq.queues import registry_for

    at = _aware(now)
    registry = registry_for(settings)
    pipe = connection.pipeline(transaction=False)
    specs = list(settings.schedules.values())
    for spec in specs:
        pipe.hgetall(state_key(spec.name))
    states = pipe.execute()
    rows = []
    for spec, state in zip(specs, states, strict=True):
        last_job = state.get(b"last_job_id", b"").decode() or None
        last_run = state.get(b"last_run_at")
        rows.append(
            {
                "name": spec.name,
                "cron": spec.cron,
                "timezone": spec.timezone,
                "job": spec.job,
                "registered": spec.job in registry,
                "enabled": spec.enabled,
                "missed": str(spec.missed),
                "overlap": spec.overlap,
                "next_run": next_tick(spec, at).isoformat() if spec.enabled else None,
                "last_run": (
                    datetime.fromtimestamp(float(last_run), UTC).isoformat() if last_run else None
                ),
                "last_job_id": last_job,
                "last_job_status": job_status(connection, last_job) if last_job else None,
                "last_outcome": state.get(b"last_outcome", b"").decode() or None,
            }
        )
    return rows


def leader(connection: redis.Redis) -> str | None:
    raw = connection.get(LEADER_KEY)
    return _text(raw) if raw else None


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def run_now(connection: redis.Redis, settings: Settings, name: str, force: bool = False) -> Outcome:
    """`acmeq schedule run NAME`: enqueue the schedule's job now (the overlap guard applies)."""
    spec = spec_of(settings, name)
    state = _state(connection, name)
    blocked = _blocked(connection, settings, spec, state)
    if blocked and not (force and "overlap" in blocked):
        outcome = Outcome(name, "skipped", note=blocked)
    else:
        job_id = f"schedule-{name}-manual-{tick_id(datetime.now(UTC))}"
        _enqueue(connection, settings, spec, job_id, "manual")
        outcome = Outcome(name, "enqueued", job_id=job_id, note="manual run")
    _remember(connection, spec, outcome, None)
    return outcome


def sync(connection: redis.Redis, settings: Settings, now: datetime | None = None) -> list[str]:
    """Make Redis agree with the configuration: new or changed schedules start from their
    latest tick (no backlog is run), removed ones lose their state. Returns what changed."""
    at = _aware(now)
    changes = []
    for spec in settings.schedules.values():
        state = _state(connection, spec.name)
        if _last_tick(state, spec) is None:
            latest = latest_tick(spec, at)
            connection.hset(
                state_key(spec.name),
                mapping={"fingerprint": _fingerprint(spec), "last_tick": str(latest.timestamp())},
            )
            changes.append(f"{'changed' if state else 'added'} {spec.name}")
    for raw in connection.scan_iter(match=keys.schedule("*"), count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        name = key.split(":")[2]
        if name not in settings.schedules and key in (state_key(name), history_key(name)):
            connection.delete(key)
            if key == state_key(name):
                changes.append(f"removed {name}")
    return changes


__all__ = ["Outcome", "describe", "lead", "leader", "resign", "run_now", "sync", "tick"]
