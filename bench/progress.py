"""Progress tracking overhead: a loop calling ``advance(1)`` 1,000,000 times vs the same loop
without tracking.

Per item both loops do realistic work: build a donation as a dict and write it as a CSV row
(``progress_jobs.rows``, about 2-3 us), because a bare method call costs ~0.1 us and a loop doing
nothing else would only measure Python's call overhead. Two variants in one run, one private
redis-server and one SQLite file (migrated) shared by both:

- ``worker``: the job ``bench_progress_rows`` really runs in an acmeq worker process
  (``python -m acmeq.worker``, inline mode): tracked and untracked jobs alternate, each timing
  its own loop; the tracker writes the ``job_progress`` row and publishes on Redis as in
  production (at most ~2 flushes per second);
- ``in-process``: the same loops in this process, the tracker writing to the same SQLite file
  and Redis.

Each variant runs ``--rounds`` times (tracked and untracked alternating) and the best round counts
(the least disturbed by other load), measured in CPU time of the process (which includes the
tracker's ticker thread and its flushes) and in wall time. Target (issue #5): overhead <= 10 %.

    .venv/bin/python bench/progress.py [--items 1000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis import private_redis

BENCH = Path(__file__).resolve().parent

TARGET_PCT = 10.0


def in_process(items: int, rounds: int, client: redis.Redis) -> dict[str, Any]:
    from progress_jobs import rows

    from acmeq.config.settings import process_settings
    from acmeq.progress import channel, track
    from acmeq.storage.sql import engine_for

    engine = engine_for(process_settings())
    plain: list[dict[str, float]] = []
    tracked: list[dict[str, float]] = []
    flushes: list[int] = []
    rows(items // 10)  # warm-up
    for r in range(rounds):
        pubsub = client.pubsub()
        job_id = f"bench-in-process-{r}"
        pubsub.subscribe(channel(job_id))
        pubsub.get_message(timeout=1)
        with track(total=items, job_id=job_id, engine=engine, connection=client) as p:
            tracked.append(_timing(rows(items, p)))
        count = 0
        while pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
            count += 1
        pubsub.close()
        flushes.append(count)
        plain.append(_timing(rows(items)))
    return {"plain": plain, "tracked": tracked, "messages": flushes}


def in_worker(items: int, rounds: int, client: redis.Redis, env: dict[str, str]) -> dict[str, Any]:
    from acmeq.config.settings import Settings
    from acmeq.queues import AcmeqJob, Enqueuer
    from acmeq.worker.process import WorkerOptions

    enqueuer = Enqueuer(Settings.load(), client)
    opts = WorkerOptions(queue="bulk", mode="inline", name="bench", burst=True)
    calls = [("bench_progress_rows", items // 10, False)]  # warm-up
    for _ in range(rounds):
        calls += [("bench_progress_rows", items, True), ("bench_progress_rows", items, False)]
    jobs = [enqueuer.enqueue(name, n, tracked) for name, n, tracked in calls]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "acmeq.worker.process", opts.to_json()],
        env=env,
        capture_output=True,
        text=True,
        timeout=max(600, rounds * items / 10_000),
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker exited with {proc.returncode}:\n{proc.stderr}")
    wall = time.perf_counter() - started
    results = [AcmeqJob.fetch(j.id, connection=client).return_value() for j in jobs[1:]]
    tracked = results[0::2]
    plain = results[1::2]
    from acmeq.config.settings import process_settings
    from acmeq.storage.sql import engine_for
    from acmeq.tracking.store import get

    final = get(engine_for(process_settings()), jobs[1].id)
    assert final is not None and final.processed == items, final
    return {"plain": plain, "tracked": tracked, "wall": wall, "final": final.status.value}


def _timing(wall_cpu: tuple[float, float]) -> dict[str, float]:
    return {"wall": wall_cpu[0], "cpu": wall_cpu[1]}


def report(name: str, items: int, data: dict[str, Any]) -> float:
    """One table row; returns the CPU-time overhead in %."""
    cells = []
    overheads = {}
    for kind in ("cpu", "wall"):
        plain = min(r[kind] for r in data["plain"])
        tracked = min(r[kind] for r in data["tracked"])
        overheads[kind] = (tracked / plain - 1) * 100
        cells.append(f"{plain:.3f} / {tracked:.3f}")
    plain_cpu = min(r["cpu"] for r in data["plain"])
    tracked_cpu = min(r["cpu"] for r in data["tracked"])
    print(
        f"| {name} | {cells[0]} | {plain_cpu / items * 1e6:.2f} | "
        f"{(tracked_cpu - plain_cpu) / items * 1e9:.0f} | {overheads['cpu']:+.1f} % | "
        f"{cells[1]} | {overheads['wall']:+.1f} % |"
    )
    return overheads["cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    with private_redis() as url, tempfile.TemporaryDirectory() as state:
        env = dict(os.environ)
        for name in ("ACMEQ_CONFIG", "REDIS_HOST", "REDIS_PORT", "REDIS_QUEUE_DB"):
            env.pop(name, None)
        env |= {
            "REDIS_URL": url,
            "DATABASE_URL": f"sqlite:///{state}/bench.db",
            "ACMEQ_STATE_DIR": state,
            "ACMEQ_JOB_MODULES": "progress_jobs",
            "PYTHONPATH": os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH")) if p),
        }
        os.environ.update(env)
        from acmeq.config.settings import process_settings
        from acmeq.storage import sql as db

        db.upgrade(db.engine_for(process_settings()))
        client = redis.Redis.from_url(url)

        worker = in_worker(opts.items, opts.rounds, client, env)
        local = in_process(opts.items, opts.rounds, client)

        print(f"{opts.items:,} items, best of {opts.rounds} rounds (tracked/untracked alternating)")
        print()
        print(
            "| variant | CPU s untracked / tracked | work per item (us) | per advance (ns) "
            "| overhead (CPU) | wall s untracked / tracked | overhead (wall) |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        worst = max(
            report("acmeq worker process (inline)", opts.items, worker),
            report("in-process, same tracker, SQLite + Redis", opts.items, local),
        )
        print()
        print(
            "progress messages per tracked run (in-process): "
            + ", ".join(str(m) for m in local["messages"])
            + f" (runs of ~{min(r['wall'] for r in local['tracked']):.1f} s: start, <= 2/s, end)"
        )
        print(f"raw seconds: {json.dumps({'worker': worker, 'in_process': local})}")
        verdict = "met" if worst <= TARGET_PCT else "NOT met"
        print(f"target overhead <= {TARGET_PCT:g} % (CPU): {verdict} (worst {worst:+.1f} %)")


if __name__ == "__main__":
    main()
