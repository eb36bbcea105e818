"""Webhook receiver: acmeq's full path vs a bare starlette+uvicorn app, on loopback.

Both servers run as uvicorn with the same number of processes (``--workers``) against one
private redis-server. Every request is a distinct, correctly signed Stripe event of about 2 KB
(``t=`` of the run's start, so all are within the 300 s tolerance), so acmeq takes its full path
for each one: verify, INSERT ... ON CONFLICT ... RETURNING (one database round trip, committed),
enqueue-if-absent (one Lua call), 200. The bare app verifies the HMAC the same way and LPUSHes the
body to Redis (redis.asyncio), 200: the floor any receiver that hands events to Redis pays.

Load: wrk (``-t2 -c32``, a Lua script that builds each body from a template and takes its
signature from a pre-computed list) when it is installed, else a Python load generator in
another process (2 processes x 16 keep-alive connections). Each side runs ``--duration``
seconds after a short warm-up, ``--rounds`` times alternating; the best round of each counts.

    .venv/bin/python bench/webhook.py [--workers 1] [--duration 10] [--rounds 2]
        [--database-url postgresql://postgres@127.0.0.1:5432/test] [--loadgen wrk|python]

Targets (issue #12): acmeq >= 0.7x the bare app's req/s, p99 < 50 ms, every ack < 200 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _redis import private_redis  # noqa: E402

SECRET = "whsec_bench"
CONNECTIONS = 32

# -- the bare app (imported by uvicorn as ``webhook:bare_app`` from this directory) ---------------


def _bare_app():  # type: ignore[no-untyped-def]
    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    client = aioredis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"))

    async def stripe(request: Request) -> JSONResponse:
        body = await request.body()
        header = request.headers.get("stripe-signature", "")
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        t = parts.get("t", "")
        expected = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        if not t or abs(time.time() - int(t)) > 300:
            return JSONResponse({"error": "timestamp"}, status_code=400)
        if not hmac.compare_digest(expected, parts.get("v1", "")):
            return JSONResponse({"error": "signature"}, status_code=400)
        await client.lpush("bench:webhooks", body)
        return JSONResponse({"status": "accepted"})

    return Starlette(routes=[Route("/webhooks/stripe", stripe, methods=["POST"])])


def __getattr__(name: str) -> object:  # uvicorn imports "webhook:bare_app" in each worker
    if name == "bare_app":
        return _bare_app()
    raise AttributeError(name)


# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    prefix: str
    suffix: str
    timestamp: int

    def body(self, n: int) -> bytes:
        return f"{self.prefix}{n:08d}{self.suffix}".encode()

    def signature(self, n: int) -> str:
        message = f"{self.timestamp}.".encode() + self.body(n)
        return hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


def make_template(run: str, size: int = 2048) -> Template:
    event = {
        "id": "evt_bench_" + run + "_@@@",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": "pi_bench",
                "object": "payment_intent",
                "amount": 2500,
                "currency": "eur",
                "metadata": {"donation_id": "1"},
                "description": "",
            }
        },
    }
    text = json.dumps(event, separators=(",", ":"))
    pad = max(size - len(text) - 8 + 3, 0)
    text = text.replace('"description":""', '"description":"' + "x" * pad + '"')
    prefix, suffix = text.split("@@@")
    return Template(prefix, suffix, int(time.time()))


WRK_SCRIPT = r"""
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  nthreads = tonumber(args[1])
  offset = tonumber(args[2])
  prefix = io.open(args[3]):read("*a")
  suffix = io.open(args[4]):read("*a")
  stamp = args[5]
  sigs = {}
  for line in io.lines(args[6]) do sigs[#sigs + 1] = line end
  i = tid
end
function request()
  local n = (offset + i) % #sigs + 1
  i = i + nthreads
  local body = prefix .. string.format("%08d", n - 1) .. suffix
  return wrk.format("POST", "/webhooks/stripe", {
    ["Content-Type"] = "application/json",
    ["Stripe-Signature"] = "t=" .. stamp .. ",v1=" .. sigs[n],
  }, body)
end
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    requests: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    name: str, url: str, tmp: Path, tpl: Template, count: int, offset: int, duration: float
) -> Result:
    script = tmp / "stripe.lua"
    script.write_text(WRK_SCRIPT)
    (tmp / "prefix").write_text(tpl.prefix)
    (tmp / "suffix").write_text(tpl.suffix)
    args = [
        "2",
        str(offset),
        str(tmp / "prefix"),
        str(tmp / "suffix"),
        str(tpl.timestamp),
        str(tmp / "sigs"),
    ]
    cmd = [
        "wrk",
        "-t2",
        f"-c{CONNECTIONS}",
        f"-d{int(duration)}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *args,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + 60, check=True
    ).stdout
    if "99" not in dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M)):
        raise SystemExit(f"unexpected wrk output for {name}:\n{out}")
    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M))
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(g) for g in socket_errors.groups())
    return Result(
        name,
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        _ms(pct["50"]),
        _ms(pct["99"]),
        _ms(latency.group(1)) if latency else 0.0,
        failed,
        total,
    )


def _python_client(
    url: str, tpl_json: str, start: int, step: int, deadline: float, conns: int, out: str
) -> None:
    import threading

    tpl = Template(**json.loads(tpl_json))
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        n = start + k * step
        with httpx.Client(base_url=url, timeout=10) as client:
            mine: list[float] = []
            while time.monotonic() < deadline:
                body = tpl.body(n)
                headers = {"Stripe-Signature": f"t={tpl.timestamp},v1={tpl.signature(n)}"}
                t0 = time.perf_counter()
                reply = client.post("/webhooks/stripe", content=body, headers=headers)
                mine.append(time.perf_counter() - t0)
                if reply.status_code != 200:
                    errors[0] += 1
                n += step * conns
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(out).write_text(json.dumps({"lat": latencies, "errors": errors[0]}))


def run_python(
    name: str, url: str, tmp: Path, tpl: Template, offset: int, duration: float
) -> Result:
    procs = []
    deadline_in = duration
    tpl_json = json.dumps(tpl.__dict__)
    for p in range(2):
        out = tmp / f"lat-{name}-{p}.json"
        call = (
            f"webhook._python_client({url!r}, {tpl_json!r}, {offset + p}, 2, "
            f"__import__('time').monotonic() + {deadline_in}, {CONNECTIONS // 2}, {str(out)!r})"
        )
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import webhook; {call}"
        procs.append((subprocess.Popen([sys.executable, "-c", code]), out))
    lat: list[float] = []
    errors = 0
    for proc, out in procs:
        proc.wait(timeout=duration + 60)
        data = json.loads(out.read_text())
        lat += data["lat"]
        errors += data["errors"]
    lat.sort()
    q = lambda f: lat[min(int(f * len(lat)), len(lat) - 1)] * 1000  # noqa: E731
    return Result(name, len(lat) / duration, q(0.5), q(0.99), lat[-1] * 1000, errors, len(lat))


# -- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(url + "/webhooks/stripe", content=b"{}", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def prepare_database(url: str | None, tmp: Path, no_fsync: bool = False) -> tuple[str, object]:
    """A migrated database: SQLite under tmp, or a fresh schema on the given PostgreSQL."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from acmeq.storage import sql

    if url is None:
        db_url = f"sqlite:///{tmp / 'bench.db'}"
        sql.upgrade(sql.make_engine(db_url))
        return db_url, None
    schema = f"acmeq_bench_{secrets.token_hex(4)}"
    admin = sql.make_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    options = f"-csearch_path={schema}" + (" -csynchronous_commit=off" if no_fsync else "")
    db_url = make_url(url).update_query_dict({"options": options})
    rendered = db_url.render_as_string(hide_password=False)
    engine = sql.make_engine(rendered)
    sql.upgrade(engine)
    engine.dispose()

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return rendered, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--loadgen", choices=["wrk", "python"], default=None)
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="diagnostic only: PostgreSQL with synchronous_commit=off (not durable!), to show "
        "what acmeq's path costs without the commit's fsync",
    )
    args = parser.parse_args()
    loadgen = args.loadgen or ("wrk" if shutil.which("wrk") else "python")
    run = secrets.token_hex(3)
    tpl = make_template(run)
    count = 200_000
    results: dict[str, list[Result]] = {"bare": [], "acmeq": []}
    with tempfile.TemporaryDirectory() as tmpdir, private_redis() as redis_url:
        tmp = Path(tmpdir)
        if loadgen == "wrk":
            with (tmp / "sigs").open("w") as f:
                for n in range(count):
                    f.write(tpl.signature(n) + "\n")
        db_url, drop = prepare_database(args.database_url, tmp, args.no_fsync)
        env = dict(os.environ)
        env.update(
            REDIS_URL=redis_url,
            BENCH_REDIS_URL=redis_url,
            DATABASE_URL=db_url,
            STRIPE_WEBHOOK_SECRET=SECRET,
            ACMEQ_STATE_DIR=str(tmp / "state"),
            PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        )
        port_a, port_b = free_port(), free_port()
        acmeq_cmd = [
            sys.executable,
            "-m",
            "acmeq",
            "webhook",
            "serve",
            "--port",
            str(port_a),
            "--workers",
            str(args.workers),
        ]
        bare_cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "webhook:bare_app",
            "--port",
            str(port_b),
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        offset = 0
        try:
            with (
                server(acmeq_cmd, env, port_a, tmp / "acmeq.log") as acmeq_url,
                server(bare_cmd, env, port_b, tmp / "bare.log") as bare_url,
            ):
                for _ in range(args.rounds):
                    for name, url in (("bare", bare_url), ("acmeq", acmeq_url)):
                        # Warm-up (pools, templates), then the measured run with fresh events.
                        if loadgen == "wrk":
                            run_wrk(name, url, tmp, tpl, count, offset, 2)
                            offset += 20_000
                            result = run_wrk(name, url, tmp, tpl, count, offset, args.duration)
                        else:
                            run_python(name, url, tmp, tpl, offset, 2)
                            offset += 20_000
                            result = run_python(name, url, tmp, tpl, offset, args.duration)
                        offset += int(result.requests) + 1000
                        results[name].append(result)
                        print(
                            f"{name:6} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                            f"p99 {result.p99_ms:6.1f} ms  max {result.max_ms:6.1f} ms  "
                            f"non-2xx/errors {result.errors}",
                            flush=True,
                        )
        finally:
            if drop is not None:
                drop()  # type: ignore[operator]
    best = {name: max(rs, key=lambda r: r.rps) for name, rs in results.items()}
    ratio = best["acmeq"].rps / best["bare"].rps
    db = "PostgreSQL" if args.database_url else "SQLite"
    if args.no_fsync:
        db += " with synchronous_commit=off (diagnostic, NOT durable)"
    print(
        f"\nloadgen {loadgen}, {CONNECTIONS} connections, {args.workers} server process(es), "
        f"~2 KB signed Stripe events, database {db}, best of {args.rounds} round(s):"
    )
    print(f"{'':8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name in ("bare", "acmeq"):
        r = best[name]
        print(f"{name:8}{r.rps:9.0f}{r.p50_ms:9.1f}{r.p99_ms:9.1f}{r.max_ms:9.1f}")
    print(f"ratio acmeq / bare: {ratio:.2f}x (target >= 0.70x; p99 < 50 ms; max < 200 ms)")


if __name__ == "__main__":
    main()
