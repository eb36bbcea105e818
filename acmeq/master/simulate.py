"""Replay a load trace through the balancer: what would the pools have done?

A trace is CSV text with the header ``t,queue,arrivals,runtime``: at ``t`` seconds from the start,
``arrivals`` jobs of ``runtime`` seconds each join ``queue``. Blank lines and lines starting with
``#`` are ignored; rows need not be sorted. From bench/traces/burst.csv::

    # a notification burst over a steady payments load
    t,queue,arrivals,runtime
    0,payments,5,0.05
    10,notifications,2000,0.01

:func:`simulate` runs a small queueing model (each process works through its queue first come,
first served, finishing ``1 / runtime`` jobs per second; a retiring process finishes its running
job first; spawning is instant) and calls :func:`acmeq.master.autoscale.balance` once per ``tick``,
as
the supervisor does. :func:`render_chart` draws the result as plain text for the CLI.
"""

from __future__ import annotations

import csv
import io
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from acmeq.errors import UsageError
from acmeq.master.autoscale import (
    BalancerState,
    Decision,
    PoolPolicy,
    QueueLoad,
    balance,
    initial_counts,
)

TRACE_HEADER = ("t", "queue", "arrivals", "runtime")
# Without a limit a trace whose load never ends would simulate forever.
DEFAULT_TAIL_S = 600.0


class QueueInfo(Protocol):
    """What the simulator needs of a queue (a :class:`acmeq.config.settings.QueueSpec` has it)."""

    @property
    def priority(self) -> int: ...

    @property
    def wait_threshold(self) -> int: ...

    @property
    def memory_mb(self) -> int: ...


@dataclass(frozen=True)
class TraceEvent:
    t: float
    queue: str
    arrivals: int
    runtime: float


@dataclass(frozen=True)
class Trace:
    """Arrival events sorted by time."""

    events: tuple[TraceEvent, ...]

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.queue for e in self.events))

    @property
    def end(self) -> float:
        return self.events[-1].t if self.events else 0.0

    @property
    def jobs(self) -> int:
        return sum(e.arrivals for e in self.events)

    def only(self, queues: Sequence[str]) -> Trace:
        """The events of ``queues`` alone (to replay one supervisor's share of a host trace)."""
        return Trace(tuple(e for e in self.events if e.queue in queues))


def parse_trace(text: str, source: str = "trace") -> Trace:
    """Read a trace (format in the module docstring); errors name ``source``, line and value."""
    rows = [
        (number, line)
        # A spreadsheet's CSV export may start with a byte order mark.
        for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise UsageError(f"{source}: empty trace; expected the header {','.join(TRACE_HEADER)}")
    number, header = rows[0]
    if tuple(c.strip() for c in header.split(",")) != TRACE_HEADER:
        raise UsageError(
            f"{source}:{number}: expected the header {','.join(TRACE_HEADER)}, got {header!r}"
        )
    events = []
    for number, line in rows[1:]:
        cells = [c.strip() for c in next(csv.reader(io.StringIO(line)))]
        if len(cells) != len(TRACE_HEADER):
            raise UsageError(
                f"{source}:{number}: expected 4 values (t,queue,arrivals,runtime), "
                f"got {len(cells)} in {line!r}"
            )
        t, queue, arrivals, runtime = cells
        if not queue:
            raise UsageError(f"{source}:{number}: queue: must not be empty")
        events.append(
            TraceEvent(
                t=_number(source, number, "t", t, allow_zero=True),
                queue=queue,
                arrivals=_count(source, number, arrivals),
                runtime=_number(source, number, "runtime", runtime, allow_zero=False),
            )
        )
    events.sort(key=lambda e: e.t)  # stable: rows of one time keep their order
    return Trace(tuple(events))


def read_trace(path: str | Path) -> Trace:
    """Read a trace file; errors name the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    return parse_trace(text, source=str(path))


def _number(source: str, line: int, name: str, raw: str, *, allow_zero: bool) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        what = "a number >= 0" if allow_zero else "a number > 0"
        raise UsageError(f"{source}:{line}: {name}: must be {what} (seconds), got {raw!r}")
    return value


def _count(source: str, line: int, raw: str) -> int:
    if not raw.isdigit():
        raise UsageError(f"{source}:{line}: arrivals: must be an integer >= 0, got {raw!r}")
    return int(raw)


# --------------------------------------------------------------------------------------------
# The queueing model


@dataclass
class _Batch:
    arrived: float
    count: int
    runtime: float


@dataclass
class _Process:
    remaining: float = 0.0  # seconds left on the running job; 0: idle
    runtime: float = 0.0  # the running job's runtime


_EPS = 1e-9


@dataclass
class _Pool:
    """One queue and the processes serving it."""

    ready: deque[_Batch] = field(default_factory=deque)
    processes: list[_Process] = field(default_factory=list)
    retiring: list[_Process] = field(default_factory=list)
    avg_runtime: float = 0.0
    completed: int = 0

    @property
    def waiting(self) -> int:
        return sum(b.count for b in self.ready)

    @property
    def busy(self) -> int:
        return sum(1 for p in self.processes if p.remaining > 0)

    def resize(self, n: int) -> None:
        while len(self.processes) < n:
            self.processes.append(_Process())
        # Idle processes go first; a busy one retires after its running job.
        self.processes.sort(key=lambda p: p.remaining > 0)
        while len(self.processes) > n:
            gone = self.processes.pop(0)
            if gone.remaining > 0:
                self.retiring.append(gone)

    def run(self, dt: float) -> None:
        """Let every process work for ``dt`` seconds, first come, first served."""
        finished: list[tuple[int, float]] = []  # (jobs, runtime)
        for process in self.retiring:
            self._work(process, dt, finished, take=False)
        self.retiring = [p for p in self.retiring if p.remaining > 0]
        for process in self.processes:
            self._work(process, dt, finished, take=True)
        done = sum(n for n, _ in finished)
        if done:
            # The recent average the supervisor reads from the jobs that finished.
            self.avg_runtime = sum(n * r for n, r in finished) / done
        self.completed += done

    def _work(
        self, process: _Process, dt: float, finished: list[tuple[int, float]], *, take: bool
    ) -> None:
        left = dt
        while True:
            if process.remaining > 0:
                used = min(left, process.remaining)
                process.remaining -= used
                left -= used
                if process.remaining > _EPS:
                    return
                process.remaining = 0.0
                finished.append((1, process.runtime))
            if not take or left <= _EPS or not self.ready:
                return
            batch = self.ready[0]
            # Whole jobs that fit in the time left, then one started job that runs on.
            k = min(batch.count, int((left + _EPS) / batch.runtime))
            if k:
                finished.append((k, batch.runtime))
                batch.count -= k
                left -= k * batch.runtime
            if batch.count and left > _EPS:
                batch.count -= 1
                process.remaining = process.runtime = batch.runtime
            if not batch.count:
                self.ready.popleft()


@dataclass(frozen=True)
class SimStep:
    """One tick of a simulation: the balancer's decisions (their loads are the measurements)."""

    t: float
    decisions: tuple[Decision, ...]
    completed: Mapping[str, int]  # jobs finished so far, per queue

    @property
    def processes(self) -> dict[str, int]:
        return {d.queue: d.desired for d in self.decisions}

    @property
    def total(self) -> int:
        return sum(d.desired for d in self.decisions)

    @property
    def ready(self) -> dict[str, int]:
        return {d.queue: d.load.ready for d in self.decisions}


def simulate(
    policy: PoolPolicy,
    queues: Mapping[str, QueueInfo],
    trace: Trace,
    tick: float = 1.0,
    *,
    until: float | None = None,
    runtimes: Mapping[str, float] | None = None,
) -> list[SimStep]:
    """Replay ``trace`` through :func:`balance` every ``tick`` seconds from t = 0.

    Pools start at :func:`initial_counts`. A queue's average runtime is unknown until one of its
    jobs finishes, unless ``runtimes`` gives it (as metrics kept from an earlier run would). The
    run stops once the trace is over, every queue is empty and idle and every pool is back at
    its starting size, or at ``until`` (default: the last arrival + 600 s). A trace row for a
    queue the policy does not serve is an error.
    """
    if tick <= 0:
        raise UsageError(f"tick must be > 0 seconds, got {tick!r}")
    for name in trace.queues:
        if name not in policy.queues:
            raise UsageError(
                f"trace names queue {name!r}, which supervisor {policy.supervisor!r} does not "
                f"serve (it serves {', '.join(policy.queues)})"
            )
    missing = [q for q in policy.queues if q not in queues]
    if missing:
        raise UsageError(f"no queue settings for {', '.join(missing)}")
    stop = trace.end + DEFAULT_TAIL_S if until is None else until
    start = initial_counts(policy)
    pools = {q: _Pool() for q in policy.queues}
    for name, pool in pools.items():
        pool.resize(start[name])
        pool.avg_runtime = (runtimes or {}).get(name, 0.0)
    pending = deque(trace.events)
    state = BalancerState()
    steps: list[SimStep] = []
    k = 0
    while True:
        now = k * tick
        while pending and pending[0].t <= now + 1e-9:
            event = pending.popleft()
            if event.arrivals:
                pools[event.queue].ready.append(_Batch(event.t, event.arrivals, event.runtime))
        loads = [_measure(q, queues[q], pools[q], now) for q in policy.queues]
        decisions, state = balance(policy, loads, now, state)
        for d in decisions:
            pools[d.queue].resize(d.desired)
        steps.append(SimStep(now, tuple(decisions), {q: p.completed for q, p in pools.items()}))
        settled = not pending and all(
            not p.ready and not p.busy and not p.retiring and len(p.processes) == start[q]
            for q, p in pools.items()
        )
        if settled or now >= stop:
            return steps
        for pool in pools.values():
            pool.run(tick)
        k += 1


def _measure(name: str, info: QueueInfo, pool: _Pool, now: float) -> QueueLoad:
    return QueueLoad(
        queue=name,
        priority=info.priority,
        ready=pool.waiting,
        oldest_age=max(0.0, now - pool.ready[0].arrived) if pool.ready else 0.0,
        avg_runtime=pool.avg_runtime,
        busy=pool.busy,
        current=len(pool.processes),
        wait_target=float(info.wait_threshold),
        memory_mb=info.memory_mb,
    )


# --------------------------------------------------------------------------------------------
# Plain-text chart

_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _bar(value: float, scale: float, width: int) -> str:
    """A bar of ``width`` cells for ``value`` out of ``scale``, in eighth-cell steps."""
    eighths = round(width * 8 * min(value, scale) / scale) if scale > 0 else 0
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(width)


def render_chart(steps: Sequence[SimStep], max_rows: int = 40, width: int = 0) -> str:
    """One row per tick where a pool changed (plus the first and last), sampled evenly down to
    ``max_rows``: the time, then per queue its processes (number and bar) and ready jobs.

    Bars are ``width`` cells for the largest pool; by default one cell per process up to 16.
    """
    if not steps:
        return "(no steps)"
    queues = [d.queue for d in steps[0].decisions]
    scale = max(max(s.processes.values()) for s in steps)
    width = width or min(max(scale, 1), 16)
    keep = [0]
    for i in range(1, len(steps)):
        if steps[i].processes != steps[i - 1].processes:
            keep.append(i)
    if keep[-1] != len(steps) - 1:
        keep.append(len(steps) - 1)
    if len(keep) > max_rows:
        picks = {round(j * (len(keep) - 1) / (max_rows - 1)) for j in range(max_rows)}
        keep = [keep[j] for j in sorted(picks)]
    col = max(width + 4, *(len(q) for q in queues)) + 9
    head = f"{'t (s)':>8}  " + "".join(f"{q:<{col}}" for q in queues) + "total"
    sub = f"{'':>8}  " + "".join(f"{'procs':<{width + 4}}{'ready':>7}  ".ljust(col) for _ in queues)
    lines = [head, sub.rstrip()]
    for i in keep:
        step = steps[i]
        cells = []
        for d in step.decisions:
            cell = f"{d.desired:>2} {_bar(d.desired, scale, width)} {d.load.ready:>7}  "
            cells.append(cell.ljust(col))
        lines.append(f"{step.t:>8.1f}  " + "".join(cells) + f"{step.total:>5}")
    return "\n".join(lines)
