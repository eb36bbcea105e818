"""Enqueue throughput: bare RQ `Queue.enqueue` vs acmeq `enqueue` vs acmeq `enqueue_many`.

One private redis-server, one run, the same job function and arguments for all three. Each
variant runs `--rounds` times on an emptied database and the best round counts (the least
disturbed by the other core's load). Targets (issue #2): enqueue >= 0.9x bare RQ,
enqueue_many >= 5x bare RQ.

    .venv/bin/python bench/enqueue.py [--jobs 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis import private_redis


def best_rate(jobs: int, rounds: int, client: redis.Redis, run: Callable[[], None]) -> float:
    best = 0.0
    for _ in range(rounds):
        client.flushdb()
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        best = max(best, jobs / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()

    with private_redis() as url:
        os.environ["REDIS_URL"] = url
        from acmeq.config.settings import Settings
        from acmeq.jobs.maintenance import ping
        from acmeq.queues import Enqueuer, JobCall

        client = redis.Redis.from_url(url)
        settings = Settings.load()
        enqueuer = Enqueuer(settings, client)
        bare_queue = Queue("maintenance", connection=client)  # RQ defaults: pickle, 180 s

        def bare() -> None:
            for i in range(opts.jobs):
                bare_queue.enqueue(ping, f"job-{i}")

        def single() -> None:
            for i in range(opts.jobs):
                enqueuer.enqueue("ping", f"job-{i}")

        def many() -> None:
            enqueuer.enqueue_many(JobCall("ping", (f"job-{i}",)) for i in range(opts.jobs))

        rates = {
            "bare RQ Queue.enqueue": best_rate(opts.jobs, opts.rounds, client, bare),
            "acmeq enqueue": best_rate(opts.jobs, opts.rounds, client, single),
            "acmeq enqueue_many": best_rate(opts.jobs, opts.rounds, client, many),
        }
        client.flushdb()

    base = rates["bare RQ Queue.enqueue"]
    print(f"{opts.jobs:,} jobs per round, best of {opts.rounds} rounds, private redis-server")
    print(f"{'variant':<24} {'jobs/s':>10} {'vs bare RQ':>11}")
    for name, rate in rates.items():
        print(f"{name:<24} {rate:>10,.0f} {rate / base:>10.2f}x")
    ok_single = rates["acmeq enqueue"] / base >= 0.9
    ok_many = rates["acmeq enqueue_many"] / base >= 5.0
    print(
        f"targets: enqueue >= 0.9x {'met' if ok_single else 'MISSED'}; "
        f"enqueue_many >= 5x {'met' if ok_many else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
