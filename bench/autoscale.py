"""Autoscaling under a burst: `auto` (1-8 processes) against a fixed pool of 2.

A burst of 5,000 10-ms jobs lands on an idle pool; the script samples the pool's processes and the
backlog every 0.25 s until the queue has drained and the pool is back at its minimum, for each
variant in turn, on one private redis-server with real masters and worker processes. It prints
the drain time, the peak and the process-seconds spent, and a small chart per variant.

    .venv/bin/python bench/autoscale.py [--jobs 5000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _redis import private_redis  # noqa: E402

TOML = """
[profiles.bench-auto]
max_processes = 8
[profiles.bench-auto.supervisors.pool]
queues = ["reports"]
balance = "auto"
strategy = "time"
min_processes = 1
max_processes = 8
max_shift = 2
cooldown = 1.0
mode = "inline"

[profiles.bench-fixed.supervisors.pool]
queues = ["reports"]
balance = "off"
min_processes = 2
max_processes = 2
mode = "inline"
"""


def workers_of(master: psutil.Process) -> int:
    try:
        return len(master.children())
    except psutil.Error:
        return 0


def run_variant(
    profile: str, jobs: int, env: dict[str, str], client: redis.Redis, cwd: Path
) -> list[tuple[float, int, int]]:
    """Start a master, wait for its minimum pool, drop the burst, sample until settled."""
    from acmeq.config.settings import Settings
    from acmeq.queues import Enqueuer, JobCall

    client.flushdb()
    log = open(cwd / f"{profile}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "acmeq",
            "worker",
            "start",
            "--profile",
            profile,
            "--hostname",
            profile,
            "--log-level",
            "WARNING",
        ],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    master = psutil.Process(proc.pid)
    minimum = 1 if profile == "bench-auto" else 2
    deadline = time.monotonic() + 30
    while workers_of(master) < minimum and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # let the workers register and block on the queue
    settings = Settings.load(env=env)
    Enqueuer(settings, client).enqueue_many(JobCall("bench_sleep_10ms") for _ in range(jobs))
    start = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    drained_at = None
    while time.monotonic() - start < 300:
        ready = int(client.llen("rq:queue:reports"))
        running = int(client.zcard("rq:wip:reports"))
        count = workers_of(master)
        now = time.monotonic() - start
        samples.append((now, count, ready + running))
        if drained_at is None and ready + running == 0:
            drained_at = now
        if drained_at is not None and (count <= minimum or now - drained_at > 30):
            break
        time.sleep(0.25)
    proc.terminate()
    proc.wait(60)
    log.close()
    return samples


def chart(samples: list[tuple[float, int, int]], every: float = 1.0) -> str:
    rows, next_t = [], 0.0
    for i, (t, count, backlog) in enumerate(samples):
        if t + 1e-9 >= next_t or i == len(samples) - 1:
            rows.append(f"  {t:5.1f}s  {count:>2} {'█' * count:<8}  backlog {backlog:>5}")
            next_t = t + every
    return "\n".join(rows)


def summary(samples: list[tuple[float, int, int]]) -> tuple[float, int, float]:
    drain = next((t for t, _, backlog in samples if backlog == 0), float("nan"))
    peak = max(c for _, c, _ in samples)
    used = sum(a[1] * (b[0] - a[0]) for a, b in itertools.pairwise(samples) if a[0] < drain)
    return drain, peak, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    opts = parser.parse_args()
    with private_redis() as url, tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "acmeq.toml").write_text(TOML)
        env = dict(
            os.environ,
            REDIS_URL=url,
            ACMEQ_CONFIG=str(cwd / "acmeq.toml"),
            ACMEQ_JOB_MODULES="autoscale_jobs",
            ACMEQ_STATE_DIR=str(cwd / "state"),
            PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        )
        client = redis.Redis.from_url(url)
        results = {}
        for profile in ("bench-auto", "bench-fixed"):
            results[profile] = run_variant(profile, opts.jobs, env, client, cwd)
    print(f"burst of {opts.jobs:,} x 10-ms jobs on an idle pool (2 cores, private redis-server)")
    for profile, samples in results.items():
        drain, peak, used = summary(samples)
        label = "auto 1-8" if profile == "bench-auto" else "fixed 2"
        print(
            f"\n{label}: drained in {drain:.1f} s, peak {peak} processes, "
            f"{used:.0f} process-seconds while draining"
        )
        print(chart(samples))
    auto, fixed = summary(results["bench-auto"]), summary(results["bench-fixed"])
    print(
        f"\nauto vs fixed 2: drain time {auto[0]:.1f} s vs {fixed[0]:.1f} s "
        f"({fixed[0] / auto[0]:.2f}x faster); back at min after the burst: "
        f"{'yes' if results['bench-auto'][-1][1] <= 1 else 'no'}"
    )


if __name__ == "__main__":
    main()
