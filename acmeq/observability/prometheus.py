"""Prometheus exposition of acmeq's state through ``prometheus_client``, and a server for it.

Two custom collectors feed one registry per exporter:

- :class:`QueueCollector` reads :func:`acmeq.observability.status.collect` (the queue probe plus
  masters, alerts and Redis) once per scrape: gauges of jobs per queue and state, the oldest
  ready job's age, pauses, worker processes busy/total, masters, active alerts, Redis memory; and
  the counters ``acmeq_jobs_processed_total`` / ``acmeq_jobs_failed_total`` from the probe's
  ``acmeq:stats:<queue>`` counters, which workers increment for ever;
- :class:`HistogramCollector` gives ``acmeq_job_runtime_seconds`` and ``acmeq_job_wait_seconds``
  per queue from the metric buckets.

:func:`exposition` renders the registry in the format the scraper asks for (``Accept``:
OpenMetrics or the text format, negotiated by ``prometheus_client``); :func:`make_server` serves
it on ``/metrics`` (``acmeq metrics serve``). This is the only module that imports
``prometheus_client``, and only the metrics commands import it, so other commands start fast.

Prometheus histograms must only grow, but the metric buckets of :mod:`acmeq.observability.metrics`
expire (that is their trimming), so summing them would make counters fall whenever an old bucket
goes. So a scrape first *folds* every minute bucket that is complete (ended more than
``FOLD_GRACE_S`` ago, by Redis' clock) into one hash that never expires,
``acmeq:metrics:cumulative``, and remembers up to which minute it folded; the page shows that
hash plus the minutes not folded yet. A minute is folded exactly once (one Lua script, atomic,
whichever exporter runs it), so every exporter of a cluster shows the same, monotonic values.
Counting starts at the first scrape: minutes before it are not folded. A job whose worker's clock
is behind Redis' by more than the grace is missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.errors import AcmeqError, UsageError
from acmeq.observability.metrics import BOUNDS_MS, BUCKET_LABELS
from acmeq.observability.metrics_report import queue_names
from acmeq.observability.status import Snapshot, collect
from acmeq.storage.redis_client import text

FOLD_GRACE_S = 120  # a minute bucket is folded once it ended this long ago (late writes, skew)
_MARK = "~folded"  # field of the cumulative hash: the first minute not folded yet

# Folds complete minute buckets (queue fields only, not job:NAME ones; the maxima are not
# additive) into the cumulative hash, then returns it with the minutes not folded yet.
# KEYS[1]: the cumulative hash. ARGV: now ('' = Redis' clock), grace s, minute retention s,
# the minute buckets' key prefix.
_FOLD_LUA = r"""
local ckey = KEYS[1]
local mprefix = ARGV[4]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local cutoff = math.floor((now - tonumber(ARGV[2])) / 60) * 60
local mark = tonumber(redis.call('HGET', ckey, '~folded') or '')
if not mark then
  redis.call('HSET', ckey, '~folded', cutoff)
  mark = cutoff
end
local m = math.max(mark, math.floor((now - tonumber(ARGV[3])) / 60) * 60)
while m < cutoff do
  local h = redis.call('HGETALL', mprefix .. m)
  for i = 1, #h, 2 do
    local f = h[i]
    if string.sub(f, 1, 4) ~= 'job:' then
      if string.sub(f, -8) == '|runtime' or string.sub(f, -5) == '|wait' then
        redis.call('HINCRBYFLOAT', ckey, f, h[i + 1])
      elseif string.sub(f, -4) ~= '|max' then
        redis.call('HINCRBY', ckey, f, h[i + 1])
      end
    end
  end
  m = m + 60
end
if cutoff > mark then
  redis.call('HSET', ckey, '~folded', cutoff)
  mark = cutoff
end
local out = {redis.call('HGETALL', ckey)}
for mm = mark, math.floor(now / 60) * 60, 60 do
  table.insert(out, redis.call('HGETALL', mprefix .. mm))
end
return out
"""


def cumulative(
    settings: Settings, connection: redis.Redis, now: float | None = None
) -> dict[str, float]:
    """Fold what is complete; return the histogram fields summed (one round trip)."""
    reply = connection.eval(
        _FOLD_LUA,
        1,
        keys.METRICS_CUMULATIVE,
        "" if now is None else repr(now),
        FOLD_GRACE_S,
        settings.metrics_minute_retention,
        keys.METRICS_MINUTE_PREFIX,
    )
    fields: dict[str, float] = {}
    for flat in reply:
        for i in range(0, len(flat), 2):
            name = text(flat[i])
            if name == _MARK or name.startswith("job:") or name.endswith("|max"):
                continue
            fields[name] = fields.get(name, 0.0) + float(flat[i + 1])
    return fields


# -- collectors -----------------------------------------------------------------------------------


class QueueCollector(Collector):
    """Gauges and counters from one `acmeq status` snapshot (the queue probe) per scrape."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection

    def collect(self) -> Iterator[Metric]:
        snap = collect(self.settings, self.connection)
        yield from _queue_gauges(snap)
        yield from _cluster_gauges(snap)
        yield from _counters(snap)


class HistogramCollector(Collector):
    """Runtime and wait histograms per queue, from the folded metric buckets."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.settings = settings
        self.connection = connection

    def collect(self) -> Iterator[Metric]:
        fields = cumulative(self.settings, self.connection)
        names = queue_names(self.settings)
        yield _histogram(
            "acmeq_job_runtime_seconds",
            "Runtime of job runs, successful and failed, per queue (counted from the first "
            "scrape).",
            fields,
            names,
            "rt",
            "runtime",
        )
        yield _histogram(
            "acmeq_job_wait_seconds",
            "Time from enqueue to start of successful runs, per queue (from the first scrape).",
            fields,
            names,
            "wt",
            "wait",
        )


class _Timed(Collector):
    """The other collectors, then how long they took (``acmeq_scrape_duration_seconds``)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        for collector in self.collectors:
            yield from collector.collect()
        yield GaugeMetricFamily(
            "acmeq_scrape_duration_seconds",
            "How long building this page took.",
            value=time.perf_counter() - started,
        )


def registry(settings: Settings, connection: redis.Redis) -> CollectorRegistry:
    """A registry holding acmeq's collectors only (no process or platform metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(
        _Timed([QueueCollector(settings, connection), HistogramCollector(settings, connection)])
    )
    return reg


def exposition(reg: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The /metrics page and its content type, in the format ``accept`` asks for."""
    encoder, content_type = choose_encoder(accept)
    return encoder(reg), content_type


# -- families -------------------------------------------------------------------------------------


def _gauge(
    name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _queue_gauges(snap: Snapshot) -> Iterator[Metric]:
    states = ("ready", "scheduled", "started", "deferred", "failed", "finished")
    yield _gauge(
        "acmeq_queue_jobs",
        "Jobs in a queue (ready) or in one of its registries, by state.",
        ["queue", "state"],
        (([q.name, s], getattr(q, s)) for q in snap.queues for s in states),
    )
    yield _gauge(
        "acmeq_queue_oldest_job_age_seconds",
        "Age of the oldest ready job of a queue (0 when the queue is empty).",
        ["queue"],
        (([q.name], q.oldest_age_s or 0.0) for q in snap.queues),
    )
    yield _gauge(
        "acmeq_queue_wait_threshold_seconds",
        "The queue's configured wait threshold, to compare the oldest age with.",
        ["queue"],
        (([q.name], q.wait_threshold_s) for q in snap.queues),
    )
    yield _gauge(
        "acmeq_queue_paused",
        "1 when the queue is paused (its own pause or RQ's suspension).",
        ["queue"],
        (([q.name], int(q.paused)) for q in snap.queues),
    )
    yield _gauge(
        "acmeq_queue_processes",
        "Worker processes registered for a queue.",
        ["queue"],
        (([q.name], q.processes_total) for q in snap.queues),
    )
    yield _gauge(
        "acmeq_queue_processes_busy",
        "Worker processes of a queue running a job.",
        ["queue"],
        (([q.name], q.processes_busy) for q in snap.queues),
    )


def _cluster_gauges(snap: Snapshot) -> Iterator[Metric]:
    statuses: dict[str, int] = {"running": 0, "gone": 0}
    for m in snap.masters:
        statuses[m.status] = statuses.get(m.status, 0) + 1
    yield _gauge(
        "acmeq_masters",
        "Masters known to Redis, by status.",
        ["status"],
        (([s], n) for s, n in sorted(statuses.items())),
    )
    severities: dict[str, int] = {"critical": 0, "warning": 0}
    for a in snap.alerts:
        severities[a.severity] = severities.get(a.severity, 0) + 1
    yield _gauge(
        "acmeq_alerts_active",
        "Active alerts that hold now, by severity.",
        ["severity"],
        (([s], n) for s, n in sorted(severities.items())),
    )
    yield _gauge(
        "acmeq_alert_active",
        "1 per active alert, labelled with its id, rule, queue and severity.",
        ["id", "rule", "queue", "severity"],
        (([a.id, a.rule, a.queue or "", a.severity], 1) for a in snap.alerts),
    )
    yield GaugeMetricFamily(
        "acmeq_redis_used_memory_bytes", "Memory used by Redis.", value=snap.redis.used_memory
    )
    yield GaugeMetricFamily(
        "acmeq_redis_warnings",
        "Redis configuration warnings (persistence off, evicting policy, memory near the limit).",
        value=len(snap.redis.warnings),
    )


def _counters(snap: Snapshot) -> Iterator[Metric]:
    loads = snap.probe.queues if snap.probe is not None else {}
    processed = CounterMetricFamily(
        "acmeq_jobs_processed",
        "Successful job runs, per queue, since the queue was first served.",
        labels=["queue"],
    )
    failed = CounterMetricFamily(
        "acmeq_jobs_failed",
        "Failed job runs (every failed attempt, retried or not), per queue.",
        labels=["queue"],
    )
    for q in snap.queues:
        load = loads.get(q.name)
        processed.add_metric([q.name], load.processed_total if load else 0)
        failed.add_metric([q.name], load.failed_total if load else 0)
    yield processed
    yield failed


def _histogram(
    name: str, doc: str, fields: dict[str, float], names: list[str], kind: str, total: str
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["queue"])
    bounds = [f"{b / 1000:g}" for b in BOUNDS_MS] + ["+Inf"]
    for queue in names:
        running = 0.0
        buckets = []
        for le, label in zip(bounds, BUCKET_LABELS, strict=True):
            running += fields.get(f"{queue}|{kind}|{label}", 0.0)  # cumulative: le = at most
            buckets.append((le, running))
        family.add_metric([queue], buckets, fields.get(f"{queue}|{total}", 0.0))
    return family


# -- the server of `acmeq metrics serve` ----------------------------------------------------------


def make_server(
    build: Callable[[str], tuple[bytes, str]], host: str, port: int
) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` with ``build(accept)``; 503 when Redis fails."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "acmeq-metrics"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body, content_type = build(self.headers.get("Accept", ""))
                except (redis.RedisError, AcmeqError, OSError) as exc:
                    # Prometheus records the failed scrape (up == 0) and shows this text.
                    self._send(503, f"acmeq: cannot read Redis: {exc}\n".encode())
                    return
                self._send(200, body, content_type)
            elif path == "/":
                self._send(200, b"acmeq Prometheus exporter: see /metrics\n")
            else:
                self._send(404, f"not found: {path}; see /metrics\n".encode())

        def _send(self, status: int, data: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # A scrape every 15 s would flood the terminal; errors still reach the client.
            return

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"cannot listen on {host}:{port}: {reason}") from None
    server.daemon_threads = True
    return server
