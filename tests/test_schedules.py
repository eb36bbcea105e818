"""Schedules: cron ticks on a real Redis, one leader, each tick enqueued once, missed-tick policy.

Time is passed to :func:`acmeq.schedules.tick` explicitly (as the master passes ``time.time()``),
so a test can walk through hours of ticks in a moment; everything else is real: the Redis lock,
the per-tick claims, the enqueued RQ jobs.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from acmeq import schedules
from acmeq.config.schedules import MissedPolicy, ScheduleSpec
from acmeq.config.settings import Settings
from acmeq.errors import ConfigError
from acmeq.schedules.plan import Action, plan

from conftest import run_cli

MONDAY_8 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)

CONFIG = """
[schedules.cleanup]
enabled = false
[schedules.weekly_digest]
enabled = false
[schedules.reminders]
enabled = false
[schedules.metrics_snapshot]
enabled = false
[schedules.backup]
enabled = false

[schedules.every_minute]
cron = "* * * * *"
job = "ping"
kwargs = { echo = "tick" }
overlap = true

[schedules.guarded]
cron = "* * * * *"
job = "ping"

[schedules.hourly_catch_up]
cron = "0 * * * *"
job = "ping"
missed = "run_once"

[schedules.hourly_skip]
cron = "0 * * * *"
job = "ping"
missed = "skip"

[schedules.amsterdam]
cron = "0 8 * * 1"
timezone = "Europe/Amsterdam"
job = "ping"

[schedules.ghost]
cron = "* * * * *"
job = "not_a_job_yet"
"""


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Settings:
    path = tmp_path / "acmeq.toml"
    path.write_text(CONFIG)
    return Settings.load(path)


def only(settings: Settings, *names: str) -> Settings:
    from dataclasses import replace

    return replace(settings, schedules={n: settings.schedules[n] for n in names})


def queued(client: redis.Redis) -> list[str]:
    return [i.decode() for i in client.lrange("rq:queue:maintenance", 0, -1)]


# -- pure planning ---------------------------------------------------------------------------------


def spec(cron: str = "0 8 * * 1", missed: MissedPolicy = MissedPolicy.SKIP) -> ScheduleSpec:
    return ScheduleSpec(name="s", cron=cron, job="ping", missed=missed)


def test_a_tick_never_fires_before_its_time_and_is_attributed_to_its_minute() -> None:
    s = spec()
    last = MONDAY_8 - timedelta(days=7)
    assert plan(s, last, MONDAY_8 - timedelta(milliseconds=1), 60).action is Action.NONE
    on_time = plan(s, last, MONDAY_8 + timedelta(milliseconds=1), 60)
    assert on_time.action is Action.RUN and on_time.tick == MONDAY_8
    assert plan(s, MONDAY_8, MONDAY_8 + timedelta(seconds=30), 60).action is Action.NONE


def test_a_new_schedule_starts_from_its_latest_tick_without_running_it() -> None:
    first = plan(spec(), None, MONDAY_8 + timedelta(hours=3), 60)
    assert first.action is Action.INIT and first.tick == MONDAY_8


def test_missed_ticks_follow_the_policy() -> None:
    hourly_skip = spec("0 * * * *", MissedPolicy.SKIP)
    hourly_once = spec("0 * * * *", MissedPolicy.RUN_ONCE)
    # The scheduler was down from 08:00 until 11:20: ticks 09:00, 10:00, 11:00 were missed
    now = MONDAY_8 + timedelta(hours=3, minutes=20)
    skipped = plan(hourly_skip, MONDAY_8, now, 60)
    assert (skipped.action, skipped.missed) == (Action.MISSED, 3)
    caught_up = plan(hourly_once, MONDAY_8, now, 60)
    assert caught_up.action is Action.RUN and caught_up.tick == MONDAY_8 + timedelta(hours=3)
    assert caught_up.missed == 2  # 09:00 and 10:00 are folded into the one run


def test_a_zone_with_daylight_saving_fires_at_local_time() -> None:
    s = ScheduleSpec(name="s", cron="0 8 * * 1", job="ping", timezone="Europe/Amsterdam")
    # 08:00 in Amsterdam is 07:00 UTC in December
    local_8 = MONDAY_8 - timedelta(hours=1)
    assert plan(s, local_8, MONDAY_8 + timedelta(minutes=1), 60).action is Action.NONE
    local = plan(s, MONDAY_8 - timedelta(days=7), MONDAY_8 - timedelta(minutes=59), 60)
    assert local.action is Action.RUN and local.tick is not None
    assert local.tick.astimezone(UTC) == MONDAY_8 - timedelta(hours=1)


# -- on Redis --------------------------------------------------------------------------------------


def test_two_schedulers_at_once_enqueue_each_tick_once(
    cfg: Settings, redis_client: redis.Redis
) -> None:
    # Given two masters' schedulers ticking at the same moments for ten minutes
    settings = only(cfg, "every_minute")
    start = MONDAY_8 - timedelta(seconds=1)
    steps = [start + timedelta(seconds=0.5 * i) for i in range(1200)]
    barrier = threading.Barrier(2)

    def scheduler(holder: str) -> None:
        for n, now in enumerate(steps):
            barrier.wait(timeout=10)
            if holder == "a" and n % 90 == 0:
                # the lock changes hands now and then (a master stopped, another takes over)
                redis_client.delete(schedules.LEADER_KEY)
            schedules.tick(redis_client, settings, now, holder=holder)

    threads = [threading.Thread(target=scheduler, args=(h,)) for h in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    # Then each of the ten minutes was enqueued once, under its own deterministic job id
    ids = queued(redis_client)
    assert len(ids) == len(set(ids)) == 10
    assert ids[0] == "schedule-every_minute-20261207T080000Z"
    assert ids[-1] == "schedule-every_minute-20261207T080900Z"


def test_a_tick_is_claimed_once_even_when_two_schedulers_both_think_they_lead(
    cfg: Settings, redis_client: redis.Redis
) -> None:
    # Given two schedulers that both passed the lock check (a paused leader whose lock expired)
    settings = only(cfg, "every_minute")
    spec = settings.schedules["every_minute"]
    schedules.tick(redis_client, settings, MONDAY_8 - timedelta(seconds=5), holder="a")
    now = MONDAY_8 + timedelta(seconds=1)
    # When one handles the 08:00 tick, and the other handles it from the state it read before
    first = schedules._step(redis_client, settings, spec, now)
    before = str((MONDAY_8 - timedelta(minutes=1)).timestamp())
    redis_client.hset(schedules.state_key("every_minute"), "last_tick", before)
    redis_client.hdel(schedules.state_key("every_minute"), "last_job_id")
    second = schedules._step(redis_client, settings, spec, now)
    # Then it was enqueued once; the other found the tick claimed
    assert first is not None and first.action == "enqueued"
    assert second is not None and second.action == "skipped"
    assert second.note == "tick already enqueued elsewhere"
    assert len(queued(redis_client)) == 1


def test_a_missed_tick_runs_once_or_is_skipped_by_policy(
    cfg: Settings, redis_client: redis.Redis
) -> None:
    # Given two hourly schedules last handled at 08:00
    settings = only(cfg, "hourly_catch_up", "hourly_skip")
    schedules.tick(redis_client, settings, MONDAY_8 + timedelta(seconds=1), holder="a")
    # When no scheduler ran until 11:20
    outcomes = {
        o.schedule: o
        for o in schedules.tick(
            redis_client, settings, MONDAY_8 + timedelta(hours=3, minutes=20), holder="a"
        )
    }
    # Then the run_once schedule runs once for 11:00, late; the skip one records the miss
    assert outcomes["hourly_catch_up"].action == "enqueued"
    assert outcomes["hourly_catch_up"].job_id == "schedule-hourly_catch_up-20261207T110000Z"
    assert "late by 1200 s" in outcomes["hourly_catch_up"].note
    assert outcomes["hourly_skip"].action == "missed"
    assert queued(redis_client) == ["schedule-hourly_catch_up-20261207T110000Z"]
    # and at 12:00 the skip schedule runs again on time
    later = schedules.tick(
        redis_client, settings, MONDAY_8 + timedelta(hours=4, seconds=2), holder="a"
    )
    assert {o.schedule: o.action for o in later}["hourly_skip"] == "enqueued"


def test_the_overlap_guard_skips_while_the_previous_run_is_queued(
    cfg: Settings, redis_client: redis.Redis
) -> None:
    settings = only(cfg, "guarded")
    schedules.tick(redis_client, settings, MONDAY_8 - timedelta(seconds=1))
    first = schedules.tick(redis_client, settings, MONDAY_8 + timedelta(seconds=1))
    second = schedules.tick(redis_client, settings, MONDAY_8 + timedelta(minutes=1, seconds=1))
    assert first[0].action == "enqueued"
    assert second[0].action == "skipped" and "overlap guard" in second[0].note
    # When the previous run is gone (finished and expired), the next tick runs
    redis_client.delete(f"rq:job:{first[0].job_id}")
    third = schedules.tick(redis_client, settings, MONDAY_8 + timedelta(minutes=2, seconds=1))
    assert third[0].action == "enqueued"


def test_a_schedule_whose_job_is_not_registered_is_skipped_with_a_warning(
    cfg: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    settings = only(cfg, "ghost")
    schedules.tick(redis_client, settings, MONDAY_8 - timedelta(seconds=1))
    [outcome] = schedules.tick(redis_client, settings, MONDAY_8 + timedelta(seconds=1))
    assert outcome.action == "skipped" and "not registered" in outcome.note
    assert "'not_a_job_yet' is not registered" in caplog.text
    assert queued(redis_client) == []


def test_bad_schedules_are_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[schedules.x]\ncron = "61 * * * *"\njob = "ping"\ntimezone = "Mars/Olympus"\n'
        'missed = "sometimes"\n'
    )
    with pytest.raises(ConfigError) as err:
        Settings.load(path)
    text = str(err.value)
    assert "schedules.x.cron: must be a cron expression" in text
    assert "schedules.x.timezone: must be an IANA time zone" in text
    assert "schedules.x.missed: must be one of skip, run_once" in text


def test_schedule_commands(cfg: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    sync = run_cli("schedule", "sync")
    assert sync.returncode == 0, sync.stderr
    assert "added every_minute" in sync.stdout
    listing = run_cli("schedule", "list")
    assert listing.returncode == 0, listing.stderr
    assert "no master is running" in listing.stdout
    assert "not_a_job_yet (not registered)" in listing.stdout
    assert "Europe/Amsterdam" in listing.stdout
    run = run_cli("schedule", "run", "guarded")
    assert run.returncode == 0 and "enqueued guarded" in run.stdout
    again = run_cli("schedule", "run", "guarded")
    assert again.returncode == 1 and "overlap guard" in again.stdout
    unknown = run_cli("schedule", "run", "nope")
    assert unknown.returncode == 2
    assert "unknown schedule 'nope'; configured schedules: " in unknown.stderr
    assert Counter(queued(redis_client)).total() == 1
