"""Cleanup at scale: `acmeq cleanup`'s batched deletes vs a naive single DELETE, same run.

Two workloads, each on SQLite and PostgreSQL:

- ``job_progress``: 1,000,000 expired rows. acmeq: ``run_cleanup(only=["job_progress"])``
  (keyset batches of ``--batch`` rows, one short transaction each, every batch checked against
  RQ for jobs still queued or running). Peer: ``DELETE FROM job_progress WHERE updated_at <
  cutoff`` in one transaction.
- ``failed_jobs``: 100,000 failed RQ jobs (hash, results stream, registry entry) on a private
  redis-server. acmeq: ``run_cleanup(only=["failed_jobs"])`` (pages of ``--batch`` jobs, deleted
  the way `acmeq failed flush` deletes them). Peer: one MULTI/EXEC deleting every key.

For each run: total time, the longest single transaction (acmeq: its longest batch; peer: the
whole statement), and what another client saw meanwhile: a probe inserting one audit row every
20 ms (SQL) or sending PING every 20 ms (Redis) records its worst latency and its failures
("database is locked"). PostgreSQL runs in a scratch schema of ``--pg-url``; Redis is a private
redis-server, never the machine's DB 7.

    .venv/bin/python bench/cleanup.py [--rows 1000000] [--failed 100000] [--batch 1000]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test | --no-pg] [--json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acmeq.config.settings import Settings
from acmeq.maintenance import run_cleanup
from acmeq.storage import sql as db

from _redis import private_redis

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)  # past every default retention
COLUMNS = "id, job_name, queue, status, total, processed, failed, created_at, updated_at"


# -- databases -----------------------------------------------------------------------------------


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="acmeq-bench-") as tmp:
        yield f"sqlite:///{tmp}/bench.db"


@contextmanager
def pg_schema(base: str) -> Iterator[str]:
    schema = f"acmeq_bench_{secrets.token_hex(4)}"
    admin = db.make_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        db.dispose_engines()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _rows(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        at = OLD + timedelta(microseconds=i)
        yield (f"bench-{i:07d}", "export_donations", "exports", "completed", 100, 100, 0, at, at)


def seed_progress(engine: Engine, n: int) -> float:
    started = time.perf_counter()
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            with conn.cursor() as cur, cur.copy(f"COPY job_progress ({COLUMNS}) FROM STDIN") as cp:
                for row in _rows(n):
                    cp.write_row(row)
            conn.commit()
        finally:
            raw.close()
    else:
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        sql = f"INSERT INTO job_progress ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        rows = ((*r[:7], r[7].strftime(fmt), r[8].strftime(fmt)) for r in _rows(n))
        with engine.begin() as conn2:
            cursor: Any = conn2.connection.driver_connection
            cursor.executemany(sql, rows)
    with engine.begin() as conn3:
        if engine.dialect.name == "postgresql":
            conn3.execute(sa.text("ANALYZE job_progress"))
    return time.perf_counter() - started


# -- probes: what another client sees meanwhile ---------------------------------------------------


class Probe(threading.Thread):
    """Calls ``action`` every 20 ms until stopped; keeps its worst latency and its failures."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.action = action
        self.worst_ms = 0.0
        self.failures = 0
        self.calls = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.perf_counter()
            try:
                self.action()
            except Exception:
                self.failures += 1
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - started) * 1000)
            self.calls += 1
            self.halt.wait(0.02)

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join(30)
        return {"probe_worst_ms": round(self.worst_ms, 1), "probe_failures": self.failures}


def sql_probe(url: str) -> Probe:
    engine = db.make_engine(url)
    stmt = sa.text(
        "INSERT INTO audit_log (at, actor, action, entity_type, entity_id) "
        "VALUES (:at, 'bench', 'probe', 'x', '1')"
    )

    def insert() -> None:
        with engine.begin() as conn:
            conn.execute(stmt, {"at": datetime.now(UTC)})

    return Probe(insert)


@contextmanager
def probing(probe: Probe, result: dict[str, Any]) -> Iterator[None]:
    probe.start()
    time.sleep(0.1)
    try:
        yield
    finally:
        result.update(probe.stop())


# -- the runs ------------------------------------------------------------------------------------


def settings_for(url: str, redis_url: str, state: Path) -> Settings:
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "ACMEQ_STATE_DIR": str(state)}
    return Settings.load(env=env)


def progress_runs(url: str, redis_url: str, rows: int, batch: int) -> list[dict[str, Any]]:
    engine = db.make_engine(url)
    db.upgrade(engine)
    client = redis.Redis.from_url(redis_url)
    out = []
    with tempfile.TemporaryDirectory() as state:
        cfg = settings_for(url, redis_url, Path(state))
        seeded = seed_progress(engine, rows)
        result: dict[str, Any] = {"backend": engine.dialect.name, "workload": "job_progress"}
        with probing(sql_probe(url), result):
            report = run_cleanup(
                cfg, engine=engine, connection=client, only=["job_progress"], batch_size=batch
            )
        (r,) = report.results
        assert r.deleted == rows and r.error is None, r.as_dict()
        result.update(
            who=f"acmeq (batches of {batch})",
            items=r.deleted,
            seconds=round(r.seconds, 2),
            longest_tx_ms=round(r.longest_tx_ms, 1),
            seed_seconds=round(seeded, 1),
        )
        out.append(result)

        seeded = seed_progress(engine, rows)
        peer: dict[str, Any] = {"backend": engine.dialect.name, "workload": "job_progress"}
        cutoff = NOW - timedelta(days=30)
        with probing(sql_probe(url), peer):
            started = time.perf_counter()
            with engine.begin() as conn:
                deleted = conn.execute(
                    sa.text("DELETE FROM job_progress WHERE updated_at < :cutoff"),
                    {
                        "cutoff": cutoff
                        if engine.dialect.name == "postgresql"
                        else cutoff.strftime("%Y-%m-%d %H:%M:%S.%f")
                    },
                ).rowcount
            elapsed = time.perf_counter() - started
        assert deleted == rows, deleted
        peer.update(
            who="naive single DELETE",
            items=deleted,
            seconds=round(elapsed, 2),
            longest_tx_ms=round(elapsed * 1000, 1),
            seed_seconds=round(seeded, 1),
        )
        out.append(peer)
    engine.dispose()
    return out


def seed_failed(client: redis.Redis, n: int, queue: str = "exports") -> float:
    started = time.perf_counter()
    ended = OLD.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = b"x\x9c\x8b\x06\x00\x00\x5c\x00\x5c"  # a small compressed payload, like RQ's
    for start in range(0, n, 2000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 2000, n)):
            job_id = f"failed-{i:07d}"
            pipe.hset(
                f"rq:job:{job_id}",
                mapping={
                    "status": "failed",
                    "origin": queue,
                    "description": "export_donations",
                    "ended_at": ended,
                    "enqueued_at": ended,
                    "data": data,
                },
            )
            pipe.xadd(
                f"rq:results:{job_id}", {"type": "2", "exc_string": "eJxLyslMTlVIKs0rKQYAF7MEPQ=="}
            )
            pipe.zadd(f"rq:failed:{queue}", {job_id: OLD.timestamp() + 7 * 86400})
        pipe.execute()
    return time.perf_counter() - started


def failed_runs(url: str, redis_url: str, failed: int, batch: int) -> list[dict[str, Any]]:
    engine = db.make_engine(url)
    db.upgrade(engine)
    client = redis.Redis.from_url(redis_url)
    ping_client = redis.Redis.from_url(redis_url)
    out = []
    with tempfile.TemporaryDirectory() as state:
        cfg = settings_for(url, redis_url, Path(state))
        client.flushdb()
        seeded = seed_failed(client, failed)
        result: dict[str, Any] = {"backend": "redis", "workload": "failed_jobs"}
        with probing(Probe(lambda: ping_client.ping() and None), result):
            report = run_cleanup(
                cfg, engine=engine, connection=client, only=["failed_jobs"], batch_size=batch
            )
        (r,) = report.results
        assert r.deleted == failed and r.error is None, r.as_dict()
        assert client.dbsize() == 0, client.dbsize()
        result.update(
            who=f"acmeq (pages of {batch})",
            items=r.deleted,
            seconds=round(r.seconds, 2),
            longest_tx_ms=round(r.longest_tx_ms, 1),
            seed_seconds=round(seeded, 1),
        )
        out.append(result)

        seeded = seed_failed(client, failed)
        peer: dict[str, Any] = {"backend": "redis", "workload": "failed_jobs"}
        with probing(Probe(lambda: ping_client.ping() and None), peer):
            started = time.perf_counter()
            ids = [m.decode() for m in client.zrange("rq:failed:exports", 0, -1)]
            pipe = client.pipeline(transaction=True)
            for job_id in ids:
                pipe.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
            pipe.delete("rq:failed:exports")
            exec_started = time.perf_counter()
            pipe.execute()
            exec_ms = (time.perf_counter() - exec_started) * 1000
            elapsed = time.perf_counter() - started
        assert client.dbsize() == 0
        peer.update(
            who="naive single MULTI/EXEC",
            items=len(ids),
            seconds=round(elapsed, 2),
            longest_tx_ms=round(exec_ms, 1),
            seed_seconds=round(seeded, 1),
        )
        out.append(peer)
    engine.dispose()
    return out


def main() -> None:
    # SIGTERM ends the run through the finally blocks: the private redis-server and the scratch
    # schema go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--failed", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with private_redis() as redis_url:
        with sqlite_database() as url:
            results += progress_runs(url, redis_url, args.rows, args.batch)
            results += failed_runs(url, redis_url, args.failed, args.batch)
        if not args.no_pg:
            with pg_schema(args.pg_url) as url:
                results += progress_runs(url, redis_url, args.rows, args.batch)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    header = f"{'workload':<13}{'backend':<11}{'who':<27}{'items':>10}{'total s':>9}"
    header += f"{'longest tx ms':>15}{'probe worst ms':>16}{'probe fails':>13}"
    print(header)
    for r in results:
        print(
            f"{r['workload']:<13}{r['backend']:<11}{r['who']:<27}{r['items']:>10,}"
            f"{r['seconds']:>9.2f}{r['longest_tx_ms']:>15,.1f}{r['probe_worst_ms']:>16,.1f}"
            f"{r['probe_failures']:>13}"
        )
    for i in range(0, len(results), 2):
        ours, peer = results[i], results[i + 1]
        print(
            f"{ours['workload']} on {ours['backend']}: acmeq/peer total time "
            f"{ours['seconds'] / max(peer['seconds'], 1e-9):.2f}x, longest transaction "
            f"{ours['longest_tx_ms'] / max(peer['longest_tx_ms'], 1e-9):.4f}x"
        )


if __name__ == "__main__":
    main()
