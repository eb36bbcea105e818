"""Settings of the periodic schedules (``[scheduler]`` and ``[schedules.NAME]``).

Defaults: cleanup daily, weekly digest Monday 08:00, reminders daily, metrics snapshot every five
minutes, database backup nightly. A schedule names a job by its registered name; a job that is
not registered (yet) is skipped with a warning by the scheduler, not refused here, because the
jobs of other domains register themselves when their modules exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acmeq.config.reader import Reader as Loader

SCHEDULE_KEYS = ("cron", "timezone", "job", "args", "kwargs", "missed", "overlap", "enabled")
SCHEDULER_ENV_KEYS: dict[str, str] = {"ACMEQ_SCHEDULER_ENABLED": "scheduler.enabled"}


class MissedPolicy(StrEnum):
    SKIP = "skip"  # ticks missed while no scheduler ran are dropped
    RUN_ONCE = "run_once"  # on recovery, the missed ticks run once (as the latest one)


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    cron: str
    job: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    missed: MissedPolicy = MissedPolicy.SKIP
    overlap: bool = False  # False: skip a run while the previous run is still queued/started
    enabled: bool = True


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = True  # the master runs the scheduler (one leader cluster-wide)
    grace: int = 60  # seconds after its time a tick still counts as on time, not missed


DEFAULT_SCHEDULES: dict[str, dict[str, Any]] = {
    "cleanup": {"cron": "15 3 * * *", "job": "cleanup_expired_data", "missed": "run_once"},
    "weekly_digest": {"cron": "0 8 * * 1", "job": "send_weekly_digest", "missed": "skip"},
    "reminders": {
        "cron": "0 9 * * *",
        "job": "send_reminders",
        "kwargs": {"days": 3},
        "missed": "run_once",
    },
    "metrics_snapshot": {"cron": "*/5 * * * *", "job": "metrics_snapshot", "missed": "skip"},
    "backup": {"cron": "30 2 * * *", "job": "backup_database", "missed": "run_once"},
}
_SCHEDULE_FALLBACK: dict[str, Any] = {
    "timezone": "UTC",
    "args": [],
    "missed": "skip",
    "overlap": False,
    "enabled": True,
}


def scheduler_defaults() -> dict[str, Any]:
    return {"enabled": True, "grace": 60}


def schedule_defaults() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, spec in DEFAULT_SCHEDULES.items():
        tree[name] = {**_SCHEDULE_FALLBACK, **spec}
    return tree


def known_schedule_key(key: str) -> bool:
    """``schedules.NAME.KEY`` or ``schedules.NAME.kwargs.ARG`` (a kwargs table is flattened)."""
    parts = key.split(".")
    if parts[0] != "schedules" or len(parts) < 3:
        return False
    return (len(parts) == 3 and parts[2] in SCHEDULE_KEYS) or (
        len(parts) >= 4 and parts[2] == "kwargs"
    )


def build_scheduler(loader: Loader) -> SchedulerSettings:
    return SchedulerSettings(
        enabled=loader._bool("scheduler.enabled"), grace=loader._int("scheduler.grace", 1)
    )


def build_schedules(loader: Loader) -> dict[str, ScheduleSpec]:
    names = sorted({k.split(".")[1] for k in loader.values if k.startswith("schedules.")})
    return {name: _build_one(loader, name) for name in names}


def _build_one(loader: Loader, name: str) -> ScheduleSpec:
    from croniter import croniter  # type: ignore[import-untyped]

    k = f"schedules.{name}."
    for key, value in _SCHEDULE_FALLBACK.items():
        loader._default(k + key, value)
    cron = loader._str(k + "cron") if k + "cron" in loader.values else ""
    if not cron or not croniter.is_valid(cron):
        loader._bad(k + "cron", "must be a cron expression like '0 8 * * 1'")
    job = loader._str(k + "job") if k + "job" in loader.values else ""
    if not job:
        loader._bad(k + "job", "must name a registered job")
    tz = loader._str(k + "timezone") or "UTC"
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(tz)
    except Exception:  # ZoneInfoNotFoundError, ValueError on odd strings
        loader._bad(k + "timezone", "must be an IANA time zone like 'Europe/Amsterdam'")
    args = loader._list(k + "args", lambda v: True, "JSON values")
    prefix = k + "kwargs."
    kwargs = {key[len(prefix) :]: v for key, v in loader.values.items() if key.startswith(prefix)}
    return ScheduleSpec(
        name=name,
        cron=cron,
        job=job,
        timezone=tz,
        args=tuple(args),
        kwargs=kwargs,
        missed=loader._choice(k + "missed", MissedPolicy),
        overlap=loader._bool(k + "overlap"),
        enabled=loader._bool(k + "enabled"),
    )
