"""The balancing policy of a supervisor: queue measurements in, desired process counts out.

Pure: no Redis, no clock, no I/O. Once a tick the supervisor measures every queue it serves
(:class:`QueueLoad`), calls :func:`balance` with the current time and the state the previous call
returned, and spawns or retires workers until each pool holds its :class:`Decision`'s
``desired`` count. :func:`acmeq.master.budget.fit_host_budget` then trims the plans of all
supervisors of a profile on the host to its process and memory budgets. docs/autoscaling.md has
the formulas with worked examples; in short, for ``balance = "auto"``:

1. need (processes), by strategy, for a queue with ready jobs (without, it needs its ``busy``):
   ``time``  busy + ceil(ready x avg_runtime / clear_target)      (clear_target = cooldown)
   ``size``  busy + ready
   ``wait``  max(busy, ceil(max(current, 1) x oldest_age / (wait_target / 2)))
2. want = need capped at ready + busy (no idle workers for 3 jobs), but never below the minimum.
3. target: every queue gets its want when the wants fit in ``max_processes``; otherwise the spare
   processes go to the highest priority first, and queues of one priority split theirs in
   proportion to their extra want (largest remainder).
4. step: up at once, down only when the last N targets all stayed below the pool (to the
   highest of them), by at most ``max_shift``, and never within ``cooldown`` seconds of the
   pool's last change. The supervisor's total never exceeds ``max_processes``; a higher-priority
   queue takes processes that a lower one only keeps because of its hysteresis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from acmeq.config.settings import Balance, QueueSpec, Strategy, SupervisorSpec
from acmeq.errors import UsageError

# Scale down only after the lower target held this many consecutive ticks (horizon#750).
HYSTERESIS_TICKS = 3
# The wait strategy aims the oldest job at half its alert threshold, so scaling starts well
# before `wait_threshold` alerts fire rather than once they do.
WAIT_GOAL_FRACTION = 0.5
# Float noise must not turn 3.0000000001 processes into 4.
_EPS = 1e-9


class Action(StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True)
class QueueLoad:
    """One queue's measurements at one tick (the inputs `--explain` shows)."""

    queue: str
    priority: int
    ready: int  # jobs waiting
    oldest_age: float = 0.0  # seconds the oldest ready job has waited; 0 when none is ready
    avg_runtime: float = 0.0  # recent average seconds per job; 0 when unknown
    busy: int = 0  # processes running a job
    current: int = 0  # processes in the pool (retiring ones excluded)
    wait_target: float = 0.0  # the queue's wait_threshold, seconds
    memory_mb: int = 0  # memory limit of one process on this queue
    paused: bool = False  # the queue, its supervisor or RQ as a whole is paused

    @classmethod
    def measured(
        cls,
        supervisor: SupervisorSpec,
        spec: QueueSpec,
        *,
        ready: int,
        oldest_age: float,
        avg_runtime: float,
        busy: int,
        current: int,
        paused: bool = False,
    ) -> QueueLoad:
        """A load whose static fields (priority, wait target, memory) come from the config."""
        return cls(
            queue=spec.name,
            priority=spec.priority,
            ready=ready,
            oldest_age=oldest_age,
            avg_runtime=avg_runtime,
            busy=busy,
            current=current,
            wait_target=float(spec.wait_threshold),
            memory_mb=supervisor.memory_for(spec),
            paused=paused,
        )

    def describe(self) -> str:
        """The inputs as one line: ``ready=380 oldest=4.2s avg=0.05s busy=2 current=2 ...``."""
        return (
            f"priority={self.priority} ready={self.ready} oldest={self.oldest_age:.1f}s "
            f"avg={self.avg_runtime:g}s busy={self.busy} current={self.current} "
            f"wait_target={self.wait_target:g}s memory={self.memory_mb}MB"
            + (" paused" if self.paused else "")
        )


@dataclass(frozen=True)
class PoolPolicy:
    """How one supervisor balances its queues (built from a :class:`SupervisorSpec`)."""

    supervisor: str
    queues: tuple[str, ...]
    balance: Balance
    strategy: Strategy
    min_processes: int  # per queue
    max_processes: int  # the supervisor's total
    max_shift: int = 1
    cooldown: float = 3.0
    hysteresis_ticks: int = HYSTERESIS_TICKS
    clear_target: float = 0.0  # seconds a backlog may take to clear (time); 0: the cooldown

    def __post_init__(self) -> None:
        if not self.queues:
            raise UsageError(f"supervisor {self.supervisor!r}: no queues to balance")
        if len(set(self.queues)) != len(self.queues):
            raise UsageError(f"supervisor {self.supervisor!r}: a queue is listed twice")
        if self.min_processes < 0 or self.max_shift < 1 or self.hysteresis_ticks < 1:
            raise UsageError(
                f"supervisor {self.supervisor!r}: min_processes must be >= 0, "
                "max_shift and hysteresis_ticks >= 1"
            )
        if self.min_processes * len(self.queues) > self.max_processes:
            raise UsageError(
                f"supervisor {self.supervisor!r}: max_processes {self.max_processes} is below "
                f"min_processes x queues = {self.min_processes * len(self.queues)}"
            )
        if self.cooldown < 0 or self.clear_target < 0:
            raise UsageError(f"supervisor {self.supervisor!r}: cooldown must be >= 0")

    @classmethod
    def from_spec(
        cls, spec: SupervisorSpec, *, hysteresis_ticks: int = HYSTERESIS_TICKS
    ) -> PoolPolicy:
        """The policy of a configured supervisor."""
        return cls(
            supervisor=spec.name,
            queues=spec.queues,
            balance=spec.balance,
            strategy=spec.strategy,
            min_processes=spec.min_processes,
            max_processes=spec.max_processes,
            max_shift=spec.max_shift,
            cooldown=spec.cooldown,
            hysteresis_ticks=hysteresis_ticks,
        )

    @property
    def target_seconds(self) -> float:
        """The time strategy's clearing target: by default one cooldown, the soonest the
        balancer may act on the pool again, so a backlog it cannot clear by then gets help now."""
        return self.clear_target or self.cooldown or 1.0


@dataclass(frozen=True)
class QueueMemory:
    """What the balancer remembers about one pool between ticks."""

    last_change: float | None = None  # time of the pool's last change; None: never changed
    recent: tuple[int, ...] = ()  # the last `hysteresis_ticks` targets, newest last


@dataclass(frozen=True)
class BalancerState:
    """The balancer's memory; :func:`balance` returns a new one each call (never mutated)."""

    queues: Mapping[str, QueueMemory] = field(default_factory=dict)

    def of(self, queue: str) -> QueueMemory:
        return self.queues.get(queue, QueueMemory())


@dataclass(frozen=True)
class Decision:
    """The desired process count of one pool, why, and the inputs it came from."""

    queue: str
    current: int
    desired: int
    action: Action
    reason: str
    need: int  # processes the strategy asked for
    target: int  # the pool's share after min, caps and priority (before hysteresis and steps)
    minimum: int
    load: QueueLoad

    @property
    def delta(self) -> int:
        return self.desired - self.current

    def explain(self) -> str:
        """The decision and every input, for ``--explain``."""
        return f"{self.queue}: {self.reason}\n    inputs: {self.load.describe()}"

    def as_dict(self) -> dict[str, object]:
        """The decision with its inputs, as published and shown by `worker scale --explain`."""
        return {
            "queue": self.queue,
            "ready": self.load.ready,
            "oldest_age": round(self.load.oldest_age, 3),
            "avg_runtime": round(self.load.avg_runtime, 4),
            "busy": self.load.busy,
            "paused": self.load.paused,
            "current": self.current,
            "desired": self.desired,
            "action": str(self.action),
            "reason": self.reason,
        }


def initial_counts(policy: PoolPolicy) -> dict[str, int]:
    """Pool sizes at supervisor start: the minimum under ``auto`` (not the maximum: horizon#1295),
    the fixed shares under ``off`` and ``simple``."""
    if policy.balance is Balance.AUTO:
        return dict.fromkeys(policy.queues, policy.min_processes)
    return _fixed_counts(policy)


def balance(
    policy: PoolPolicy, loads: Iterable[QueueLoad], now: float, state: BalancerState
) -> tuple[list[Decision], BalancerState]:
    """Decide every pool's desired size at time ``now`` (seconds, any monotonic origin).

    ``loads`` holds one measurement per queue of the policy. Returns the decisions in the policy's
    queue order and the state to pass to the next call.
    """
    by_queue = _index(policy, loads)
    if policy.balance is Balance.AUTO:
        return _Auto(policy, by_queue, now, state).run()
    return _fixed(policy, by_queue, now, state)


def _index(policy: PoolPolicy, loads: Iterable[QueueLoad]) -> dict[str, QueueLoad]:
    by_queue: dict[str, QueueLoad] = {}
    for load in loads:
        if load.queue not in policy.queues:
            raise UsageError(f"supervisor {policy.supervisor!r} does not serve {load.queue!r}")
        by_queue[load.queue] = load
    missing = [q for q in policy.queues if q not in by_queue]
    if missing:
        raise UsageError(f"no load measured for queue {', '.join(map(repr, missing))}")
    return by_queue


# --------------------------------------------------------------------------------------------
# off and simple: fixed sizes, reached at once (they are configuration, not reactions).


def _by_priority(policy: PoolPolicy, priorities: Mapping[str, int]) -> list[str]:
    """Queues by priority, highest first; the supervisor's own order breaks ties."""
    order = {q: i for i, q in enumerate(policy.queues)}
    return sorted(policy.queues, key=lambda q: (-priorities.get(q, 0), order[q]))


def _fixed_counts(
    policy: PoolPolicy, priorities: Mapping[str, int] | None = None
) -> dict[str, int]:
    n = len(policy.queues)
    share = policy.max_processes // n
    if policy.balance is Balance.OFF:
        return dict.fromkeys(policy.queues, max(policy.min_processes, share))
    counts = dict.fromkeys(policy.queues, share)
    for queue in _by_priority(policy, priorities or {})[: policy.max_processes % n]:
        counts[queue] += 1
    return {q: max(policy.min_processes, c) for q, c in counts.items()}


def _fixed(
    policy: PoolPolicy, loads: Mapping[str, QueueLoad], now: float, state: BalancerState
) -> tuple[list[Decision], BalancerState]:
    counts = _fixed_counts(policy, {q: load.priority for q, load in loads.items()})
    n = len(policy.queues)
    if policy.balance is Balance.OFF:
        why = f"balance off, max {policy.max_processes} // {n} queue(s)"
    else:
        why = f"balance simple, {policy.max_processes} processes split over {n} queue(s)"
        if policy.max_processes % n:
            why += ", the remainder to the highest priorities"
    decisions, memory = [], {}
    for queue in policy.queues:
        load, desired = loads[queue], counts[queue]
        text = f"{why}, min {policy.min_processes}"
        decisions.append(decide(load, desired, text, desired, desired, policy.min_processes))
        last = now if desired != load.current else state.of(queue).last_change
        memory[queue] = QueueMemory(last_change=last)
    return decisions, BalancerState(memory)


def decide(
    load: QueueLoad, desired: int, why: str, need: int, target: int, minimum: int
) -> Decision:
    current = load.current
    if desired > current:
        action, head = Action.UP, f"scale up {current} -> {desired}"
    elif desired < current:
        action, head = Action.DOWN, f"scale down {current} -> {desired}"
        if desired < load.busy:
            # Allowed: a retiring worker finishes its running job before it exits.
            why += f"; {load.busy - desired} busy worker(s) retire after their current job"
    else:
        action, head = Action.HOLD, f"hold at {current}"
    return Decision(
        load.queue, current, desired, action, f"{head}: {why}", need, target, minimum, load
    )


# --------------------------------------------------------------------------------------------
# auto


def queue_need(policy: PoolPolicy, load: QueueLoad) -> tuple[int, str]:
    """Processes the strategy asks for on one queue, and the arithmetic as text."""
    busy = load.busy
    if load.paused:
        # Its workers take no job: keep the minimum (a resume is served at once), never more.
        return 0, f"queue paused ({load.ready} ready, {busy} busy finishing)"
    if load.ready <= 0:
        if busy:
            return busy, f"no job waiting, {busy} busy"
        return 0, "queue empty and idle"
    strategy = policy.strategy
    note = ""
    if strategy is Strategy.WAIT and load.wait_target <= 0:
        strategy, note = Strategy.TIME, "no wait target, by time: "
    if strategy is Strategy.TIME and load.avg_runtime <= 0:
        # No job has finished yet, so the backlog's size in seconds is unknown: ask for one
        # process more than are busy and size properly once a runtime is measured.
        return busy + 1, f"{note}{load.ready} ready, runtime not yet measured: {busy} busy + 1"
    if strategy is Strategy.SIZE:
        return busy + load.ready, f"{note}{load.ready} ready + {busy} busy"
    if strategy is Strategy.TIME:
        work = load.ready * load.avg_runtime
        target = policy.target_seconds
        extra = max(1, math.ceil(work / target - _EPS))
        plus = f" + {busy} busy" if busy else ""
        return busy + extra, (
            f"{note}{load.ready} ready x {load.avg_runtime:g} s avg = {work:.3g} s of work: "
            f"{extra} process(es) clear it within the {target:g} s target{plus}"
        )
    goal = load.wait_target * WAIT_GOAL_FRACTION
    base = max(load.current, 1)
    # Waiting time falls roughly in inverse proportion to the processes draining the queue.
    asked = math.ceil(base * load.oldest_age / goal - _EPS)
    return max(busy, asked, 1), (
        f"oldest job waited {load.oldest_age:.1f} s against a {goal:g} s goal "
        f"(half its {load.wait_target:g} s wait target): {base} x {load.oldest_age / goal:.2f} "
        f"= {asked}, {busy} busy"
    )


def distribute(
    policy: PoolPolicy, wants: Mapping[str, int], priorities: Mapping[str, int]
) -> dict[str, int]:
    """Share ``max_processes`` among the queues' wants (each already >= the minimum).

    When the wants fit, each queue gets its want. Otherwise the processes above the minimums go
    to the highest priority first: a priority level gets its whole extra want before a lower
    level gets any; queues of one level split what is left in proportion to their extra want
    (largest remainder, then the larger want, then the supervisor's order). The minimum of
    every queue is never touched: it is what keeps a low-priority queue from starving.
    """
    floor = policy.min_processes
    targets = {q: floor for q in policy.queues}
    spare = policy.max_processes - floor * len(policy.queues)
    order = {q: i for i, q in enumerate(policy.queues)}
    for level in sorted({priorities[q] for q in policy.queues}, reverse=True):
        claims = {q: max(0, wants[q] - floor) for q in policy.queues if priorities[q] == level}
        total = sum(claims.values())
        if total <= spare:
            shares = claims
        else:
            shares = {q: spare * c // total for q, c in claims.items()}
            left = spare - sum(shares.values())
            ranked = sorted(
                claims, key=lambda q: (-(spare * claims[q] % total), -claims[q], order[q])
            )
            for queue in ranked[:left]:
                shares[queue] += 1
        for queue, share in shares.items():
            targets[queue] += share
        spare -= sum(shares.values())
    return targets


@dataclass
class _Step:
    """One pool's proposal within a tick (private, mutable while the tick is computed)."""

    load: QueueLoad
    need: int
    target: int
    desired: int
    why: str
    window: tuple[int, ...]
    cooling: bool  # a change now would fall within the cooldown
    held: bool = False  # above its target only because of hysteresis (may be reclaimed)
    floor: bool = False  # raised to the minimum: granted even beyond max_processes


@dataclass
class _Auto:
    """One tick of the auto balancer."""

    policy: PoolPolicy
    loads: Mapping[str, QueueLoad]
    now: float
    state: BalancerState

    def __post_init__(self) -> None:
        self.priorities = {q: load.priority for q, load in self.loads.items()}

    def run(self) -> tuple[list[Decision], BalancerState]:
        p = self.policy
        needs = {q: queue_need(p, self.loads[q]) for q in p.queues}
        wants = {}
        for q in p.queues:
            load = self.loads[q]
            wants[q] = max(p.min_processes, min(needs[q][0], load.ready + load.busy))
        targets = distribute(p, wants, self.priorities)
        prio = self.priorities
        steps = {}
        for q in p.queues:
            outranked = any(prio[o] > prio[q] and targets[o] > p.min_processes for o in p.queues)
            steps[q] = self._step(q, needs[q], wants[q], targets[q], outranked)
        self._fit_total(steps)
        decisions, memory = [], {}
        for q in p.queues:
            s, load = steps[q], self.loads[q]
            decisions.append(decide(load, s.desired, s.why, s.need, s.target, p.min_processes))
            changed = s.desired != load.current
            last = self.now if changed else self.state.of(q).last_change
            memory[q] = QueueMemory(last_change=last, recent=s.window)
        return decisions, BalancerState(memory)

    def _step(
        self, queue: str, need: tuple[int, str], want: int, target: int, outranked: bool
    ) -> _Step:
        p, load = self.policy, self.loads[queue]
        current, n = load.current, p.hysteresis_ticks
        memory = self.state.of(queue)
        window = (*memory.recent, target)[-n:]
        left = 0.0 if memory.last_change is None else memory.last_change + p.cooldown - self.now
        why = need[1]
        if want < need[0]:
            why += f"; capped at {load.ready} ready + {load.busy} busy"
        elif want > need[0]:
            why += f"; min {p.min_processes}"
        if target < want:
            why += f"; only {target} of {want} fit in max {p.max_processes}"
            if outranked:
                why += " after higher priorities"
        step = _Step(load, need[0], target, current, why, window, left > _EPS)
        if current < p.min_processes:
            # Below the configured floor (a crashed or new pool): not a scaling decision.
            step.desired, step.why = p.min_processes, f"raise to min {p.min_processes}; {why}"
            step.floor = True
            return step
        if target == current:
            step.why += "; at target"
            return step
        if target < current:
            # Hysteresis: shrink only to what every one of the last n targets stayed below.
            low_for = len(window) - next(
                (i + 1 for i in reversed(range(len(window))) if window[i] >= current), 0
            )
            if low_for < n:
                step.held = not step.cooling
                step.why += f"; target {target}, below {current} for {low_for} of {n} ticks"
                return step
            proposed = max(max(window), current - p.max_shift)
            step.why += f"; target {target}, below {current} for {n} ticks"
        else:
            proposed = min(target, current + p.max_shift)
            step.why += f"; target {target}"
        if step.cooling:
            step.why += f", cooldown {left:.1f} s left"
            return step
        if abs(proposed - current) == p.max_shift and proposed != target:
            step.why += f", max_shift {p.max_shift}"
        step.desired = proposed
        return step

    def _fit_total(self, steps: dict[str, _Step]) -> None:
        """Keep the supervisor's total within max_processes: shrink first, grow by priority."""
        p = self.policy
        ups = [
            q for q in _by_priority(p, self.priorities) if steps[q].desired > steps[q].load.current
        ]
        committed = sum(s.load.current if q in ups else s.desired for q, s in steps.items())
        for queue in ups:
            step = steps[queue]
            grow = step.desired - step.load.current
            if step.floor:
                committed += grow
                continue
            free = p.max_processes - committed
            if free < grow:
                taken = self._reclaim(queue, grow - free, steps)
                free += taken
                committed -= taken
            granted = max(0, min(grow, free))
            if granted < grow:
                step.why += f"; only {granted} free of the supervisor's max {p.max_processes}"
            step.desired = step.load.current + granted
            committed += granted

    def _reclaim(self, queue: str, short: int, steps: dict[str, _Step]) -> int:
        """Take processes that lower-priority pools keep only through hysteresis."""
        p, prio = self.policy, self.priorities[queue]
        taken = 0
        for other in reversed(_by_priority(p, self.priorities)):
            step = steps[other]
            if taken >= short or step.load.priority >= prio or not step.held:
                continue
            give = min(short - taken, p.max_shift, step.desired - step.target)
            if give > 0:
                step.desired -= give
                step.held = False
                step.why += f"; reclaimed for {queue} (priority {prio})"
                taken += give
        return taken
