"""Prometheus text exposition (format 0.0.4) of acmeq's state, and a stdlib server for it.

:func:`exposition` builds the page; :func:`make_server` serves it on ``/metrics`` (``acmeq
metrics serve``); the webhook receiver mounts the same builder. What it exports:

- gauges from :func:`acmeq.observability.status.collect`: jobs per queue and state, the oldest
ready job's age,
  pauses, worker processes busy/total, masters, active alerts, Redis memory;
- counters ``acmeq_jobs_processed_total`` / ``acmeq_jobs_failed_total`` from the per-queue
  ``acmeq:stats:<queue>`` hashes, which workers increment for ever;
- histograms ``acmeq_job_runtime_seconds`` and ``acmeq_job_wait_seconds`` per queue.

Prometheus histograms must only grow, but the metric buckets of :mod:`acmeq.observability.metrics`
expire (that
is their trimming), so summing them would make counters fall whenever an old bucket goes. So a
scrape first *folds* every minute bucket that is complete (ended more than ``FOLD_GRACE_S`` ago,
by Redis' clock) into one hash that never expires, ``acmeq:metrics:cumulative``, and remembers up
to which minute it folded; the page shows that hash plus the minutes not folded yet. A minute is
folded exactly once (one Lua script, atomic, whichever exporter runs it), so every exporter of a
cluster shows the same, monotonic values. Counting starts at the first scrape: minutes before it
are not folded. A job whose worker's clock is behind Redis' by more than the grace is missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from acmeq.config.settings import Settings
from acmeq.constants import KEY_PREFIX
from acmeq.errors import AcmeqError, UsageError
from acmeq.observability.metrics import BOUNDS_MS, BUCKET_LABELS, MINUTE_KEY
from acmeq.observability.metrics_report import queue_names
from acmeq.observability.status import Snapshot, collect
from acmeq.storage.redis_client import text
from acmeq.worker.fastpath import STATS_KEY

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CUMULATIVE_KEY = KEY_PREFIX + "metrics:cumulative"
FOLD_GRACE_S = 120  # a minute bucket is folded once it ended this long ago (late writes, skew)
_MARK = "~folded"  # field of CUMULATIVE_KEY: the first minute not folded yet

# Folds complete minute buckets (queue fields only, not job:NAME ones; the maxima are not
# additive) into the cumulative hash, then returns it with the minutes not folded yet.
# ARGV: now ('' = Redis' clock), grace s, minute retention s.
_FOLD_LUA = r"""
local ckey = 'acmeq:metrics:cumulative'
local mprefix = '__MINUTE_PREFIX__'
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
""".replace("__MINUTE_PREFIX__", MINUTE_KEY.format(bucket=""))


def cumulative(
    settings: Settings, connection: redis.Redis, now: float | None = None
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Fold what is complete; return (histogram fields summed, per-queue stats counters)."""
    names = queue_names(settings)
    script = connection.register_script(_FOLD_LUA)
    pipe = connection.pipeline(transaction=False)
    script(
        args=["" if now is None else repr(now), FOLD_GRACE_S, settings.metrics_minute_retention],
        client=pipe,
    )
    for q in names:
        pipe.hmget(STATS_KEY.format(queue=q), ["processed", "failed"])
    replies = pipe.execute()
    fields: dict[str, float] = {}
    for flat in replies[0]:
        for i in range(0, len(flat), 2):
            name = text(flat[i])
            if name == _MARK or name.startswith("job:") or name.endswith("|max"):
                continue
            fields[name] = fields.get(name, 0.0) + float(flat[i + 1])
    stats = {
        q: {"processed": float(p or 0), "failed": float(f or 0)}
        for q, (p, f) in zip(names, replies[1:], strict=True)
    }
    return fields, stats


def exposition(settings: Settings, connection: redis.Redis, now: float | None = None) -> str:
    """The whole /metrics page."""
    started = time.perf_counter()
    snap = collect(settings, connection, now)
    fields, stats = cumulative(settings, connection, now)
    out = _Writer()
    _gauges(out, snap)
    out.family(
        "acmeq_jobs_processed_total",
        "counter",
        "Successful job runs, per queue, since the queue was first served.",
        [({"queue": q}, s["processed"]) for q, s in stats.items()],
    )
    out.family(
        "acmeq_jobs_failed_total",
        "counter",
        "Failed job runs (every failed attempt, retried or not), per queue.",
        [({"queue": q}, s["failed"]) for q, s in stats.items()],
    )
    names = list(stats)
    out.histogram(
        "acmeq_job_runtime_seconds",
        "Runtime of job runs, successful and failed, per queue (counted from the first scrape).",
        [(q, _buckets(fields, q, "rt"), fields.get(f"{q}|runtime", 0.0)) for q in names],
    )
    out.histogram(
        "acmeq_job_wait_seconds",
        "Time from enqueue to start of successful runs, per queue (from the first scrape).",
        [(q, _buckets(fields, q, "wt"), fields.get(f"{q}|wait", 0.0)) for q in names],
    )
    out.family(
        "acmeq_scrape_duration_seconds",
        "gauge",
        "How long building this page took.",
        [({}, time.perf_counter() - started)],
    )
    return out.text()


def _buckets(fields: dict[str, float], queue: str, kind: str) -> list[float]:
    return [fields.get(f"{queue}|{kind}|{label}", 0.0) for label in BUCKET_LABELS]


def _gauges(out: _Writer, snap: Snapshot) -> None:
    states = ("ready", "scheduled", "started", "deferred", "failed", "finished")
    out.family(
        "acmeq_queue_jobs",
        "gauge",
        "Jobs in a queue (ready) or in one of its registries, by state.",
        [({"queue": q.name, "state": s}, getattr(q, s)) for q in snap.queues for s in states],
    )
    out.family(
        "acmeq_queue_oldest_job_age_seconds",
        "gauge",
        "Age of the oldest ready job of a queue (0 when the queue is empty).",
        [({"queue": q.name}, q.oldest_age_s or 0.0) for q in snap.queues],
    )
    out.family(
        "acmeq_queue_wait_threshold_seconds",
        "gauge",
        "The queue's configured wait threshold, to compare the oldest age with.",
        [({"queue": q.name}, q.wait_threshold_s) for q in snap.queues],
    )
    out.family(
        "acmeq_queue_paused",
        "gauge",
        "1 when the queue is paused.",
        [({"queue": q.name}, int(q.paused)) for q in snap.queues],
    )
    out.family(
        "acmeq_queue_processes",
        "gauge",
        "Worker processes registered for a queue.",
        [({"queue": q.name}, q.processes_total) for q in snap.queues],
    )
    out.family(
        "acmeq_queue_processes_busy",
        "gauge",
        "Worker processes of a queue running a job.",
        [({"queue": q.name}, q.processes_busy) for q in snap.queues],
    )
    statuses: dict[str, int] = {"running": 0, "gone": 0}
    for m in snap.masters:
        statuses[m.status] = statuses.get(m.status, 0) + 1
    out.family(
        "acmeq_masters",
        "gauge",
        "Masters known to Redis, by status.",
        [({"status": s}, n) for s, n in sorted(statuses.items())],
    )
    severities: dict[str, int] = {"critical": 0, "warning": 0}
    for a in snap.alerts:
        severities[a.severity] = severities.get(a.severity, 0) + 1
    out.family(
        "acmeq_alerts_active",
        "gauge",
        "Active alerts, by severity.",
        [({"severity": s}, n) for s, n in sorted(severities.items())],
    )
    out.family(
        "acmeq_alert_active",
        "gauge",
        "1 per active alert, labelled with its id, rule, queue and severity.",
        [
            ({"id": a.id, "rule": a.rule, "queue": a.queue or "", "severity": a.severity}, 1)
            for a in snap.alerts
        ],
    )
    out.family(
        "acmeq_redis_used_memory_bytes",
        "gauge",
        "Memory used by Redis.",
        [({}, snap.redis.used_memory)],
    )
    out.family(
        "acmeq_redis_warnings",
        "gauge",
        "Redis configuration warnings (persistence off, evicting policy, memory near the limit).",
        [({}, len(snap.redis.warnings))],
    )


Labels = dict[str, str]


class _Writer:
    """Text format 0.0.4: HELP and TYPE once per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def histogram(
        self, name: str, help_text: str, rows: Sequence[tuple[str, list[float], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} histogram")
        bounds = [f"{b / 1000:g}" for b in BOUNDS_MS] + ["+Inf"]
        for queue, counts, total in rows:
            running = 0.0
            for le, n in zip(bounds, counts, strict=True):
                running += n  # Prometheus buckets are cumulative: le = "at most"
                self.lines.append(
                    f"{name}_bucket{_labels({'queue': queue, 'le': le})} {_value(running)}"
                )
            self.lines.append(f"{name}_sum{_labels({'queue': queue})} {_value(total)}")
            self.lines.append(f"{name}_count{_labels({'queue': queue})} {_value(running)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


# --------------------------------------------------------------------------------------------
# The stdlib server of `acmeq metrics serve`


def make_server(build: Callable[[], str], host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` with ``build()``; 503 when Redis fails."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "acmeq-metrics"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    self._send(200, build(), CONTENT_TYPE)
                except (redis.RedisError, AcmeqError, OSError) as exc:
                    # Prometheus records the failed scrape (up == 0) and shows this text.
                    self._send(503, f"acmeq: cannot read Redis: {exc}\n")
            elif path == "/":
                self._send(200, "acmeq Prometheus exporter: see /metrics\n")
            else:
                self._send(404, f"not found: {path}; see /metrics\n")

        def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
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
