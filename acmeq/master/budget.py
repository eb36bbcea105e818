"""Host budgets: every supervisor of a profile on one host shares its processes and memory.

:func:`fit_host_budget` trims the balancer's plans (:mod:`acmeq.master.autoscale`) of all
supervisors on a host to its process and memory budgets, lowest priority first;
:func:`validate_budget` refuses a profile whose minimum pools alone do not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from acmeq.config.settings import ProfileSpec, QueueSpec
from acmeq.master.autoscale import Decision, decide


@dataclass(frozen=True)
class BudgetFit:
    """The plans of a host after :func:`fit_host_budget`."""

    plans: Mapping[str, tuple[Decision, ...]]  # supervisor name -> decisions
    processes: int  # total desired processes after the cut
    memory_mb: int  # their summed memory limits
    cut: int  # processes removed to fit
    problems: tuple[str, ...] = ()  # set when even the minimums do not fit

    @property
    def fits(self) -> bool:
        return not self.problems


def fit_host_budget(
    plans: Mapping[str, Sequence[Decision]],
    max_processes: int = 0,
    memory_budget_mb: int = 0,
) -> BudgetFit:
    """Cut the desired counts of all supervisors on a host until they fit its budgets.

    ``max_processes`` bounds the number of processes, ``memory_budget_mb`` the sum over processes
    of their queue's memory limit; 0 leaves a budget unbounded. One process at a time is cut
    from the lowest-priority queue still above its minimum (equal priorities: the pool using the
    most memory), so payments keep their workers while bulk gives them up.
    Nothing is cut below a minimum; if the minimums alone exceed a budget, ``problems`` says so.
    """
    counts = {(s, d.queue): d.desired for s, ds in plans.items() for d in ds}
    info = {(s, d.queue): d for s, ds in plans.items() for d in ds}

    def totals() -> tuple[int, int]:
        procs = sum(counts.values())
        return procs, sum(n * info[k].load.memory_mb for k, n in counts.items())

    def over() -> bool:
        procs, memory = totals()
        return bool(max_processes and procs > max_processes) or bool(
            memory_budget_mb and memory > memory_budget_mb
        )

    cut = 0
    while over():
        cuttable = [k for k, n in counts.items() if n > info[k].minimum]
        if not cuttable:
            break
        load = {k: info[k].load for k in cuttable}
        key = min(load, key=lambda k: (load[k].priority, -counts[k] * load[k].memory_mb, k))
        counts[key] -= 1
        cut += 1
    procs, memory = totals()
    budget = _budget_text(max_processes, memory_budget_mb)
    fitted: dict[str, tuple[Decision, ...]] = {}
    for sup, decisions in plans.items():
        out = []
        for d in decisions:
            n = counts[(sup, d.queue)]
            if n == d.desired:
                out.append(d)
                continue
            why = d.reason.split(": ", 1)[1]
            note = f"budget: {d.desired - n} process(es) cut from {d.desired} ({budget})"
            out.append(decide(d.load, n, f"{why}; {note}", d.need, d.target, d.minimum))
        fitted[sup] = tuple(out)
    problems: tuple[str, ...] = ()
    if over():
        problems = (
            f"even the minimums need {procs} processes and {memory} MB, over the host budget "
            f"({budget})",
        )
    return BudgetFit(fitted, procs, memory, cut, problems)


def _budget_text(max_processes: int, memory_budget_mb: int) -> str:
    procs = f"host max {max_processes} processes" if max_processes else ""
    memory = f"host memory {memory_budget_mb} MB" if memory_budget_mb else ""
    return ", ".join(p for p in (procs, memory) if p) or "no budget"


def validate_budget(
    profile: ProfileSpec, queues: Mapping[str, QueueSpec], memory_budget_mb: int
) -> list[str]:
    """Problems that make ``profile`` impossible on this host: its minimum pools (min_processes
    per queue of every supervisor) exceed the host's process budget (``profile.max_processes``,
    0 = none) or ``memory_budget_mb`` (0 = none). Empty when the profile can start."""
    problems: list[str] = []
    procs = memory = 0
    parts: list[str] = []
    for sup in profile.supervisors:
        items = []
        for name in sup.queues:
            spec = queues.get(name)
            if spec is None:
                problems.append(f"supervisor {sup.name!r} names unknown queue {name!r}")
                continue
            mb = sup.memory_for(spec)
            procs += sup.min_processes
            memory += sup.min_processes * mb
            items.append(f"{name} {sup.min_processes} x {mb} MB")
        parts.append(f"{sup.name}: {', '.join(items)}")
    detail = "; ".join(parts)
    key = f"profiles.{profile.name}"
    if profile.max_processes and procs > profile.max_processes:
        problems.append(
            f"profile {profile.name!r} needs at least {procs} processes (min_processes of every "
            f"queue: {detail}) but the host budget {key}.max_processes is "
            f"{profile.max_processes}; raise it or lower min_processes"
        )
    if memory_budget_mb and memory > memory_budget_mb:
        problems.append(
            f"profile {profile.name!r} needs at least {memory} MB at its minimum pools "
            f"({detail}) but the host memory budget is {memory_budget_mb} MB; raise "
            f"{key}.memory_budget or lower min_processes or the memory limits"
        )
    return problems
