"""Progress stream fan-out: WebSocket subscribers of `acmeq progress serve` vs a bare Redis
pub/sub subscriber, in one run (issue #16).

Setup: a private redis-server, a migrated SQLite file with one admin user and ``--jobs`` running
progress records, and ONE server process (``python -m acmeq progress serve``). ``--clients``
WebSocket subscribers (spread evenly over the jobs, ``?job=ID``) run in ``--client-procs``
processes; beside them a bare redis-py subscriber of ``acmeq:progress`` (the peer: what a
subscription costs without acmeq in between). The publisher advances every job ``--rate`` times a
second for ``--seconds`` (publishing the record's JSON on ``acmeq:progress:<id>`` and
``acmeq:progress`` as a tracker's flush does, without the SQL write) with ``updated_at`` set at
publish time; each receiver measures ``now - updated_at`` per message.

Reported: delivery latency p50/p99/max (publish -> client) for the WebSocket clients and for the
bare subscriber, messages delivered (an update superseded before a lagging client could be sent
it is skipped: progress is a state, so the delivered share is printed too), the server
process's CPU (user+sys seconds per wall second, from /proc) and the machine's load average.

    .venv/bin/python bench/progress_stream.py [--clients 1000] [--jobs 10] [--rate 100]
        [--seconds 10] [--client-procs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acmeq import keys
from acmeq.storage import sql
from acmeq.storage.models import JobStatus, User, UserRole
from acmeq.tracking import store
from acmeq.tracking.store import ProgressRecord
from acmeq.web import tokens

from _redis import private_redis

SECRET = "bench-progress-secret-0123456789"
MARK = '"updated_at": "'


def latency_of(text: str | bytes, now: float) -> float:
    raw = text.decode() if isinstance(text, bytes) else text
    start = raw.index(MARK) + len(MARK)
    stamp = raw[start : raw.index('"', start)]
    return now - datetime.fromisoformat(stamp).timestamp()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- receivers (child processes) --------------------------------------------------------------


def ws_clients(urls: list[str], start_at: float, stop_at: float, out: Any) -> None:
    from websockets.asyncio.client import connect

    async def one(url: str, lat: list[float]) -> None:
        async with connect(url, max_size=None, open_timeout=120) as ws:
            while True:
                left = stop_at - time.time()
                if left <= 0:
                    return
                try:
                    text = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    return
                now = time.time()
                if now >= start_at:
                    lat.append(latency_of(text, now))

    async def main() -> list[float]:
        lat: list[float] = []
        tasks = []
        for i in range(0, len(urls), 50):  # connect in waves
            tasks += [asyncio.create_task(one(u, lat)) for u in urls[i : i + 50]]
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, return_exceptions=True)
        return lat

    out.put(("ws", asyncio.run(main())))


def bare_subscriber(redis_url: str, start_at: float, stop_at: float, out: Any) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.PROGRESS_CHANNEL)
    lat: list[float] = []
    while time.time() < stop_at:
        message = pubsub.get_message(timeout=0.5)
        if message is None:
            continue
        now = time.time()
        if now >= start_at:
            lat.append(latency_of(message["data"], now))
    out.put(("bare", lat))


# -- measurement ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def summary(name: str, lat: list[float], expected: int) -> str:
    share = 100.0 * len(lat) / expected if expected else 0.0
    return (
        f"{name:<28} p50 {pct(lat, 0.50):7.1f} ms  p99 {pct(lat, 0.99):7.1f} ms  "
        f"max {pct(lat, 1.0):7.1f} ms  delivered {len(lat):>9,} ({share:5.1f}% of updates)"
    )


def prepare(workdir: Path, jobs: int) -> tuple[str, int, list[ProgressRecord]]:
    url = f"sqlite:///{workdir / 'acmeq.db'}"
    engine = sql.make_engine(url)
    sql.upgrade(engine)
    with sql.session(engine) as s:
        user = User(email="bench@acme.test", name="bench", role=UserRole.ADMIN)
        s.add(user)
        s.flush()
        assert user.id is not None
        admin = user.id
    records = []
    for i in range(jobs):
        record = ProgressRecord(
            id=f"bench-job-{i}",
            job_name="export_donations",
            queue="exports",
            status=JobStatus.RUNNING,
            user_id=admin,
            total=10**9,
        )
        store.save(engine, record)
        records.append(record)
    engine.dispose()
    return url, admin, records


def publish_loop(
    client: redis.Redis, records: list[ProgressRecord], rate: float, until: float
) -> int:
    sent = 0
    tick = 1.0 / rate
    next_at = time.time()
    while next_at < until:
        with client.pipeline(transaction=False) as pipe:
            for i, record in enumerate(records):
                now = datetime.now(UTC)
                records[i] = record = replace(
                    record, processed=record.processed + 1, updated_at=now
                )
                payload = json.dumps(record.as_dict())
                pipe.publish(keys.progress_channel(record.id), payload)
                pipe.publish(keys.PROGRESS_CHANNEL, payload)
            pipe.execute()
        sent += len(records)
        next_at += tick
        time.sleep(max(0.0, next_at - time.time()))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="advances per job per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client-procs", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as tmp:
        db_url, admin, records = prepare(Path(tmp), args.jobs)
        port = free_port()
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            DATABASE_URL=db_url,
            ACMEQ_PROGRESS_SECRET=SECRET,
            ACMEQ_STATE_DIR=tmp,
            ACMEQ_PROGRESS_CLIENT_BUFFER="100000",
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "acmeq", "progress", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            run(args, server, port, redis_url, admin, records, load_before)
        finally:
            server.terminate()
            server.wait(timeout=20)


def run(
    args: argparse.Namespace,
    server: subprocess.Popen[bytes],
    port: int,
    redis_url: str,
    admin: int,
    records: list[ProgressRecord],
    load_before: tuple[float, float, float],
) -> None:
    import httpx

    token = tokens.mint(SECRET, admin, 3600)
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    urls = [
        f"ws://127.0.0.1:{port}/progress/ws?job={records[i % len(records)].id}&token={token}"
        for i in range(args.clients)
    ]
    connect_s = max(10.0, args.clients / 50)  # time given to connect before publishing
    begin = time.time() + connect_s
    warm = 2.0
    start_at, until = begin + warm, begin + warm + args.seconds
    stop_at = until + 2.0  # late deliveries still count
    results: mp.Queue[tuple[str, list[float]]] = mp.Queue()
    procs = [
        mp.Process(
            target=ws_clients, args=(urls[i :: args.client_procs], start_at, stop_at, results)
        )
        for i in range(args.client_procs)
    ]
    procs.append(mp.Process(target=bare_subscriber, args=(redis_url, start_at, stop_at, results)))
    for p in procs:
        p.start()
    client = redis.Redis.from_url(redis_url)
    time.sleep(max(0.0, begin - time.time()))
    subscribers = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["clients"]
    publish_loop(client, records, args.rate, start_at)  # warm-up
    cpu0, wall0 = cpu_seconds(server.pid), time.time()
    sent = publish_loop(client, records, args.rate, until)
    cpu1, wall1 = cpu_seconds(server.pid), time.time()
    outputs = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    bare = [x for kind, lat in outputs if kind == "bare" for x in lat]
    ws_lat = [x for kind, lat in outputs if kind == "ws" for x in lat]
    per_client = sent // len(records)
    load_after = os.getloadavg()
    print(
        f"progress stream: {args.clients} WebSocket clients ({subscribers} connected) on "
        f"{len(records)} jobs x {args.rate:g}/s for {args.seconds:g}s; one server process"
    )
    print(summary("acmeq WS subscribers", ws_lat, per_client * args.clients))
    print(summary("bare redis-py subscriber", bare, sent))
    ratio = pct(ws_lat, 0.99) / pct(bare, 0.99) if bare else float("nan")
    print(f"p99 ratio acmeq/bare: {ratio:.1f}x")
    cpu = (cpu1 - cpu0) / (wall1 - wall0)
    print(
        f"server CPU: {cpu * 100:.0f}% of one core ({cpu1 - cpu0:.1f} s over {wall1 - wall0:.1f} s)"
    )
    print(
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        f"({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
