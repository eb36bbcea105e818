"""The master's pool lifecycle, decision by decision, without processes, Redis or a clock.

Each test builds a :class:`Lifecycle` for a few pools, feeds it what the master's loop would see
(workers spawned, exits with their codes, signals, commands, the time) and reads its decisions:
which slots get a worker, which workers retire, how an exit is read, when the master may exit.
"""

from __future__ import annotations

import os
import signal

import pytest

from acmeq.constants import MasterExit, WorkerExit
from acmeq.master import lifecycle as lc
from acmeq.master.lifecycle import ExitKind, Intent, Lifecycle, MasterCommand, StopMode

KEY = ("sup", "payments")
OTHER = ("sup", "notifications")


def life(minimum: int = 1, desired: int = 1, **more: tuple[int, int]) -> Lifecycle:
    """A lifecycle with pool KEY (and more pools as name=(minimum, desired))."""
    pools = [(KEY, minimum, desired)] + [(("sup", q), m, d) for q, (m, d) in more.items()]
    return lc.pools_at_start(pools)


def fill(cycle: Lifecycle, now: float) -> list[str]:
    """Spawn every slot the lifecycle asks for at ``now``; return the new workers' names."""
    names = []
    for key, slot in cycle.spawns(now):
        name = f"{key[1]}-{slot}-{now:g}-{len(names)}"
        cycle.add(key, slot, name, now)
        names.append(name)
    return names


def only_worker(cycle: Lifecycle, key: tuple[str, str] = KEY) -> str:
    (worker,) = cycle.pools[key].workers
    return worker.name


# -- spawning --------------------------------------------------------------------------------------


def test_a_new_master_fills_every_slot_up_to_the_desired_size_once() -> None:
    # given two pools, desired 2 and 1
    cycle = life(desired=2, notifications=(0, 1))
    # when the loop asks what to spawn, spawns it, and asks again
    first = cycle.spawns(0.0)
    fill(cycle, 0.0)
    # then each free slot is named once, and nothing more is asked
    assert first == [(KEY, 0), (KEY, 1), (OTHER, 0)]
    assert cycle.spawns(0.1) == []


def test_a_halted_pool_or_a_stopping_master_spawns_nothing() -> None:
    cycle = life(desired=1, notifications=(1, 1))
    cycle.pools[KEY].halted = "cannot import jobs"
    assert cycle.spawns(0.0) == [(OTHER, 0)]
    cycle.stop(StopMode.GRACEFUL)
    assert cycle.spawns(0.0) == []


# -- exits -----------------------------------------------------------------------------------------


def test_a_clean_exit_recycle_or_memory_limit_is_replaced_at_once() -> None:
    for code in (WorkerExit.OK, WorkerExit.RECYCLE, WorkerExit.MEMORY_LIMIT):
        # given a running worker
        cycle = life()
        fill(cycle, 0.0)
        # when it exits with a code that is no crash
        verdict = cycle.exited(KEY, only_worker(cycle), int(code), 1.0)
        # then its jobs are looked for, nothing backs off and a replacement is due now
        assert verdict.kind is ExitKind.CLEAN and verdict.recover and not verdict.alarming
        assert verdict.backoff == 0.0
        assert cycle.spawns(1.0) == [(KEY, 0)]


def test_a_crash_is_replaced_at_once_but_repeated_early_crashes_back_the_slot_off() -> None:
    # given a pool of 3 above a minimum of 1, its workers all up
    cycle = life(minimum=1, desired=3)
    fill(cycle, 0.0)
    # when the worker in slot 2 keeps dying within seconds of its start
    waits = []
    now = 100.0
    for _ in range(6):
        victim = next(w for w in cycle.pools[KEY].workers if w.slot == 2)
        verdict = cycle.exited(KEY, victim.name, -signal.SIGKILL, now)
        waits.append(verdict.backoff)
        assert verdict.kind is ExitKind.CRASHED and verdict.alarming and verdict.recover
        now += verdict.backoff
        fill(cycle, now)
        now += 1.0
    # then the first crash of a long-lived worker is replaced at once, then the slot waits
    # longer each time (0.5 s doubling up to 30 s)
    assert waits == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert "killed by signal 9 (SIGKILL)" in verdict.message


def test_the_backoff_is_per_slot_so_other_slots_are_replaced_at_once() -> None:
    # given a pool of 3 whose slot 2 is backing off after early crashes
    cycle = life(minimum=1, desired=3)
    fill(cycle, 0.0)
    for now in (20.0, 21.0, 22.0, 23.0):
        victim = next(w for w in cycle.pools[KEY].workers if w.slot == 2)
        cycle.exited(KEY, victim.name, 1, now)
        cycle.add(KEY, 2, f"again-{now}", now)
    victim = next(w for w in cycle.pools[KEY].workers if w.slot == 2)
    verdict = cycle.exited(KEY, victim.name, 1, 24.0)
    assert verdict.backoff > 1.0
    # when the long-lived worker in slot 1 dies once
    one = next(w for w in cycle.pools[KEY].workers if w.slot == 1)
    assert cycle.exited(KEY, one.name, 1, 24.0).backoff == 0.0
    # then slot 1 is refilled now while slot 2 waits, and status shows one slot backing off
    assert cycle.spawns(24.0) == [(KEY, 1)]
    assert cycle.backing_off(24.0) == {KEY: (1, pytest.approx(verdict.backoff))}


def test_a_kill_storm_never_keeps_a_pool_below_its_minimum_for_more_than_two_seconds() -> None:
    # given a pool of 2 with a minimum of 2
    cycle = life(minimum=2, desired=2)
    fill(cycle, 0.0)
    # when every worker is killed right after it starts, for a minute
    now, longest = 30.0, 0.0
    while now < 90.0:
        for worker in list(cycle.pools[KEY].workers):
            verdict = cycle.exited(KEY, worker.name, -signal.SIGKILL, now)
            longest = max(longest, verdict.backoff)
        now += 0.25
        fill(cycle, now)
    # then no slot below the minimum ever waited more than the floor cap
    assert longest == lc.FLOOR_BACKOFF_MAX_S


def test_a_worker_that_lived_long_enough_resets_its_slot() -> None:
    cycle = life()
    fill(cycle, 0.0)
    for now in (1.0, 2.0, 3.0):
        cycle.exited(KEY, only_worker(cycle), 1, now)
        cycle.add(KEY, 0, f"w{now}", now)
    # when the worker of the slot lived beyond STABLE_S before it crashed
    verdict = cycle.exited(KEY, only_worker(cycle), 1, 3.0 + lc.STABLE_S + 1)
    # then it counts as a first crash again
    assert verdict.backoff == 0.0


def test_redis_unavailable_at_boot_is_transient_never_a_halt() -> None:
    # given a worker that exits because it could not reach Redis, again and again
    cycle = life()
    fill(cycle, 0.0)
    waits = []
    now = 0.0
    for _ in range(8):
        verdict = cycle.exited(KEY, only_worker(cycle), int(WorkerExit.REDIS_UNAVAILABLE), now)
        waits.append(verdict.backoff)
        assert verdict.kind is ExitKind.REDIS_UNAVAILABLE and not verdict.alarming
        now += verdict.backoff
        assert cycle.spawns(now) == [(KEY, 0)]
        fill(cycle, now)
    # then the pool is never halted and the retries stay a few seconds apart
    assert cycle.pools[KEY].halted is None
    assert waits[0] == 0.5 and max(waits) == lc.REDIS_BACKOFF_MAX_S


def test_a_boot_error_halts_the_pool_unless_redis_is_away() -> None:
    # given a worker that exits with BOOT_ERROR while the master cannot reach Redis either
    cycle = life(notifications=(1, 1))
    fill(cycle, 0.0)
    verdict = cycle.exited(KEY, only_worker(cycle), int(WorkerExit.BOOT_ERROR), 1.0, redis_ok=False)
    # then it is read as Redis being away: retried, not halted
    assert verdict.kind is ExitKind.REDIS_UNAVAILABLE and cycle.pools[KEY].halted is None
    fill(cycle, 2.0)
    # when the next one fails to boot while Redis is fine
    verdict = cycle.exited(
        KEY, only_worker(cycle), int(WorkerExit.BOOT_ERROR), 3.0, boot_reason="ImportError: x"
    )
    # then the pool halts with the worker's reason, spawns nothing more, the master goes on
    assert verdict.halt == "ImportError: x" and verdict.alarming and not verdict.recover
    assert cycle.spawns(10.0) == []
    assert not cycle.all_halted()


def test_a_restart_revives_a_halted_pool() -> None:
    cycle = life()
    fill(cycle, 0.0)
    cycle.exited(KEY, only_worker(cycle), int(WorkerExit.BOOT_ERROR), 1.0, boot_reason="bad")
    assert cycle.all_halted() and cycle.exit_status() is MasterExit.HALTED
    # when SIGHUP or `acmeq worker restart` arrives
    assert cycle.restart(2.0)
    # then the pool tries again at once
    assert cycle.pools[KEY].halted is None
    assert cycle.spawns(2.0) == [(KEY, 0)]


def test_workers_ended_by_the_stop_signal_are_not_crashes() -> None:
    # given a fast stop under way
    cycle = life(desired=2)
    fill(cycle, 0.0)
    first, second = (w.name for w in cycle.pools[KEY].workers)
    cycle.stop(StopMode.FAST)
    # when one worker finishes cleanly and the other is ended by the SIGINT it was sent
    clean = cycle.exited(KEY, first, 0, 5.0)
    by_signal = cycle.exited(KEY, second, -signal.SIGINT, 5.0)
    # then neither is an error and the master is done, with status OK
    assert clean.kind is ExitKind.CLEAN and by_signal.kind is ExitKind.STOPPED
    assert not clean.alarming and not by_signal.alarming
    assert cycle.done() and cycle.exit_status() is MasterExit.OK


def test_a_worker_the_master_killed_is_recovered_as_a_crash() -> None:
    cycle = life()
    fill(cycle, 0.0)
    name = only_worker(cycle)
    assert cycle.kill(KEY, name, "hung: no heartbeat for over 30 s") is not None
    assert cycle.kill(KEY, name, "again") is None  # killed once
    verdict = cycle.exited(KEY, name, -signal.SIGKILL, 40.0)
    assert verdict.kind is ExitKind.KILLED and verdict.recover
    assert "was killed (hung: no heartbeat" in verdict.message


# -- retiring and rolling restarts -----------------------------------------------------------------


def test_a_smaller_desired_size_retires_the_oldest_first_and_keeps_slots_compact() -> None:
    cycle = life(minimum=0, desired=3)
    for slot, started in ((0, 5.0), (1, 1.0), (2, 3.0)):
        cycle.add(KEY, slot, f"w{slot}", started)
    cycle.pools[KEY].desired = 1
    retired = [w.name for _, w in cycle.retirements(10.0)]
    assert retired == ["w1", "w2"]
    # the survivor sits in slot 0, so nothing is spawned for the smaller pool
    assert [(w.name, w.slot) for w in cycle.pools[KEY].active()] == [("w0", 0)]
    assert cycle.spawns(10.0) == []


def test_a_rolling_restart_retires_the_old_generation_once_the_new_one_is_up() -> None:
    # given a pool of 2, running
    cycle = life(desired=2)
    old = fill(cycle, 0.0)
    # when a restart begins
    assert cycle.restart(10.0) and cycle.status == "restarting"
    new = fill(cycle, 10.0)
    # then a new worker per slot starts beside the old ones, which stay until the new ones are up
    assert len(new) == 2
    assert cycle.retirements(10.5) == []
    retired = [w.name for _, w in cycle.retirements(10.0 + lc.ROLLING_READY_S)]
    assert sorted(retired) == sorted(old)
    for name in old:
        cycle.exited(KEY, name, 0, 12.0)
    cycle.retirements(12.0)
    assert cycle.status == "running"


def test_a_rolling_restart_gives_up_waiting_for_the_new_generation_after_a_while() -> None:
    cycle = life()
    fill(cycle, 0.0)
    cycle.restart(1.0)
    cycle.pools[KEY].desired = 1
    # the new generation cannot start (its slot is backing off, say): nothing spawned
    cycle.pools[KEY].slot(0).not_before = 1000.0
    assert cycle.retirements(2.0) == []
    assert len(cycle.retirements(1.0 + lc.ROLLING_WAIT_S + 0.1)) == 1


# -- signals, commands, stops ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "stopping", "intent"),
    [
        (signal.SIGTERM, None, Intent.GRACEFUL_STOP),
        (signal.SIGTERM, StopMode.GRACEFUL, Intent.FAST_STOP),
        (signal.SIGINT, None, Intent.FAST_STOP),
        (signal.SIGHUP, None, Intent.RESTART),
        (signal.SIGCHLD, None, Intent.NOTHING),
    ],
)
def test_signals_map_to_intents(signum: int, stopping: StopMode | None, intent: Intent) -> None:
    assert lc.intent_of_signal(signum, stopping) is intent


def test_commands_are_a_strenum_and_unknown_ones_do_nothing() -> None:
    assert [str(c) for c in MasterCommand] == ["terminate", "terminate-fast", "restart"]
    assert lc.intent_of_command("terminate-fast") is Intent.FAST_STOP
    assert lc.intent_of_command(MasterCommand.RESTART) is Intent.RESTART
    assert lc.intent_of_command("reboot") is Intent.NOTHING


def test_a_fast_stop_wins_over_a_graceful_one_and_a_restart_is_ignored_while_stopping() -> None:
    cycle = life()
    assert cycle.stop(StopMode.GRACEFUL)
    assert cycle.stop(StopMode.FAST)
    assert not cycle.stop(StopMode.GRACEFUL)
    assert cycle.stopping is StopMode.FAST
    assert not cycle.restart(1.0)
    assert lc.stop_signal(StopMode.FAST) == signal.SIGINT
    assert lc.stop_signal(StopMode.GRACEFUL) == signal.SIGTERM
    assert lc.stop_grace(StopMode.GRACEFUL, 180) == 180 + lc.OVERRUN_GRACE_S


# -- hung workers ----------------------------------------------------------------------------------


def test_hung_workers_are_those_whose_heartbeat_file_is_older_than_the_timeout() -> None:
    now = 1_000.0
    beats = {
        "idle": now - 1.0,  # touched a second ago
        "in-a-job": now + 170.0,  # a job started: mtime in the future (timeout + grace)
        "stuck": now - 31.0,
        "no-file": None,
    }
    assert lc.hung(beats, now, 30.0) == ["stuck"]


# -- what the master publishes ---------------------------------------------------------------------


def test_the_published_snapshot_says_which_pools_are_halted_or_backing_off() -> None:
    from acmeq.config.settings import Settings
    from acmeq.master import control

    # given the development profile's master, with one pool crash-looping and one halted
    profile = Settings.load(config_path=os.devnull, env={}).profile("development")
    sup = profile.supervisors[0]
    q1, q2 = sup.queues[0], sup.queues[1]
    cycle = lc.pools_at_start([((sup.name, q), 1, 1) for q in sup.queues])
    fill(cycle, 0.0)
    for now in (1.0, 2.0, 3.0):
        cycle.exited((sup.name, q1), only_worker(cycle, (sup.name, q1)), 1, now)
        if now < 3.0:
            cycle.add((sup.name, q1), 0, f"again-{now}", now)
    cycle.exited((sup.name, q2), only_worker(cycle, (sup.name, q2)), 4, 3.0, boot_reason="bad")
    # when the master builds its snapshot and `acmeq status` reads it back
    snap = control.snapshot({"name": "m"}, profile, cycle, {}, {}, 3.0)
    (view,) = control.view_of("m", snap, alive=True).supervisor_views
    # then the pools that are not at full strength say why
    assert view.problems[0] == f"{q1} backing off: 1 slot waits up to 1.0 s after crashes"
    assert view.problems[1] == f"{q2} halted: bad"
