"""Job metrics in Redis: the read side (`acmeq metrics`, `acmeq status`, the Prometheus page).

The write side (:mod:`acmeq.observability.metrics`) keeps one hash per minute and one per hour. A
window
(``--since 1h``) is read from the minute hashes while it fits in the minute retention and from
the hour hashes beyond it, with one HMGET per bucket, all in one pipelined round trip: a day of
minutes is 1,440 small replies, whatever the number of jobs.

What a window says, per queue or per job function:

- ``processed`` successful runs, ``failed`` failed runs (every failed attempt, retried or not);
- ``throughput`` runs (processed + failed) per minute over the part of the window that elapsed;
- runtime avg / p50 / p95 / max over every run (failed runs count their runtime too);
- wait (enqueue to start) avg / p95 over successful runs; per job function only the average,
  since the wait histogram is kept per queue.

Percentiles are interpolated linearly inside the histogram bucket that holds the rank, as
Prometheus' ``histogram_quantile`` does, and never exceed the maximum recorded in the window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

import redis

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.errors import UnknownQueueError, UsageError
from acmeq.observability.metrics import BOUNDS_MS, BUCKET_LABELS
from acmeq.timeparse import parse_duration

ALL = "(all)"  # the row that sums every queue of the catalog


class Resolution(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"


class Subject(StrEnum):
    QUEUE = "queue"
    JOB = "job"
    ALL = "all"


def fields(prefix: str) -> list[str]:
    """The hash fields one queue (``Q``) or job function (``job:NAME``) has in a bucket."""
    names = [f"{prefix}|{f}" for f in ("processed", "failed", "runtime", "max", "wait")]
    names += [f"{prefix}|rt|{label}" for label in BUCKET_LABELS]
    names += [f"{prefix}|wt|{label}" for label in BUCKET_LABELS]
    return names


_WIDTH = 5 + 2 * len(BUCKET_LABELS)  # values per prefix in an HMGET reply


def _num(raw: Any) -> float:
    return float(raw) if raw else 0.0


@dataclass
class Totals:
    """Counts, sums and histograms of one subject over one or more buckets."""

    processed: int = 0
    failed: int = 0
    runtime: float = 0.0  # seconds, over processed + failed runs
    max: float = 0.0  # seconds
    wait: float = 0.0  # seconds, over processed runs
    rt: list[int] = field(default_factory=lambda: [0] * len(BUCKET_LABELS))
    wt: list[int] = field(default_factory=lambda: [0] * len(BUCKET_LABELS))

    @classmethod
    def from_reply(cls, values: Sequence[Any]) -> Totals:
        """From the HMGET reply of :func:`fields` (missing fields are zero)."""
        n = len(BUCKET_LABELS)
        return cls(
            processed=int(_num(values[0])),
            failed=int(_num(values[1])),
            runtime=_num(values[2]),
            max=_num(values[3]),
            wait=_num(values[4]),
            rt=[int(_num(v)) for v in values[5 : 5 + n]],
            wt=[int(_num(v)) for v in values[5 + n : 5 + 2 * n]],
        )

    def add(self, other: Totals) -> None:
        self.processed += other.processed
        self.failed += other.failed
        self.runtime += other.runtime
        self.max = max(self.max, other.max)
        self.wait += other.wait
        self.rt = [a + b for a, b in zip(self.rt, other.rt, strict=True)]
        self.wt = [a + b for a, b in zip(self.wt, other.wt, strict=True)]

    @property
    def runs(self) -> int:
        return self.processed + self.failed

    @property
    def runtime_avg(self) -> float | None:
        return self.runtime / self.runs if self.runs else None

    @property
    def wait_avg(self) -> float | None:
        return self.wait / self.processed if self.processed else None

    def runtime_pct(self, q: float) -> float | None:
        return percentile(self.rt, q, self.max or None)

    def wait_pct(self, q: float) -> float | None:
        return percentile(self.wt, q)


def percentile(counts: Sequence[int], q: float, max_s: float | None = None) -> float | None:
    """The ``q`` quantile (0..1), in seconds, of a histogram over :data:`BOUNDS_MS`.

    ``counts[i]`` is the number of observations in bucket ``i`` (the last one is +Inf). The value
    is interpolated linearly between the bucket's bounds; in the +Inf bucket, and whenever it
    would exceed it, the recorded maximum ``max_s`` is the answer.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        if seen + count >= rank:
            lower = BOUNDS_MS[i - 1] / 1000.0 if i > 0 else 0.0
            # In the +Inf bucket the recorded maximum is the only upper bound known.
            inf = max(max_s or lower, lower)
            upper = BOUNDS_MS[i] / 1000.0 if i < len(BOUNDS_MS) else inf
            value = lower + (upper - lower) * max(rank - seen, 0) / count
            return min(value, max_s) if max_s else value
        seen += count
    return max_s


@dataclass(frozen=True)
class Window:
    """The buckets a ``--since`` window reads, oldest first; the last one is still filling."""

    since: str
    resolution: Resolution
    step: int  # seconds per bucket
    starts: tuple[int, ...]  # bucket start times (epoch seconds)
    now: float

    @property
    def start(self) -> int:
        return self.starts[0]

    @property
    def elapsed(self) -> float:
        """Seconds of the window that have passed (the last bucket only partly)."""
        return (len(self.starts) - 1) * self.step + self.last_elapsed

    @property
    def last_elapsed(self) -> float:
        return min(max(self.now - self.starts[-1], 1.0), float(self.step))

    def key(self, start: int) -> str:
        if self.resolution is Resolution.MINUTE:
            return keys.metrics_minute(start)
        return keys.metrics_hour(start)

    def seconds(self, index: int) -> float:
        """How long bucket ``index`` has been collecting."""
        return self.last_elapsed if index == len(self.starts) - 1 else float(self.step)


def window(settings: Settings, since: str, now: float | None = None) -> Window:
    """The buckets covering the last ``since`` (e.g. ``15m``, ``6h``, ``7d``)."""
    now = time.time() if now is None else now
    seconds = parse_duration(since, "--since").total_seconds()
    if seconds < 60:
        raise UsageError(f"--since: {since!r} is shorter than one minute (the finest bucket)")
    if seconds <= settings.metrics_minute_retention:
        resolution, step = Resolution.MINUTE, 60
    elif seconds <= settings.metrics_hour_retention:
        resolution, step = Resolution.HOUR, 3600
    else:
        raise UsageError(
            f"--since: {since!r} is longer than the metrics hour retention "
            f"({_human(settings.metrics_hour_retention)}, [metrics] hour_retention)"
        )
    count = math.ceil(seconds / step)
    last = int(now // step) * step
    starts = tuple(last - step * i for i in range(count - 1, -1, -1))
    return Window(since, resolution, step, starts, now)


def _human(seconds: int) -> str:
    delta = timedelta(seconds=seconds)
    if delta.days and not delta.seconds:
        return f"{delta.days}d"
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"


def queue_reads(pipe: Any, win: Window, prefixes: Sequence[str]) -> None:
    """Add one HMGET per bucket of the window to a pipeline (see :func:`parse_reads`)."""
    wanted = [f for p in prefixes for f in fields(p)]
    for start in win.starts:
        pipe.hmget(win.key(start), wanted)


def parse_reads(replies: Sequence[Any], prefixes: Sequence[str]) -> dict[str, list[Totals]]:
    """Each prefix's totals per bucket, from the replies of :func:`queue_reads`."""
    out: dict[str, list[Totals]] = {p: [] for p in prefixes}
    for reply in replies:
        for i, prefix in enumerate(prefixes):
            out[prefix].append(Totals.from_reply(reply[i * _WIDTH : (i + 1) * _WIDTH]))
    return out


def read(connection: redis.Redis, win: Window, prefixes: Sequence[str]) -> dict[str, list[Totals]]:
    """Each prefix's totals per bucket of the window, in one pipelined round trip."""
    if not prefixes:
        return {}
    pipe = connection.pipeline(transaction=False)
    queue_reads(pipe, win, prefixes)
    return parse_reads(pipe.execute(), prefixes)


# --------------------------------------------------------------------------------------------
# Summaries: what `acmeq metrics` shows


@dataclass(frozen=True)
class Point:
    """One bucket of a time series."""

    start: int
    processed: int
    failed: int
    throughput_per_min: float
    runtime_avg_s: float | None
    runtime_p95_s: float | None


@dataclass(frozen=True)
class Summary:
    """One queue's, one job function's or every queue's figures over a window."""

    subject: Subject
    name: str
    processed: int
    failed: int
    throughput_per_min: float
    runtime_avg_s: float | None
    runtime_p50_s: float | None
    runtime_p95_s: float | None
    runtime_max_s: float | None
    wait_avg_s: float | None
    wait_p95_s: float | None
    series: tuple[Point, ...]

    def as_dict(self, with_series: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "subject": self.subject.value,
            "name": self.name,
            "processed": self.processed,
            "failed": self.failed,
            "throughput_per_min": round(self.throughput_per_min, 3),
            "runtime_avg_s": _r(self.runtime_avg_s),
            "runtime_p50_s": _r(self.runtime_p50_s),
            "runtime_p95_s": _r(self.runtime_p95_s),
            "runtime_max_s": _r(self.runtime_max_s),
            "wait_avg_s": _r(self.wait_avg_s),
            "wait_p95_s": _r(self.wait_p95_s),
        }
        if with_series:
            data["series"] = [
                {
                    "start": p.start,
                    "processed": p.processed,
                    "failed": p.failed,
                    "throughput_per_min": round(p.throughput_per_min, 3),
                    "runtime_avg_s": _r(p.runtime_avg_s),
                    "runtime_p95_s": _r(p.runtime_p95_s),
                }
                for p in self.series
            ]
        return data


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def summarize(subject: Subject, name: str, buckets: Sequence[Totals], win: Window) -> Summary:
    """Fold one subject's buckets into its window figures and time series."""
    total = Totals()
    series = []
    for i, (start, t) in enumerate(zip(win.starts, buckets, strict=True)):
        total.add(t)
        series.append(
            Point(
                start=start,
                processed=t.processed,
                failed=t.failed,
                throughput_per_min=t.runs * 60.0 / win.seconds(i),
                runtime_avg_s=t.runtime_avg,
                runtime_p95_s=t.runtime_pct(0.95),
            )
        )
    per_job = subject is Subject.JOB
    return Summary(
        subject=subject,
        name=name,
        processed=total.processed,
        failed=total.failed,
        throughput_per_min=total.runs * 60.0 / win.elapsed,
        runtime_avg_s=total.runtime_avg,
        runtime_p50_s=total.runtime_pct(0.5),
        runtime_p95_s=total.runtime_pct(0.95),
        runtime_max_s=total.max if total.runs else None,
        wait_avg_s=total.wait_avg,
        wait_p95_s=None if per_job else total.wait_pct(0.95),
        series=tuple(series),
    )


@dataclass(frozen=True)
class Report:
    """`acmeq metrics`: a row per subject, and the subject the chart shows."""

    window: Window
    rows: tuple[Summary, ...]
    chart: Summary

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.window.since,
            "resolution": self.window.resolution.value,
            "step_s": self.window.step,
            "start": self.window.start,
            "end": round(self.window.now, 3),
            "rows": [r.as_dict(with_series=False) for r in self.rows],
            "chart": self.chart.as_dict(),
        }


def queue_names(settings: Settings) -> list[str]:
    """The catalog's queues, most important first (as :func:`acmeq.queues.catalog`, without
    importing RQ)."""
    specs = sorted(settings.queues.values(), key=lambda q: (-q.priority, q.name))
    return [q.name for q in specs]


def report(
    settings: Settings,
    connection: redis.Redis,
    since: str = "1h",
    queue: str | None = None,
    job: str | None = None,
    now: float | None = None,
) -> Report:
    """The figures of ``acmeq metrics``: every queue and their sum, or one queue, or one job."""
    if queue is not None and job is not None:
        raise UsageError("--queue and --job are exclusive: a job function runs on one queue")
    names = queue_names(settings)
    if queue is not None and queue not in settings.queues:
        raise UnknownQueueError(queue, names)
    if job is not None:
        # The registry imports the job modules (and RQ): only paid for when a job is named.
        from acmeq.queues import registry_for

        job = registry_for(settings).get(job).name
    win = window(settings, since, now)
    if job is not None:
        buckets = read(connection, win, [f"job:{job}"])[f"job:{job}"]
        row = summarize(Subject.JOB, job, buckets, win)
        return Report(win, (row,), row)
    if queue is not None:
        row = summarize(Subject.QUEUE, queue, read(connection, win, [queue])[queue], win)
        return Report(win, (row,), row)
    per_queue = read(connection, win, names)
    rows = [summarize(Subject.QUEUE, q, per_queue[q], win) for q in names]
    summed = [fold([per_queue[q][i] for q in names]) for i in range(len(win.starts))]
    everything = summarize(Subject.ALL, ALL, summed, win)
    return Report(win, (*rows, everything), everything)


def recent_window(now: float | None = None) -> Window:
    """The last five minute buckets, the current one included (`acmeq status`)."""
    now = time.time() if now is None else now
    last = int(now // 60) * 60
    return Window("5m", Resolution.MINUTE, 60, tuple(last - 60 * i for i in (4, 3, 2, 1, 0)), now)


def fold(buckets: Sequence[Totals]) -> Totals:
    """The sum of several buckets."""
    total = Totals()
    for b in buckets:
        total.add(b)
    return total
