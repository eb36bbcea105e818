"""The progress stream over real HTTP, SSE and WebSocket clients (issue #16).

A real uvicorn server (in a thread of the test process, on a free port) serves
``create_progress_app``; the records are written and published as a job's tracker does
(``store.save`` then ``store.publish``) on the session's private redis-server, or on a
redis-server of the test's own for the restart test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
import websockets
from sqlalchemy.engine import Engine
from websockets.asyncio.client import connect as ws_connect

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.storage import sql as db
from acmeq.storage.models import JobStatus, User, UserRole
from acmeq.storage.redis_client import find_redis_server
from acmeq.tracking import store
from acmeq.tracking.store import ProgressRecord
from acmeq.web import tokens
from acmeq.web.progress import create_progress_app

from conftest import free_port, wait_for_redis, wait_until

SECRET = "test-progress-secret-0123456789"
FINAL = ("completed", "failed", "cancelled")


def add_user(engine: Engine, email: str, role: UserRole = UserRole.EMPLOYEE) -> int:
    with db.session(engine) as s:
        user = User(email=email, name=email.split("@")[0], role=role)
        s.add(user)
        s.flush()
        assert user.id is not None
        return user.id


@dataclass
class Server:
    base: str
    ws: str
    engine: Engine
    redis: redis.Redis
    app: Any
    uvicorn: uvicorn.Server
    thread: threading.Thread
    tokens: dict[str, str]

    def record(self, job_id: str, user: int | None, **kw: Any) -> ProgressRecord:
        now = datetime.now(UTC)
        base = ProgressRecord(
            id=job_id,
            job_name="export_donations",
            queue="exports",
            status=JobStatus.RUNNING,
            user_id=user,
            total=100,
            started_at=now,
            updated_at=now,
        )
        record = replace(base, **kw)
        store.save(self.engine, record)
        return record

    def advance(self, record: ProgressRecord, *, sql: bool = True, **kw: Any) -> ProgressRecord:
        """Save and publish the next state, as a tracker's flush does (``sql=False``: publish)."""
        changes: dict[str, Any] = {"updated_at": datetime.now(UTC), **kw}
        if JobStatus(changes.get("status", record.status)).finished:
            changes.setdefault("finished_at", changes["updated_at"])
        new = replace(record, **changes)
        if sql or new.finished:
            store.save(self.engine, new)
        store.publish(self.redis, new)
        return new

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=15)


def start_server(settings: Settings, engine: Engine, client: redis.Redis) -> Server:
    app = create_progress_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until("progress server started", lambda: server.started, timeout=20)
    service = app.state.progress
    wait_until("hub subscribed", service.hub.connected.is_set, timeout=20)
    alice = add_user(engine, "alice@acme.test")
    bob = add_user(engine, "bob@acme.test")
    admin = add_user(engine, "admin@acme.test", UserRole.ADMIN)
    minted = {
        "alice": tokens.mint(SECRET, alice, 600),
        "bob": tokens.mint(SECRET, bob, 600),
        "admin": tokens.mint(SECRET, admin, 600),
        "alice_id": str(alice),
        "bob_id": str(bob),
    }
    return Server(
        f"http://127.0.0.1:{port}",
        f"ws://127.0.0.1:{port}",
        engine,
        client,
        app,
        server,
        thread,
        minted,
    )


def load_settings(monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str) -> Settings:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("ACMEQ_PROGRESS_SECRET", SECRET)
    return Settings.load()


@pytest.fixture
def srv(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database_url: str, redis_url: str
) -> Iterator[Server]:
    client = redis.Redis.from_url(redis_url)
    server = start_server(load_settings(monkeypatch, database_url, redis_url), engine, client)
    try:
        yield server
    finally:
        server.stop()


def uid(server: Server, who: str) -> int:
    return int(server.tokens[f"{who}_id"])


async def ws_messages(
    url: str, n: int | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Every message until the server closes the socket (or ``n`` messages)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), ws_connect(url) as ws:
        try:
            async for text in ws:
                out.append(json.loads(text))
                if n is not None and len(out) >= n:
                    break
        except websockets.ConnectionClosedError:
            pass
    return out


def sse_messages(
    client: httpx.Client, url: str, headers: dict[str, str]
) -> Iterator[dict[str, Any]]:
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for text in response.iter_lines():
            if text.startswith("data: "):
                yield json.loads(text[6:])


# -- snapshot and access ----------------------------------------------------------------------


def test_snapshot_is_the_show_json_record_and_access_is_checked(srv: Server) -> None:
    rec = srv.record("job-a", uid(srv, "alice"), processed=42, message="rows")
    srv.record("job-b", uid(srv, "bob"))
    bearer = {"authorization": f"Bearer {srv.tokens['alice']}"}
    with httpx.Client(base_url=srv.base, timeout=20) as http:
        got = http.get("/progress/job-a", headers=bearer)
        assert got.status_code == 200
        assert got.json() == store.get(srv.engine, "job-a").as_dict()  # type: ignore[union-attr]
        assert got.json()["processed"] == rec.processed == 42
        assert got.json()["percent"] == 42.0
        # as a query parameter too (EventSource and WebSocket cannot set headers)
        assert http.get(f"/progress/job-a?token={srv.tokens['alice']}").status_code == 200
        # another user's job is answered exactly like a missing one
        foreign = http.get("/progress/job-b", headers=bearer)
        missing = http.get("/progress/nope", headers=bearer)
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["error"] == "job progress 'job-b' not found"
        # admins see every job
        admin = {"authorization": f"Bearer {srv.tokens['admin']}"}
        assert http.get("/progress/job-b", headers=admin).json()["user_id"] == uid(srv, "bob")
        # 401: no token, bad signature, expired, another secret
        expired = tokens.mint(SECRET, uid(srv, "alice"), 60, now=time.time() - 120)
        tampered = srv.tokens["alice"][:-2] + (
            "AA" if not srv.tokens["alice"].endswith("AA") else "BB"
        )
        other = tokens.mint("another-secret-0123456789", uid(srv, "alice"), 600)
        for token, reason in [
            (None, "missing token"),
            (tampered, "bad signature"),
            (expired, "token expired"),
            (other, "bad signature"),
            ("garbage", "malformed token"),
        ]:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            for path in ("/progress/job-a", "/progress/job-a/events"):
                answer = http.get(path, headers=headers)
                assert answer.status_code == 401, (path, token)
                assert answer.json() == {"error": reason}
                assert answer.headers["www-authenticate"] == "Bearer"


def test_websocket_refuses_bad_tokens_and_foreign_jobs_before_streaming(srv: Server) -> None:
    srv.record("job-b", uid(srv, "bob"))

    async def status_of(query: str) -> int:
        try:
            async with ws_connect(f"{srv.ws}/progress/ws?{query}"):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    async def main() -> None:
        assert await status_of("job=job-b") == 401
        assert await status_of("job=job-b&token=v1.e30.bad") == 401
        assert await status_of(f"job=job-b&token={srv.tokens['alice']}") == 404
        assert await status_of(f"job=job-b&token={srv.tokens['bob']}") == 101

    asyncio.run(main())


# -- live updates -----------------------------------------------------------------------------


def test_sse_sends_snapshot_live_updates_in_order_then_final_and_ends(srv: Server) -> None:
    rec = srv.record("job-s", uid(srv, "alice"), processed=0)
    headers = {"authorization": f"Bearer {srv.tokens['alice']}"}
    got: list[dict[str, Any]] = []
    with httpx.Client(base_url=srv.base, timeout=httpx.Timeout(30.0)) as http:
        stream = sse_messages(http, "/progress/job-s/events", headers)
        got.append(next(stream))  # the snapshot
        assert got[0]["processed"] == 0 and got[0]["status"] == "running"
        for n in range(1, 6):
            rec = srv.advance(rec, processed=n * 10)
            time.sleep(0.02)
        rec = srv.advance(rec, processed=100, status=JobStatus.COMPLETED, message="done")
        got.extend(stream)  # until the server ends the stream
    processed = [m["processed"] for m in got]
    assert processed == sorted(processed) and processed[-1] == 100
    assert got[-1]["status"] == "completed" and got[-1]["message"] == "done"
    assert got[-1] == store.get(srv.engine, "job-s").as_dict()  # type: ignore[union-attr]
    assert processed == [0, 10, 20, 30, 40, 50, 100]  # nothing lost at this pace


def test_websocket_late_join_several_jobs_and_all_jobs_mode(srv: Server) -> None:
    alice, bob = uid(srv, "alice"), uid(srv, "bob")
    done = srv.record("job-done", alice, processed=100, status=JobStatus.COMPLETED)
    a1 = srv.record("job-1", alice)
    a2 = srv.record("job-2", alice)
    b1 = srv.record("job-b", bob)
    token = srv.tokens["alice"]

    async def main() -> None:
        # late join on a finished job: the snapshot is the final message, then the close
        late = await ws_messages(f"{srv.ws}/progress/ws?job=job-done&token={token}")
        assert late == [store.get(srv.engine, "job-done").as_dict()]  # type: ignore[union-attr]
        assert late[0]["status"] == done.status.value

        both = f"{srv.ws}/progress/ws?job=job-1,job-2&token={token}"
        async with (
            ws_connect(both) as two,
            ws_connect(f"{srv.ws}/progress/ws?token={token}") as every,
        ):
            first = sorted([json.loads(await two.recv())["id"] for _ in range(2)])
            assert first == ["job-1", "job-2"]
            snap = sorted([json.loads(await every.recv())["id"] for _ in range(2)])
            assert snap == ["job-1", "job-2"]  # her active jobs, not bob's
            await asyncio.to_thread(srv.advance, b1, processed=5)  # bob's: not for alice
            await asyncio.to_thread(srv.advance, a1, processed=7)
            assert json.loads(await every.recv())["id"] == "job-1"
            m = json.loads(await two.recv())
            assert (m["id"], m["processed"]) == ("job-1", 7)
            await asyncio.to_thread(srv.advance, a1, status=JobStatus.FAILED, message="x")
            await asyncio.to_thread(srv.advance, a2, status=JobStatus.CANCELLED)
            ends = [json.loads(await two.recv()) for _ in range(2)]
            assert [(e["id"], e["status"]) for e in ends] == [
                ("job-1", "failed"),
                ("job-2", "cancelled"),
            ]
            with pytest.raises(websockets.ConnectionClosedOK):
                await two.recv()  # both ended: the server closed the socket
            assert [json.loads(await every.recv())["id"] for _ in range(2)] == [
                "job-1",
                "job-2",
            ]

    asyncio.run(main())


# -- scale ------------------------------------------------------------------------------------


def test_a_thousand_subscribers_share_one_redis_subscription(srv: Server) -> None:
    rec = srv.record("job-k", uid(srv, "alice"))
    url = f"{srv.ws}/progress/ws?job=job-k&token={srv.tokens['alice']}"
    clients = 1000

    async def main() -> list[list[dict[str, Any]]]:
        sockets = []
        for start in range(0, clients, 100):  # connect in waves: the machine is loaded
            sockets += await asyncio.gather(*(ws_connect(url) for _ in range(start, start + 100)))
        for ws in sockets:  # every client has its snapshot: all are subscribed
            assert json.loads(await asyncio.wait_for(ws.recv(), 60))["processed"] == 0
        subs = await asyncio.to_thread(srv.redis.pubsub_numsub, keys.PROGRESS_CHANNEL)
        assert subs == [(keys.PROGRESS_CHANNEL.encode(), 1)]  # one subscription, 1,000 clients

        async def publish() -> None:
            state = rec
            for n in range(1, 4):
                state = await asyncio.to_thread(srv.advance, state, processed=n * 25)
                await asyncio.sleep(0.2)
            await asyncio.to_thread(srv.advance, state, processed=100, status=JobStatus.COMPLETED)

        async def drain(ws: Any) -> list[dict[str, Any]]:
            return [json.loads(m) async for m in ws]

        async with asyncio.timeout(90):
            results = await asyncio.gather(publish(), *(drain(ws) for ws in sockets))
        return results[1:]

    received = asyncio.run(main())
    assert len(received) == clients
    for messages in received:
        processed = [m["processed"] for m in messages]
        assert processed == sorted(processed)  # in order (an update may be coalesced away)
        assert messages[-1]["status"] == "completed"


async def never_reading_client(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that does the handshake, then reads nothing until told to."""
    host, rest = url.removeprefix("ws://").split("/", 1)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, and no autotuning
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(
        raw, (host.split(":")[0], int(host.split(":")[1]))
    )
    reader, writer = await asyncio.open_connection(sock=raw, limit=4096)
    writer.write(
        f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def test_a_slow_client_is_dropped_without_delaying_the_others(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database_url: str, redis_url: str
) -> None:
    monkeypatch.setenv("ACMEQ_PROGRESS_CLIENT_BUFFER", "20")
    client = redis.Redis.from_url(redis_url)
    srv = start_server(load_settings(monkeypatch, database_url, redis_url), engine, client)
    try:
        rec = srv.record("job-z", uid(srv, "alice"))
        url = f"{srv.ws}/progress/ws?job=job-z&token={srv.tokens['alice']}"
        pad = "x" * 16_000  # big records fill the slow client's socket buffers sooner
        updates = 1000

        async def main() -> tuple[list[int], int, str]:
            slow, _keep = await never_reading_client(url)
            fast = await ws_connect(url, max_size=None)
            await fast.recv()  # snapshot
            service = srv.app.state.progress

            async def publish() -> None:
                state = rec
                for n in range(1, updates + 1):
                    state = await asyncio.to_thread(
                        srv.advance, state, sql=False, processed=n, total=updates, message=pad
                    )
                    if n % 50 == 0:  # both subscribers registered; slow one cut by now?
                        await asyncio.sleep(0.01)
                await asyncio.to_thread(srv.advance, state, status=JobStatus.COMPLETED)

            async def drain() -> list[int]:
                return [json.loads(m)["processed"] async for m in fast]

            async with asyncio.timeout(80):
                _, seen = await asyncio.gather(publish(), drain())
            dropped = service.hub.dropped
            async with asyncio.timeout(30):  # what was buffered, then the server's close
                rest = await slow.read()
            slow_got = rest.count(b'"processed"')
            return seen, dropped, slow_got

        seen, dropped, slow_got = asyncio.run(main())
        assert seen == sorted(seen) and seen[-1] == updates  # the fast one got it all, in order
        assert dropped == 1  # the slow one was cut off ...
        assert slow_got < updates  # ... long before the end, and the server closed its socket
    finally:
        srv.stop()


# -- Redis restarted mid-stream ---------------------------------------------------------------


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = find_redis_server()
    assert binary is not None
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_redis(port, proc)
    return proc


def test_redis_restarted_mid_stream_clients_get_a_fresh_snapshot(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    proc = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    srv = start_server(load_settings(monkeypatch, database_url, url), engine, client)
    try:
        rec = srv.record("job-r", uid(srv, "alice"))
        ws_url = f"{srv.ws}/progress/ws?job=job-r&token={srv.tokens['alice']}"
        hub = srv.app.state.progress.hub

        async def main() -> list[dict[str, Any]]:
            nonlocal proc, rec
            got: list[dict[str, Any]] = []
            async with asyncio.timeout(60), ws_connect(ws_url) as ws:
                got.append(json.loads(await ws.recv()))
                rec = await asyncio.to_thread(srv.advance, rec, processed=10)
                got.append(json.loads(await ws.recv()))
                proc.terminate()
                proc.wait(timeout=10)
                await asyncio.to_thread(
                    wait_until, "hub noticed", lambda: not hub.connected.is_set(), 20
                )
                # progress made while Redis is down reaches the database only
                rec = replace(rec, processed=60, updated_at=datetime.now(UTC))
                await asyncio.to_thread(store.save, srv.engine, rec)
                proc = await asyncio.to_thread(start_redis, port, tmp_path)
                got.append(json.loads(await ws.recv()))  # the fresh snapshot
                rec = await asyncio.to_thread(
                    srv.advance, rec, processed=100, status=JobStatus.COMPLETED
                )
                async for text in ws:
                    got.append(json.loads(text))
            return got

        got = asyncio.run(main())
        assert [m["processed"] for m in got] == [0, 10, 60, 100]
        assert got[-1]["status"] == "completed"
        assert hub.subscriptions == 2
    finally:
        srv.stop()
        proc.terminate()
        proc.wait(timeout=10)


def test_token_command_mints_a_token_the_server_accepts(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database_url: str, cli: Any
) -> None:
    alice = add_user(engine, "carol@acme.test")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ACMEQ_PROGRESS_SECRET", SECRET)
    result = cli("progress", "token", "carol@acme.test", "--ttl", "15m", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    claims = tokens.verify(SECRET, data["token"])
    assert claims.user_id == data["user_id"] == alice
    assert abs(claims.expires_at - time.time() - 900) < 60
    # the command's function: unknown users and a missing secret are usage errors
    with pytest.raises(UsageError, match=r"unknown user 'nobody@acme\.test'"):
        tokens.mint_for_user(engine, SECRET, "nobody@acme.test", 60)
    with pytest.raises(UsageError, match="ACMEQ_PROGRESS_SECRET"):
        tokens.mint_for_user(engine, "", "carol@acme.test", 60)


def test_receiver_and_progress_stream_together_and_the_demo_lines(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database_url: str, redis_url: str
) -> None:
    from acmeq.web.progress import create_combined_app
    from acmeq.web.progress.demo import DEMO_SECRET, progress_page

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("ACMEQ_PROGRESS_SECRET", DEMO_SECRET)
    cfg = Settings.load()
    owner = add_user(engine, "dora@acme.test")
    store.save(
        engine,
        ProgressRecord(
            id="exp-1",
            job_name="export_donations",
            queue="exports",
            status=JobStatus.COMPLETED,
            user_id=owner,
            total=10,
            processed=10,
        ),
    )
    app = create_combined_app(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until("combined server started", lambda: server.started, timeout=20)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=20) as http:
            assert http.get("/healthz").json() == {"redis": "ok", "database": "ok"}  # receiver's
            page = http.get("/progress-example")
            assert page.status_code == 200 and "/progress/ws?job=" in page.text
            assert http.get("/progress/exp-1").status_code == 401

            lines: list[str] = []

            class Out:
                def line(self, text: str) -> None:
                    lines.append(text)

            progress_page(cfg, Out(), base)
            assert (
                lines[0] == "GET /progress/exp-1 (the export's progress record): completed, 10/10"
            )
            link = lines[1].rsplit(" ", 1)[1]
            assert link.startswith(f"{base}/progress-example?job=exp-1&token=")
            token = link.split("token=", 1)[1]
            assert http.get(f"/progress/exp-1?token={token}").json()["status"] == "completed"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine")
def test_example_page_in_a_real_browser(srv: Server, tmp_path: Path) -> None:
    # SSE only: headless --dump-dom returns once the page's requests are done and does not wait
    # for WebSocket messages (a late join raced it under load); the WebSocket path of the page is
    # the same show() fed by the endpoint the websockets-client tests above cover.
    mode = "sse"
    rec = srv.record("job-p", uid(srv, "alice"), processed=30)
    page = f"{srv.base}/progress-example?job=job-p&token={srv.tokens['alice']}&mode={mode}"

    def later() -> None:
        time.sleep(4)
        state = srv.advance(rec, processed=60)
        time.sleep(0.5)
        srv.advance(state, processed=100, status=JobStatus.COMPLETED, message="all rows")

    publisher = threading.Thread(target=later, daemon=True)
    publisher.start()  # live updates while the page is open (an open request holds the dump)
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=30000",
            "--dump-dom",
            page,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    ).stdout
    if publisher.is_alive():
        publisher.join(timeout=30)
    assert 'data-status="completed"' in dom, dom[-2000:]
    assert "width: 100%" in dom and "all rows" in dom
