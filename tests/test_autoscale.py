"""The balancing policy, tick by tick, without Redis: measurements in, process counts out."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from acmeq.config.settings import Balance, QueueSpec, Settings, Strategy
from acmeq.errors import UsageError
from acmeq.master.autoscale import (
    Action,
    BalancerState,
    Decision,
    PoolPolicy,
    QueueLoad,
    balance,
    distribute,
    initial_counts,
    queue_need,
)
from acmeq.master.budget import fit_host_budget, validate_budget
from acmeq.master.simulate import Trace, parse_trace, read_trace, render_chart, simulate

ROOT = Path(__file__).resolve().parent.parent
BURST = ROOT / "bench" / "traces" / "burst.csv"
# The built-in defaults only: an empty config file stops an acmeq.toml in the cwd from leaking in.
SETTINGS = Settings.load(config_path=os.devnull, env={})
QUEUES: dict[str, QueueSpec] = dict(SETTINGS.queues)
PRODUCTION = SETTINGS.profile("production")
HIGH = next(s for s in PRODUCTION.supervisors if s.name == "high-priority")


def policy(*queues: str, **changes: object) -> PoolPolicy:
    """The production high-priority policy (min 1 per queue, max 8, shift 1, cooldown 3 s)."""
    base = PoolPolicy.from_spec(HIGH)
    if queues:
        base = replace(base, queues=queues)
    return replace(base, **changes)  # type: ignore[arg-type]


def load(queue: str, paused: bool = False, **fields: float) -> QueueLoad:
    """A measurement of ``queue`` with its configured priority, wait target and memory."""
    spec = QUEUES[queue]
    values: dict[str, float] = {"current": 1, "avg_runtime": 0.05} | fields
    return QueueLoad(
        queue=queue,
        priority=spec.priority,
        ready=int(values.get("ready", 0)),
        oldest_age=values.get("oldest_age", 0.0),
        avg_runtime=values["avg_runtime"],
        busy=int(values.get("busy", 0)),
        current=int(values["current"]),
        wait_target=float(spec.wait_threshold),
        memory_mb=spec.memory_mb,
        paused=paused,
    )


Measure = Callable[[float, dict[str, int]], list[QueueLoad]]


def drive(pol: PoolPolicy, measure: Measure, ticks: int, tick: float = 1.0) -> list[dict[str, int]]:
    """Run the balancer like the supervisor does: every tick, measure with the pools as they
    are, decide, apply. Returns the pool sizes after each tick."""
    counts = initial_counts(pol)
    state = BalancerState()
    history = []
    for k in range(ticks):
        decisions, state = balance(pol, measure(k * tick, dict(counts)), k * tick, state)
        counts = {d.queue: d.desired for d in decisions}
        history.append(counts)
    return history


def direction_changes(series: list[int]) -> int:
    moves = [b - a for a, b in pairwise(series) if b != a]
    return sum(1 for a, b in pairwise(moves) if (a > 0) != (b > 0))


def decide(pol: PoolPolicy, *loads: QueueLoad) -> dict[str, Decision]:
    decisions, _ = balance(pol, loads, 0.0, BalancerState())
    return {d.queue: d for d in decisions}


# --- starting, scaling up, draining ---------------------------------------------------------


def test_auto_pools_start_at_their_minimum_not_their_maximum() -> None:
    # given the production high-priority supervisor (min 1 per queue, max 8)
    pol = policy()
    # when it starts, and balances queues without work
    start = initial_counts(pol)
    decisions = decide(pol, load("payments"), load("notifications"))
    # then each pool starts at 1 (Horizon started at max: horizon#1295) and stays there
    assert start == {"payments": 1, "notifications": 1}
    assert [d.desired for d in decisions.values()] == [1, 1]
    assert decisions["payments"].reason == "hold at 1: queue empty and idle; min 1; at target"


def test_a_burst_climbs_by_max_shift_per_cooldown_to_max_and_drains_back_to_min() -> None:
    # given a notifications supervisor (min 1, max 8, max_shift 2, cooldown 3 s) ticking every
    # second, and a backlog that lasts 40 s and then is gone
    pol = policy("notifications", max_shift=2, cooldown=3.0)

    def measure(now: float, counts: dict[str, int]) -> list[QueueLoad]:
        current = counts["notifications"]
        if now < 40:
            return [
                load("notifications", ready=5000, avg_runtime=0.2, busy=current, current=current)
            ]
        return [load("notifications", current=current)]

    # when the balancer runs for a minute
    sizes = [c["notifications"] for c in drive(pol, measure, 60)]
    # then it grows 2 at a time, no faster than once per 3 s, to the maximum
    changes = [(t, b - a) for t, (a, b) in enumerate(pairwise([1, *sizes])) if a != b]
    assert all(abs(step) <= 2 for _, step in changes)
    assert all(t2 - t1 >= 3 for (t1, _), (t2, _) in pairwise(changes))
    assert sizes[:10] == [3, 3, 3, 5, 5, 5, 7, 7, 7, 8]
    assert max(sizes) == 8
    # and once the queue is empty (t = 40) it holds until the lower target has held 3 ticks
    # (t = 40, 41, 42), then steps down 2 per cooldown to the minimum
    assert sizes[39:45] == [8, 8, 8, 6, 6, 6]
    assert sizes[-1] == 1


def test_a_load_oscillating_around_a_boundary_does_not_make_the_pool_flap() -> None:
    # given a backlog that alternates each tick between 9 s and 10 s of work (3 s target: a
    # wish of 3 processes, then 4)
    def measure(now: float, counts: dict[str, int]) -> list[QueueLoad]:
        ready = 180 if int(now) % 2 else 200
        return [load("payments", ready=ready, avg_runtime=0.05, current=counts["payments"])]

    # when it runs for two minutes with the default hysteresis, and without any
    with_hysteresis = [c["payments"] for c in drive(policy("payments"), measure, 120)]
    without = [c["payments"] for c in drive(policy("payments", hysteresis_ticks=1), measure, 120)]
    # then the pool climbs to 4 once and stays (the 3s never hold for 3 ticks in a row)
    assert direction_changes(with_hysteresis) == 0
    assert with_hysteresis[-1] == 4
    # whereas without hysteresis it would flap every cooldown (horizon#750)
    assert direction_changes(without) > 20


# --- what a queue needs, and who gets processes -----------------------------------------------


def test_processes_go_to_the_higher_priority_first_when_they_are_scarce() -> None:
    # given payments (priority 10) and exports (priority 6) with exactly the same backlog, in a
    # supervisor of max 4 processes
    pol = policy("payments", "exports", max_processes=4)
    same = {"ready": 1000, "avg_runtime": 1.0}
    # when the balancer shares the 2 processes above the minimums
    wants = {"payments": 8, "exports": 8}
    targets = distribute(pol, wants, {"payments": 10, "exports": 6})
    # then payments gets them both; exports keeps its minimum
    assert targets == {"payments": 3, "exports": 1}
    decisions = decide(pol, load("payments", **same), load("exports", **same))
    assert decisions["payments"].target == 3 and decisions["exports"].target == 1
    assert "after higher priorities" in decisions["exports"].reason
    # and queues of equal priority split in proportion to what they want
    even = policy("exports", "reports", max_processes=6)
    assert distribute(even, {"exports": 7, "reports": 3}, {"exports": 6, "reports": 6}) == {
        "exports": 4,
        "reports": 2,
    }


def test_a_higher_priority_burst_reclaims_processes_a_lower_queue_keeps_by_hysteresis() -> None:
    # given notifications at 7 processes whose backlog just ended (its hysteresis still holds
    # them) and payments at 1
    pol = policy()
    state = BalancerState()
    _, state = balance(pol, [load("payments"), load("notifications", current=7)], 0.0, state)
    # when 400 payments arrive on the next tick
    decisions, _ = balance(
        pol,
        [load("payments", ready=400), load("notifications", current=7)],
        1.0,
        state,
    )
    by_queue = {d.queue: d for d in decisions}
    # then payments grows at once, taking the process notifications would only have kept
    assert by_queue["payments"].desired == 2
    assert by_queue["notifications"].desired == 6
    assert "reclaimed for payments (priority 10)" in by_queue["notifications"].reason
    assert sum(d.desired for d in decisions) <= pol.max_processes


def test_busy_pools_with_nothing_waiting_are_not_split_evenly() -> None:
    # given 10 processes spread 6 / 3 / 1 by the work they do, every one busy, no job waiting
    pol = policy("payments", "notifications", "exports", max_processes=10)
    decisions = decide(
        pol,
        load("payments", current=6, busy=6),
        load("notifications", current=3, busy=3),
        load("exports", current=1, busy=1),
    )
    # then the balancer keeps them: busy processes are needed (Horizon split them evenly
    # whenever no job waited, and flapped back and forth: horizon#750)
    assert [(d.desired, d.action) for d in decisions.values()] == [
        (6, Action.HOLD),
        (3, Action.HOLD),
        (1, Action.HOLD),
    ]


def test_a_queue_never_gets_more_processes_than_jobs_nor_any_extra_without_work() -> None:
    # given 3 ready exports of a minute each and an idle payments queue
    pol = policy("payments", "exports")
    decisions = decide(pol, load("payments"), load("exports", ready=3, avg_runtime=60.0, current=1))
    # then exports wants 3 processes, not the 7 it could have; payments keeps just its minimum
    assert decisions["exports"].target == 3
    assert "capped at 3 ready + 0 busy" in decisions["exports"].reason
    assert decisions["payments"].target == 1


def test_the_time_strategy_weighs_the_backlog_by_runtime_and_size_does_not() -> None:
    # given 100 ready jobs, either quick (0.01 s) or slow (0.5 s)
    quick = load("notifications", ready=100, avg_runtime=0.01)
    slow = load("notifications", ready=100, avg_runtime=0.5)
    time_policy, size_policy = policy(), policy(strategy=Strategy.SIZE)
    # then time asks for 1 process for 1 s of work and 17 for 50 s (3 s target)
    assert queue_need(time_policy, quick)[0] == 1
    need, why = queue_need(time_policy, slow)
    assert need == 17
    assert why.startswith("100 ready x 0.5 s avg = 50 s of work: 17 process(es)")
    # while size asks for one per job either way
    assert queue_need(size_policy, quick)[0] == queue_need(size_policy, slow)[0] == 100


def test_the_wait_strategy_reacts_to_an_old_job_even_with_few_ready() -> None:
    # given payments (wait target 30 s, so a 15 s goal) with 2 ready jobs and 1 busy process
    pol = policy(strategy=Strategy.WAIT)
    young = load("payments", ready=2, oldest_age=1.0, busy=1)
    old = load("payments", ready=2, oldest_age=40.0, busy=1)
    # then a young backlog keeps the pool, an old one grows it
    assert decide(pol, young, load("notifications"))["payments"].action is Action.HOLD
    grown = decide(pol, old, load("notifications"))["payments"]
    assert (grown.action, grown.need, grown.target, grown.desired) == (Action.UP, 3, 3, 2)
    assert "oldest job waited 40.0 s against a 15 s goal" in grown.reason


def test_cooldown_holds_a_pool_and_the_reason_says_how_long() -> None:
    # given payments just scaled up at t = 0
    pol = policy()
    busy = load("payments", ready=400)
    first, state = balance(pol, [busy, load("notifications")], 0.0, BalancerState())
    # when the backlog is still there 1.2 s later
    again, _ = balance(
        pol, [replace(busy, current=first[0].desired), load("notifications")], 1.2, state
    )
    # then the pool waits for the cooldown
    assert first[0].desired == 2 and again[0].desired == 2
    assert again[0].reason.startswith("hold at 2:")
    assert again[0].reason.endswith("cooldown 1.8 s left")


def test_shrinking_below_busy_is_allowed_because_a_retiring_worker_finishes_its_job() -> None:
    # given notifications at 7 processes, all busy on a long backlog, and payments at 1
    pol = policy()
    notifications = load("notifications", ready=5000, avg_runtime=0.2, busy=7, current=7)
    _, state = balance(pol, [load("payments"), notifications], 0.0, BalancerState())
    # when 400 payments arrive
    decisions, _ = balance(pol, [load("payments", ready=400), notifications], 1.0, state)
    # then notifications gives up a busy process at once, and says it finishes its job first
    shrunk = decisions[1]
    assert (shrunk.desired, shrunk.action, decisions[0].desired) == (6, Action.DOWN, 2)
    assert shrunk.reason.endswith("1 busy worker(s) retire after their current job")


def test_a_pool_below_its_minimum_is_raised_at_once_even_in_cooldown() -> None:
    # given payments whose workers all died right after a change
    pol = policy()
    _, state = balance(
        pol, [load("payments", current=2), load("notifications")], 0.0, BalancerState()
    )
    # when it is measured with no process 0.5 s later
    decisions, _ = balance(pol, [load("payments", current=0), load("notifications")], 0.5, state)
    # then it is raised to its minimum without waiting for the cooldown
    assert decisions[0].desired == 1
    assert decisions[0].reason.startswith("scale up 0 -> 1: raise to min 1")


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_paused_queue_with_a_backlog_keeps_its_minimum_and_never_scales_up(
    strategy: Strategy,
) -> None:
    # given a paused payments queue with a large, old backlog beside a busy notifications queue
    pol = policy(strategy=strategy, cooldown=0.0)
    paused = load("payments", paused=True, ready=5000, oldest_age=600.0, current=1)
    other = load("notifications", ready=40, oldest_age=120.0, current=1)
    # when the balancer decides
    decisions = decide(pol, paused, other)
    # then the paused pool holds at its minimum and says why; the other queue gets the processes
    assert decisions["payments"].desired == 1
    assert decisions["payments"].action is Action.HOLD
    assert "queue paused" in decisions["payments"].reason
    assert decisions["notifications"].desired > 1


def test_a_paused_queue_above_its_minimum_shrinks_back_to_it_and_a_resume_scales_up() -> None:
    # given a payments pool of 4 processes, paused with a backlog, over several ticks
    pol = policy("payments", cooldown=0.0, hysteresis_ticks=2)
    counts = {"payments": 4}
    state = BalancerState()
    for k in range(4):
        queue = load(
            "payments", paused=True, ready=900, oldest_age=60.0, current=counts["payments"]
        )
        decisions, state = balance(pol, [queue], float(k), state)
        counts = {d.queue: d.desired for d in decisions}
        # then it never grows
        assert counts["payments"] <= 4
    # and it is back at its minimum once the hysteresis allowed it
    assert counts == {"payments": 1}
    # when the queue is resumed with the same backlog
    resumed = load("payments", ready=900, oldest_age=60.0, current=1)
    decisions, _ = balance(pol, [resumed], 10.0, state)
    # then the pool scales up again
    assert decisions[0].desired > 1


def test_a_paused_queue_below_its_minimum_is_still_raised_to_it() -> None:
    # given a paused pool that lost its worker (crash): the minimum keeps a resume instant
    pol = policy("payments")
    decisions = decide(pol, load("payments", paused=True, ready=10, current=0))
    assert decisions["payments"].desired == 1


def test_off_and_simple_fix_the_pools_whatever_the_load() -> None:
    # given an `off` supervisor of three queues (max 8) and a `simple` one over the same queues
    off = policy("payments", "notifications", "exports", balance=Balance.OFF)
    simple = replace(off, balance=Balance.SIMPLE)
    loads = [
        load("payments", ready=900),
        load("notifications"),
        load("exports", ready=5, avg_runtime=30.0),
    ]
    # then off gives each 8 // 3 = 2, simple splits all 8, the remainder to the top priorities
    assert [d.desired for d in decide(off, *loads).values()] == [2, 2, 2]
    assert [d.desired for d in decide(simple, *loads).values()] == [3, 3, 2]
    assert initial_counts(simple) == {"payments": 3, "notifications": 3, "exports": 2}
    # and neither changes over time nor with the load
    history = drive(
        off, lambda now, counts: [replace(x, current=counts[x.queue]) for x in loads], 10
    )
    assert all(c == {"payments": 2, "notifications": 2, "exports": 2} for c in history)
    # and off never goes below the minimum
    exports = PoolPolicy.from_spec(next(s for s in PRODUCTION.supervisors if s.name == "exports"))
    assert initial_counts(exports) == {"exports": 2}


def test_an_impossible_policy_is_refused_with_its_numbers() -> None:
    with pytest.raises(UsageError, match=r"max_processes 2 is below min_processes x queues = 3"):
        policy("payments", "notifications", "exports", max_processes=2)
    with pytest.raises(UsageError, match="no load measured for queue 'notifications'"):
        balance(policy(), [load("payments")], 0.0, BalancerState())


# --- host budgets ------------------------------------------------------------------------------


def production_plans(payments: int, notifications: int) -> dict[str, list[Decision]]:
    """Desired counts of every production supervisor, as their balancers would return them."""
    plans: dict[str, list[Decision]] = {}
    for sup in PRODUCTION.supervisors:
        pol = PoolPolicy.from_spec(sup)
        wanted = {"payments": payments, "notifications": notifications}
        loads = [load(q, current=wanted.get(q, initial_counts(pol)[q])) for q in sup.queues]
        plans[sup.name] = balance(pol, loads, 0.0, BalancerState())[0]
    return plans


def test_the_host_budget_cuts_the_lowest_priority_first_and_never_below_the_minimum() -> None:
    # given production wanting payments 4 and notifications 4 (14 processes in all)
    plans = production_plans(payments=4, notifications=4)
    # when the host allows 11 processes
    fit = fit_host_budget(plans, max_processes=11)
    counts = {d.queue: d.desired for ds in fit.plans.values() for d in ds}
    # then notifications (priority 8) loses 3 before anything of payments (10); the fixed pools
    # are at their minimum and keep it
    assert (fit.processes, fit.cut, fit.fits) == (11, 3, True)
    assert counts == {
        "payments": 4,
        "notifications": 1,
        "exports": 2,
        "reports": 2,
        "bulk": 1,
        "maintenance": 1,
    }
    reason = next(d.reason for d in fit.plans["high-priority"] if d.queue == "notifications")
    assert reason.endswith("budget: 3 process(es) cut from 4 (host max 11 processes)")
    # when memory is the limit: 4736 MB of minimums + 3 x 256 (payments) + 3 x 128 = 5888 MB
    fit = fit_host_budget(plans, memory_budget_mb=5600)
    counts = {d.queue: d.desired for ds in fit.plans.values() for d in ds}
    # then the 3 extra notifications go (5504 MB); payments only goes once they are gone
    assert (counts["payments"], counts["notifications"], fit.memory_mb) == (4, 1, 5504)
    fit = fit_host_budget(plans, memory_budget_mb=5200)
    counts = {d.queue: d.desired for ds in fit.plans.values() for d in ds}
    assert (counts["payments"], counts["notifications"], fit.memory_mb) == (2, 1, 4992)
    # and a budget below the minimums cuts down to them and reports the problem
    tight = fit_host_budget(plans, max_processes=5)
    assert tight.processes == 8
    assert tight.problems == (
        "even the minimums need 8 processes and 4736 MB, over the host budget "
        "(host max 5 processes)",
    )


def test_validate_budget_refuses_a_profile_whose_minimums_do_not_fit() -> None:
    # given the production profile, whose minimum pools are 8 processes and 4736 MB
    assert validate_budget(PRODUCTION, QUEUES, memory_budget_mb=8192) == []
    # when the host has 4 GB and room for 6 processes
    small = replace(PRODUCTION, max_processes=6)
    problems = validate_budget(small, QUEUES, memory_budget_mb=4096)
    # then both problems are named, with the numbers and the keys to change
    assert len(problems) == 2
    assert problems[0].startswith(
        "profile 'production' needs at least 8 processes (min_processes of every queue: "
        "high-priority: payments 1 x 256 MB, notifications 1 x 128 MB; exports: exports 2 x "
    )
    assert "host budget profiles.production.max_processes is 6" in problems[0]
    assert problems[1].startswith("profile 'production' needs at least 4736 MB")
    assert (
        "the host memory budget is 4096 MB; raise profiles.production.memory_budget"
        in (problems[1])
    )


# --- traces and the simulator ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "trace: empty trace; expected the header t,queue,arrivals,runtime"),
        ("t,queue,jobs\n", "trace:1: expected the header t,queue,arrivals,runtime, got"),
        (
            "# comment\n\nt,queue,arrivals,runtime\n0,payments,abc,0.05\n",
            "trace:4: arrivals: must be an integer >= 0, got 'abc'",
        ),
        (
            "t,queue,arrivals,runtime\n0,payments,1,0.05\n-1,payments,1,0.05\n",
            "trace:3: t: must be a number >= 0 (seconds), got '-1'",
        ),
        (
            "t,queue,arrivals,runtime\n0,payments,1,0\n",
            "trace:2: runtime: must be a number > 0 (seconds), got '0'",
        ),
        ("t,queue,arrivals,runtime\n0,payments,1\n", "trace:2: expected 4 values"),
        ("t,queue,arrivals,runtime\n0,,1,0.1\n", "trace:2: queue: must not be empty"),
    ],
)
def test_trace_errors_name_the_line_and_the_bad_value(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_trace(text)
    assert str(caught.value).startswith(message)


def test_a_trace_file_is_parsed_sorted_and_its_errors_name_the_file(tmp_path: Path) -> None:
    trace = read_trace(BURST)
    assert trace.queues == ("payments", "notifications")
    assert trace.only(["notifications"]).jobs == 2000
    assert trace.jobs == 2000 + 61 * 5
    bad = tmp_path / "bad.csv"
    bad.write_text("t,queue,arrivals,runtime\n5,payments,1,0.1\n1,payments,x,0.1\n")
    with pytest.raises(UsageError, match=r"bad\.csv:3: arrivals: must be an integer"):
        read_trace(bad)
    ordered = parse_trace("t,queue,arrivals,runtime\n5,a,1,0.1\n1,b,2,0.2\n")
    assert [e.t for e in ordered.events] == [1.0, 5.0]


def test_the_simulator_scales_1_to_8_to_1_on_the_burst_trace() -> None:
    # given the burst trace (2,000 notifications of 0.01 s at t = 10) and a notifications
    # supervisor of min 1 and max 8 tuned for bursts (max_shift 3, cooldown 1 s)
    trace: Trace = read_trace(BURST).only(["notifications"])
    pol = policy("notifications", max_shift=3, cooldown=1.0)
    # when it is replayed tick by tick
    steps = simulate(pol, QUEUES, trace, tick=1.0)
    sizes = [s.processes["notifications"] for s in steps]
    # then the pool starts at 1, reaches 8 while the burst lasts, and is back at 1 after it
    assert sizes[0] == 1
    assert max(sizes) == 8
    peak = sizes.index(8)
    assert sizes[peak:] == sorted(sizes[peak:], reverse=True)
    assert sizes[-1] == 1
    assert steps[-1].completed["notifications"] == 2000
    # and the chart shows it
    chart = render_chart(steps)
    assert "notifications" in chart and "████████" in chart


def test_the_simulator_replays_the_production_supervisor_without_starving_payments() -> None:
    # given the whole burst trace on the high-priority supervisor (payments + notifications)
    pol = policy(max_shift=3, cooldown=1.0)
    steps = simulate(pol, QUEUES, read_trace(BURST), tick=1.0)
    # then notifications takes every process payments does not need, the total stays within
    # 8 and payments never waits long
    assert max(s.processes["notifications"] for s in steps) == 7
    assert max(s.total for s in steps) == 8
    assert all(s.processes["payments"] >= 1 for s in steps)
    assert max(d.load.oldest_age for s in steps for d in s.decisions if d.queue == "payments") < 2
    assert steps[-1].processes == {"payments": 1, "notifications": 1}
    assert steps[-1].completed == {"payments": 305, "notifications": 2000}
