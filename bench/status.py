"""`acmeq status` at scale: 1,000,000 ready jobs, 100,000 failed jobs, 50 workers, vs `rq info`.

One private redis-server is filled with:

- 1,000,000 ready jobs spread over the six queues. One job per queue is enqueued with
  ``Enqueuer.enqueue_many``; its hash is then copied under new ids with pipelined ``HSET`` +
  ``RPUSH`` (10,000 jobs per round trip): the same bytes per job as ``enqueue_many`` writes, at
  ~31,000 jobs/s instead of ~19,000. The oldest job of each queue is made a few minutes old.
- 100,000 failed jobs: the same hashes with ``status=failed`` and ``ended_at``, in RQ's failed
  registries (``rq:failed:<queue>``, scored with the failure TTL as RQ does). RQ would also write
  a result stream entry per failure; neither command reads it, so it is left out.
- 50 RQ workers registered by RQ's own ``Worker.register_birth`` (half of them busy), and one
  master snapshot naming them, published with ``acmeq.master.control.publish``.
- five minute buckets of metrics for every queue and 20 job functions, and two active alerts.

Then ``acmeq status``, ``acmeq status --json`` and ``rq info`` run as subprocesses (Python start-up
included), best of ``--rounds``; target: both acmeq commands < 0.5 s.

    .venv/bin/python bench/status.py [--ready 1000000] [--failed 100000] [--workers 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _redis import private_redis

CHUNK = 10_000
JSON_SERIALIZER = "rq.serializers.JSONSerializer"
SHARE = {  # fraction of the ready jobs per queue
    "bulk": 0.5,
    "notifications": 0.25,
    "payments": 0.1,
    "exports": 0.05,
    "reports": 0.05,
    "maintenance": 0.05,
}


def fill_jobs(client: redis.Redis, ready: int, failed: int) -> None:
    from acmeq.config.settings import Settings
    from acmeq.queues import Enqueuer, JobCall

    settings = Settings.load()
    enqueuer = Enqueuer(settings, client)
    now = time.time()
    for queue, share in SHARE.items():
        # maintenance's `ping` job fits every queue: the hash is what matters, not the function
        [seed] = enqueuer.enqueue_many([JobCall("ping", ("bench",))])
        template = client.hgetall(f"rq:job:{seed}")
        client.delete(f"rq:job:{seed}")
        client.lrem("rq:queue:maintenance", 0, seed)
        template[b"origin"] = queue.encode()
        old = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now - 240))
        _copies(client, f"rq:queue:{queue}", dict(template, enqueued_at=old), 1, list_=True)
        _copies(client, f"rq:queue:{queue}", template, int(ready * share) - 1, list_=True)
        failed_hash = dict(template, status=b"failed", ended_at=template[b"enqueued_at"])
        ttl_score = now + settings.queues[queue].failure_ttl
        _copies(client, f"rq:failed:{queue}", failed_hash, int(failed * share), score=ttl_score)
        client.sadd("rq:queues", f"rq:queue:{queue}")


def _copies(
    client: redis.Redis,
    key: str,
    mapping: dict[bytes, bytes] | dict[str, bytes],
    n: int,
    list_: bool = False,
    score: float = 0.0,
) -> None:
    for start in range(0, n, CHUNK):
        ids = [str(uuid.uuid4()) for _ in range(min(CHUNK, n - start))]
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hset(f"rq:job:{job_id}", mapping=mapping)  # type: ignore[arg-type]
        if list_:
            pipe.rpush(key, *ids)
        else:
            pipe.zadd(key, dict.fromkeys(ids, score))
        pipe.execute()


def fill_workers(client: redis.Redis, workers: int) -> list[tuple[str, str]]:
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    queues = list(SHARE)
    out = []
    for i in range(workers):
        queue = queues[i % len(queues)]
        worker = Worker(
            [Queue(queue, connection=client, serializer=JSONSerializer)],
            name=f"bench-host.{10000 + i}",
            connection=client,
            serializer=JSONSerializer,
        )
        worker.register_birth()
        worker.set_state("busy" if i % 2 else "idle")
        out.append((worker.name, queue))
    return out


def publish_master(client: redis.Redis, workers: list[tuple[str, str]]) -> None:
    from acmeq.master import control

    groups = {"supervisor-1": ["payments", "notifications"]}
    groups["supervisor-2"] = ["exports", "reports", "bulk", "maintenance"]
    now = time.time()
    supervisors = []
    for sup, queues in groups.items():
        pools = []
        for q in queues:
            procs = [
                {"name": name, "pid": int(name.rsplit(".", 1)[1]), "started_at": now - 600}
                for name, wq in workers
                if wq == q
            ]
            pools.append({"queue": q, "desired": len(procs), "halted": None, "processes": procs})
        supervisors.append({"name": sup, "queues": queues, "pools": pools})
    snapshot = {
        "name": "bench-host",
        "hostname": "bench-host",
        "pid": 4242,
        "profile": "production",
        "status": "running",
        "started_at": now - 600,
        "supervisors": supervisors,
    }
    control.publish(client, "bench-host", 4242, "bench-host", snapshot)


def fill_metrics(client: redis.Redis) -> None:
    from acmeq import keys
    from acmeq.observability.metrics import BUCKET_LABELS

    now = int(time.time() // 60) * 60
    pipe = client.pipeline(transaction=False)
    for m in range(5):
        key = keys.metrics_minute(now - 60 * m)
        fields: dict[str, float] = {}
        prefixes = list(SHARE) + [f"job:job_{j}" for j in range(20)]
        for p in prefixes:
            fields.update({f"{p}|processed": 600, f"{p}|failed": 3, f"{p}|runtime": 72.0})
            fields.update({f"{p}|max": 2.4, f"{p}|wait": 300.0})
            for i, label in enumerate(BUCKET_LABELS[:12]):
                fields[f"{p}|rt|{label}"] = 50 * (i % 4 + 1)
                fields[f"{p}|wt|{label}"] = 40
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, 86400 + 60)
    pipe.execute()


def fill_alerts(client: redis.Redis) -> None:
    alerts = {
        "wait:bulk": {
            "rule": "wait",
            "queue": "bulk",
            "message": "oldest job has waited 240 s (threshold 1800 s)",
            "since": time.time() - 120,
            "severity": "warning",
        },
        "failed:payments": {
            "rule": "failed",
            "queue": "payments",
            "message": "12 jobs failed permanently",
            "since": time.time() - 60,
            "severity": "critical",
        },
    }
    client.hset("acmeq:alerts:active", mapping={k: json.dumps(v) for k, v in alerts.items()})


# The work of `acmeq status` (settings, connect, collect, render) without the Typer app: what the
# command costs apart from the CLI's own start-up (every command group imported, Typer's
# parameter coercion through pydantic).
LEAN = """
from acmeq.config.settings import Settings
from acmeq.storage.redis_client import connect_checked
from acmeq.observability.status import collect
from acmeq.commands.status import render
from acmeq.commands.common import console
s = Settings.load()
console.print(render(collect(s, connect_checked(s)), console.width))
"""


def best_of(rounds: int, argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    best = float("inf")
    out = ""
    for _ in range(rounds):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        best = min(best, elapsed)
        out = done.stdout
    return best, out


def _collect_time(url: str, rounds: int) -> float:
    """The data part alone: status.collect() in this process, best of ``rounds``."""
    from acmeq.config.settings import Settings
    from acmeq.observability.status import collect
    from acmeq.storage.redis_client import connect_checked

    settings = Settings.load()
    client = connect_checked(settings)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        collect(settings, client)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready", type=int, default=1_000_000)
    parser.add_argument("--failed", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()

    with private_redis() as url:
        os.environ["REDIS_URL"] = url
        client = redis.Redis.from_url(url)
        started = time.perf_counter()
        fill_jobs(client, opts.ready, opts.failed)
        workers = fill_workers(client, opts.workers)
        publish_master(client, workers)
        fill_metrics(client)
        fill_alerts(client)
        info = client.info("memory")
        print(
            f"filled in {time.perf_counter() - started:.1f} s: {client.dbsize():,} keys, "
            f"{info['used_memory_human']} used"
        )
        env = dict(os.environ, COLUMNS="80", NO_COLOR="1")
        py = sys.executable
        rows = [
            ("acmeq status", [py, "-m", "acmeq", "status"]),
            ("acmeq status --json", [py, "-m", "acmeq", "status", "--json"]),
            (
                "rq info",
                [py, "-m", "rq.cli", "info", "--url", url, "--serializer", JSON_SERIALIZER],
            ),
            ("acmeq queue list (CLI baseline)", [py, "-m", "acmeq", "queue", "list"]),
            ("status without the Typer CLI", [py, "-c", LEAN]),
            ("python -c pass (start-up floor)", [py, "-c", "pass"]),
        ]
        results = {}
        for label, argv in rows:
            seconds, out = best_of(opts.rounds, argv, env)
            results[label] = seconds
            if label == "acmeq status --json":
                data = json.loads(out)
                ready = sum(q["ready"] for q in data["queues"])
                failed = sum(q["failed"] for q in data["queues"])
                busy = sum(q["processes_busy"] for q in data["queues"])
                total = sum(q["processes_total"] for q in data["queues"])
                print(f"status --json saw {ready:,} ready, {failed:,} failed, {busy}/{total} busy")
            if label == "acmeq status":
                print(out)
        collect_s = _collect_time(url, opts.rounds)
        rq = results["rq info"]
        # Timings on a shared machine move with its load: say what it was.
        print("load average (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"{'command':<34} {'best of ' + str(opts.rounds):>10} {'vs rq info':>11}")
        for label, seconds in results.items():
            print(f"{label:<34} {seconds:>9.3f}s {seconds / rq:>10.2f}x")
        print(f"{'status.collect() in-process':<34} {collect_s:>9.3f}s {collect_s / rq:>10.2f}x")
        for label in ("acmeq status", "acmeq status --json"):
            verdict = "met" if results[label] < 0.5 else "MISSED"
            print(f"target {label} < 0.5 s: {verdict}")


if __name__ == "__main__":
    main()
