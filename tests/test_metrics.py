"""Metrics, read side: percentiles, windows, `acmeq metrics` and the Prometheus endpoint.

Pure arithmetic (percentiles from histograms, window choice) gets fast unit tests; aggregation
is checked on metric hashes written at known times; the command and the endpoint are checked on
metrics that real worker processes recorded for real jobs (tests/sample_jobs.py), over a real
HTTP request parsed with Prometheus' own parser.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from test_status import run_burst_workers, worker_env

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.observability import metrics_report as metrics_read
from acmeq.observability import prometheus
from acmeq.observability.metrics import BUCKET_LABELS
from acmeq.queues import Enqueuer, JobCall

from conftest import free_port, run_cli

NOW = 1_800_000_000.0 + 30  # 30 s into a minute


def _hist(**counts: int) -> list[int]:
    """A histogram over BUCKET_LABELS from {label: count} (labels as strings, 'inf' for +Inf)."""
    return [counts.get(f"b{label}", 0) for label in BUCKET_LABELS]


# -- 1. percentiles from histogram buckets --------------------------------------------------------


def test_a_percentile_is_interpolated_inside_its_bucket() -> None:
    # Given 100 runs, all between 5 and 10 ms
    hist = _hist(b10=100)
    # Then the median is half-way through the bucket and p95 near its top
    assert metrics_read.percentile(hist, 0.5) == pytest.approx(0.0075)
    assert metrics_read.percentile(hist, 0.95) == pytest.approx(0.00975)


def test_a_percentile_picks_the_bucket_that_holds_its_rank() -> None:
    # Given 90 fast runs (<= 1 ms) and 10 slow ones (1-2.5 s)
    hist = _hist(b1=90, b2500=10)
    # Then p50 is fast and p95 lies half-way through the slow bucket
    assert metrics_read.percentile(hist, 0.5) == pytest.approx(0.5 / 0.9 * 0.001)
    assert metrics_read.percentile(hist, 0.95) == pytest.approx(1.0 + 1.5 * 0.5)


def test_a_percentile_never_exceeds_the_recorded_maximum() -> None:
    hist = _hist(b2500=10)
    assert metrics_read.percentile(hist, 0.99, max_s=1.2) == pytest.approx(1.2)
    # and in the +Inf bucket the maximum is the only upper bound known
    assert metrics_read.percentile(_hist(binf=4), 0.5, max_s=7200.0) == pytest.approx(5400.0)


def test_an_empty_histogram_has_no_percentile() -> None:
    assert metrics_read.percentile(_hist(), 0.95) is None


# -- 2. windows -----------------------------------------------------------------------------------


def test_windows_use_minutes_within_the_minute_retention_and_hours_beyond() -> None:
    settings = Settings.load()
    w = metrics_read.window(settings, "15m", NOW)
    assert (w.resolution, len(w.starts), w.starts[-1]) == ("minute", 15, int(NOW // 60) * 60)
    assert w.elapsed == pytest.approx(14 * 60 + 30)
    assert len(metrics_read.window(settings, "1d", NOW).starts) == 1440
    w = metrics_read.window(settings, "7d", NOW)
    assert (w.resolution, len(w.starts)) == ("hour", 168)


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("abc", "invalid duration 'abc'"),
        ("30s", "shorter than one minute"),
        ("31d", "longer than the metrics hour retention (30d"),
    ],
)
def test_a_bad_window_is_a_usage_error_naming_the_value(since: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        metrics_read.window(Settings.load(), since, NOW)


# -- 3. aggregation over known buckets ------------------------------------------------------------


def _write_minute(client: redis.Redis, start: float, prefix: str, runs: int, ms: int) -> None:
    """``runs`` successes of ``ms`` milliseconds each, waited 2 s, in the minute at ``start``."""
    key = keys.metrics_minute(int(start // 60) * 60)
    label = str(ms)  # an upper bound of BOUNDS_MS: the run's histogram bucket
    assert label in BUCKET_LABELS
    client.hset(
        key,
        mapping={
            f"{prefix}|processed": runs,
            f"{prefix}|runtime": runs * ms / 1000,
            f"{prefix}|max": ms / 1000,
            f"{prefix}|wait": runs * 2.0,
            f"{prefix}|rt|{label}": runs,
            f"{prefix}|wt|2500": runs,
        },
    )


def test_a_report_sums_the_buckets_of_its_window(redis_client: redis.Redis) -> None:
    # Given payments ran 10 jobs of <= 100 ms in each of the last 30 minutes, and 5 jobs of
    # <= 1 s three hours ago
    for m in range(30):
        _write_minute(redis_client, NOW - 60 * m, "payments", 10, 100)
    hour = keys.metrics_hour(int((NOW - 3 * 3600) // 3600) * 3600)
    redis_client.hset(hour, mapping={"payments|processed": 5, "payments|rt|1000": 5})
    settings = Settings.load()

    # When the last 15 minutes are read
    report = metrics_read.report(settings, redis_client, "15m", queue="payments", now=NOW)

    # Then 15 buckets count, with their throughput over the 14.5 minutes elapsed
    row = report.rows[0]
    assert (row.processed, row.failed) == (150, 0)
    assert row.throughput_per_min == pytest.approx(150 / 14.5)
    assert row.runtime_avg_s == pytest.approx(0.1)
    assert row.runtime_max_s == pytest.approx(0.1)
    assert 0.05 < (row.runtime_p50_s or 0) <= 0.1
    assert row.wait_avg_s == pytest.approx(2.0)
    assert 1.0 < (row.wait_p95_s or 0) <= 2.5
    assert [p.processed for p in report.chart.series] == [10] * 15
    # and the whole hour has 30 minutes of runs
    hour_row = metrics_read.report(settings, redis_client, "1h", now=NOW).rows[0]
    assert hour_row.processed == 300
    # and two days come from the hour buckets
    days = metrics_read.report(settings, redis_client, "2d", queue="payments", now=NOW)
    assert days.window.resolution == "hour"
    assert days.rows[0].processed == 5


def test_the_all_row_merges_every_queue(redis_client: redis.Redis) -> None:
    _write_minute(redis_client, NOW, "payments", 10, 10)
    _write_minute(redis_client, NOW - 60, "reports", 30, 1000)
    report = metrics_read.report(Settings.load(), redis_client, "15m", now=NOW)
    everything = report.rows[-1]
    assert (everything.name, everything.processed) == ("(all)", 40)
    assert report.chart is everything
    # 10 fast and 30 slow runs: the median is a slow one
    assert (everything.runtime_p50_s or 0) > 0.5


# -- 4. `acmeq metrics` on what real workers recorded ---------------------------------------------


@pytest.fixture
def worked(redis_client: redis.Redis, job_modules: str, tmp_path: Path) -> Enqueuer:
    """Real runs: 20 fast and 5 slow reports, and 3 bulk jobs that raise (1 try: failed)."""
    enqueuer = Enqueuer(Settings.load(), redis_client)
    enqueuer.enqueue_many([JobCall("sleep_for", (0.03,)) for _ in range(20)])
    enqueuer.enqueue_many([JobCall("sleep_for", (0.2,)) for _ in range(5)])
    enqueuer.enqueue_many([JobCall("explode", ("on purpose",)) for _ in range(3)])
    run_burst_workers(["reports", "bulk"], tmp_path)
    return enqueuer


def test_metrics_json_reports_what_the_workers_ran(worked: Enqueuer) -> None:
    result = run_cli("metrics", "--queue", "reports", "--since", "15m", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    row = data["rows"][0]
    assert (row["name"], row["processed"], row["failed"]) == ("reports", 25, 0)
    # 20 runs of ~30 ms and 5 of ~200 ms
    assert 0.025 <= row["runtime_p50_s"] <= 0.05
    assert 0.1 <= row["runtime_p95_s"] <= row["runtime_max_s"]
    assert 0.2 <= row["runtime_max_s"] < 1.0
    assert row["wait_avg_s"] is not None
    assert sum(p["processed"] for p in data["chart"]["series"]) == 25
    assert (data["resolution"], len(data["chart"]["series"])) == ("minute", 15)

    failed = json.loads(run_cli("metrics", "--job", "explode", "--json").stdout)["rows"][0]
    assert (failed["subject"], failed["processed"], failed["failed"]) == ("job", 0, 3)


def test_metrics_shows_a_table_and_charts(worked: Enqueuer) -> None:
    result = run_cli("metrics", "--since", "15m", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), result.stdout
    reports = next(line for line in lines if line.startswith("reports "))
    assert reports.split()[1:3] == ["25", "0"]
    assert "(all): runs per minute" in result.stdout
    assert "(all): average runtime" in result.stdout
    assert any(ch in result.stdout for ch in "▁▂▃▄▅▆▇█")


def test_unknown_names_exit_2_with_the_valid_ones(redis_url: str, job_modules: str) -> None:
    result = run_cli("metrics", "--queue", "nope")
    assert result.returncode == 2
    assert "unknown queue 'nope'" in result.stderr and "payments" in result.stderr
    result = run_cli("metrics", "--job", "nope")
    assert result.returncode == 2
    assert "unknown job 'nope'" in result.stderr and "sleep_for" in result.stderr
    result = run_cli("metrics", "--since", "forever")
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "'forever'" in result.stderr
    result = run_cli("metrics", "--queue", "reports", "--job", "noop")
    assert result.returncode == 2


# -- 5. Prometheus --------------------------------------------------------------------------------


@pytest.fixture
def exporter(redis_url: str) -> Iterator[str]:
    """`acmeq metrics serve` on a free port, as a real process; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "acmeq", "metrics", "serve", "--port", str(port)],
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"exporter did not start: {proc.communicate()}") from None
            time.sleep(0.1)
    yield base
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    else:
        raise AssertionError(f"exporter died: {proc.communicate()}")


def _scrape(base: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_prometheus_endpoint_exposes_depths_counters_and_histograms(
    worked: Enqueuer, exporter: str, redis_client: redis.Redis
) -> None:
    # Given two jobs waiting on a paused queue, the oldest for 10 minutes, and an active alert
    redis_client.set("acmeq:paused:queue:exports", "1")
    worked.enqueue_many([JobCall("fail") for _ in range(2)])
    head = redis_client.lindex(keys.queue("exports"), 0)
    old = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 600))
    redis_client.hset(keys.job(head.decode()), "enqueued_at", old)  # type: ignore[union-attr]
    alert = {"rule": "wait", "queue": "exports", "message": "m", "since": 1, "severity": "warning"}
    redis_client.hset("acmeq:alerts:active", "wait:exports", json.dumps(alert))

    # When Prometheus scrapes
    s = _scrape(exporter)

    # Then depths, pauses and counters are there
    assert s["acmeq_queue_jobs"][(("queue", "bulk"), ("state", "failed"))] == 3
    assert s["acmeq_queue_jobs"][(("queue", "exports"), ("state", "ready"))] == 2
    assert s["acmeq_queue_paused"][(("queue", "exports"),)] == 1
    assert s["acmeq_queue_oldest_job_age_seconds"][(("queue", "exports"),)] >= 600
    assert s["acmeq_jobs_processed_total"][(("queue", "reports"),)] == 25
    assert s["acmeq_jobs_failed_total"][(("queue", "bulk"),)] == 3
    assert s["acmeq_alerts_active"][(("severity", "critical"),)] == 0
    assert s["acmeq_alerts_active"][(("severity", "warning"),)] == 1
    labels = (("id", "wait:exports"), ("queue", "exports"), ("rule", "wait"))
    assert s["acmeq_alert_active"][(*labels, ("severity", "warning"))] == 1
    # and the runtime histogram is cumulative, ending in _count at +Inf
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for labels, v in s["acmeq_job_runtime_seconds_bucket"].items()
        if dict(labels)["queue"] == "reports"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == (float("inf"), 25)
    assert s["acmeq_job_runtime_seconds_count"][(("queue", "reports"),)] == 25
    le_50ms = dict(buckets)[0.05]
    # the 20 fast runs (a loaded machine may push one past 50 ms), never the 5 slow ones
    assert 15 <= le_50ms <= 20
    assert 1.0 < s["acmeq_job_runtime_seconds_sum"][(("queue", "reports"),)] < 5.0
    assert s["acmeq_job_runtime_seconds_count"][(("queue", "bulk"),)] == 3
    assert s["acmeq_job_wait_seconds_count"][(("queue", "reports"),)] == 25

    # and another scrape gives the same counts (nothing ran meanwhile)
    again = _scrape(exporter)
    assert again["acmeq_job_runtime_seconds_count"] == s["acmeq_job_runtime_seconds_count"]
    # and a scraper asking for OpenMetrics gets it, with the same counters
    request = urllib.request.Request(
        exporter + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        body = response.read().decode()
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(body)}
    assert families["acmeq_jobs_processed"].type == "counter"
    [reports] = [
        x for x in families["acmeq_jobs_processed"].samples if x.labels["queue"] == "reports"
    ]
    assert (reports.name, reports.value) == ("acmeq_jobs_processed_total", 25)
    # and other paths are 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(exporter + "/nope", timeout=5)
    assert err.value.code == 404


def test_histograms_stay_monotonic_while_minute_buckets_are_folded_and_expire(
    redis_client: redis.Redis,
) -> None:
    settings = Settings.load()
    # Given 10 runs 10 minutes before the first scrape and 4 in its current minute
    _write_minute(redis_client, NOW - 600, "payments", 10, 10)
    _write_minute(redis_client, NOW, "payments", 4, 10)

    def count(now: float) -> float:
        fields = prometheus.cumulative(settings, redis_client, now)
        return sum(v for k, v in fields.items() if k.startswith("payments|rt|"))

    # When scraped for the first time: counting starts there (the old minute is not counted)
    assert count(NOW) == 4
    # When 5 minutes later 6 more ran: the first minute is folded, the total grows by 6
    _write_minute(redis_client, NOW + 300, "payments", 6, 10)
    assert count(NOW + 300) == 10
    assert redis_client.hget(keys.METRICS_CUMULATIVE, "payments|rt|10") == b"4"
    # When, once folded, the minute buckets expire, the folded counts stay
    assert count(NOW + 600) == 10
    for key in redis_client.scan_iter("acmeq:metrics:m:*"):
        redis_client.delete(key)
    assert count(NOW + 900) == 10


def test_the_metrics_snapshot_job_keeps_counting_when_nothing_scrapes(
    redis_client: redis.Redis, job_modules: str, tmp_path: Path
) -> None:
    # Given the scheduled job ran once (counting starts there) and 7 runs finished a minute later
    now = time.time()
    enqueuer = Enqueuer(Settings.load(), redis_client)
    first = enqueuer.enqueue("metrics_snapshot", now)
    _write_minute(redis_client, now + 60, "payments", 7, 10)
    # When it runs again 400 s later on a real maintenance worker, with no scrape in between
    second = enqueuer.enqueue("metrics_snapshot", now + 400)
    run_burst_workers(["maintenance"], tmp_path)
    # Then the finished minute is folded into the cumulative counters /metrics serves
    assert first.latest_result().return_value == {}
    assert second.latest_result().return_value == {"payments": 7}
    assert redis_client.hget(keys.METRICS_CUMULATIVE, "payments|rt|10") == b"7"


def test_a_busy_port_is_a_one_line_usage_error(redis_url: str) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("metrics", "serve", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.startswith(f"acmeq: error: cannot listen on 127.0.0.1:{port}")
