"""Which tick of a schedule is due, and what to do about it: pure functions of time and state.

A schedule's ticks are the times its cron expression names in its time zone. The scheduler
remembers the last tick it handled; at ``now``:

- no tick after the last one, up to ``now``: nothing to do (a tick is never fired before its
  time: the tick compared is the cron time itself, not "now" rounded);
- the latest due tick is at most ``grace`` seconds old: run it (ticks between the last handled
  one and it were missed; either policy runs one run, attributed to the latest tick);
- it is older (no scheduler ran at that time): ``missed = "run_once"`` runs it once now, late,
  attributed to that tick; ``missed = "skip"`` records it as missed and waits for the next one;
- a schedule seen for the first time (or whose definition changed) starts from the latest tick
  without running it: enabling a daily job at 14:00 does not run "this morning's" run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]

from acmeq.config.schedules import MissedPolicy, ScheduleSpec

MAX_COUNTED = 10_000  # missed ticks are counted up to this many (a per-minute cron down a week)


class Action(StrEnum):
    NONE = "none"  # no tick due
    INIT = "init"  # first sight: remember the latest tick, run nothing
    RUN = "run"  # enqueue the job for ``tick``
    MISSED = "missed"  # the tick is late and the policy is skip


@dataclass(frozen=True)
class Plan:
    action: Action
    tick: datetime | None = None  # aware, in the schedule's zone
    missed: int = 0  # ticks skipped before ``tick`` (not run)
    late_s: float = 0.0  # how long after its time the tick is handled


def latest_tick(spec: ScheduleSpec, now: datetime) -> datetime:
    """The latest cron time at or before ``now`` (in the schedule's zone)."""
    local = now.astimezone(ZoneInfo(spec.timezone))
    prev: datetime = croniter(spec.cron, local).get_prev(datetime)
    following: datetime = croniter(spec.cron, prev).get_next(datetime)
    return following if following <= local else prev


def next_tick(spec: ScheduleSpec, now: datetime) -> datetime:
    """The first cron time strictly after ``now`` (in the schedule's zone)."""
    local = now.astimezone(ZoneInfo(spec.timezone))
    nxt: datetime = croniter(spec.cron, local).get_next(datetime)
    return nxt


def count_between(spec: ScheduleSpec, after: datetime, before: datetime) -> int:
    """Ticks strictly between ``after`` and ``before`` (capped at :data:`MAX_COUNTED`)."""
    it = croniter(spec.cron, after.astimezone(ZoneInfo(spec.timezone)))
    n = 0
    while n < MAX_COUNTED:
        t: datetime = it.get_next(datetime)
        if t >= before:
            break
        n += 1
    return n


def plan(spec: ScheduleSpec, last_tick: datetime | None, now: datetime, grace: float) -> Plan:
    """What the scheduler does for ``spec`` at ``now``, given the last tick it handled."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    latest = latest_tick(spec, now)
    if last_tick is None:
        return Plan(Action.INIT, tick=latest)
    if latest <= last_tick:
        return Plan(Action.NONE)
    missed = count_between(spec, last_tick, latest)
    late = (now - latest).total_seconds()
    if late <= grace or spec.missed is MissedPolicy.RUN_ONCE:
        return Plan(Action.RUN, tick=latest, missed=missed, late_s=late)
    return Plan(Action.MISSED, tick=latest, missed=missed + 1, late_s=late)


def tick_id(tick: datetime) -> str:
    """A tick's name in keys and job ids: its UTC time (``20261207T080000Z``)."""
    return tick.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def describe_delay(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))
