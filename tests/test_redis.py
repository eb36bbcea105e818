"""Redis connections: URL, host/port, Sentinel, the embedded server, and unreachable Redis."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from acmeq.config.settings import Settings
from acmeq.errors import RedisUnreachableError, UsageError
from acmeq.storage.redis_client import (
    EmbeddedRedis,
    connect,
    connect_checked,
    describe,
    find_redis_server,
)

from conftest import RedisServer, fast_client, free_port, run_cli, wait_for_redis


def start_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(find_redis_server()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_redis(port, proc, timeout=15)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, port


def test_url_without_a_database_uses_redis_queue_db(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}")
    monkeypatch.setenv("REDIS_QUEUE_DB", "3")
    client = connect_checked(Settings.load())
    assert client.connection_pool.connection_kwargs["db"] == 3
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/5")
    assert connect(Settings.load()).connection_pool.connection_kwargs["db"] == 5


def test_host_and_port_variables_reach_the_server(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(redis_server.port))
    settings = Settings.load()
    assert settings.redis.embedded is False
    assert connect_checked(settings).ping()
    assert describe(settings) == f"redis://127.0.0.1:{redis_server.port}/7"


def test_unreachable_redis_fails_fast_with_a_masked_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/7")
    started = time.monotonic()
    with pytest.raises(RedisUnreachableError) as err:
        connect_checked(Settings.load())
    assert time.monotonic() - started < 3
    assert str(err.value) == (
        f"cannot reach Redis at redis://:***@127.0.0.1:{port}/7: Connection refused"
    )

    for args in (["redis", "status"], ["enqueue", "ping"], ["queue", "list"]):
        # (the same command against a live Redis is the baseline: on a loaded machine the
        # interpreter's start alone can take seconds; the dead Redis may add ~1 s of retries)
        started = time.monotonic()
        run_cli("job", "list")
        baseline = time.monotonic() - started
        started = time.monotonic()
        result = run_cli(*args)
        assert result.returncode == 3, args
        assert time.monotonic() - started < 2 * baseline + 4
        assert result.stderr.strip() == (
            f"acmeq: error: cannot reach Redis at redis://:***@127.0.0.1:{port}/7: "
            "Connection refused"
        )
        assert "hunter2" not in result.stderr + result.stdout


def test_a_cluster_node_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, port = start_server(
        tmp_path, "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf")
    )
    try:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        with pytest.raises(UsageError, match="is a Redis Cluster node"):
            connect_checked(Settings.load())
    finally:
        proc.terminate()
        proc.wait(10)


def test_sentinel_discovers_the_master(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor queue 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(
        [str(find_redis_server()), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv("REDIS_SENTINELS", f"127.0.0.1:{sentinel_port}")
        monkeypatch.setenv("REDIS_SENTINEL_MASTER", "queue")
        monkeypatch.setenv("REDIS_QUEUE_DB", "2")
        settings = Settings.load()
        deadline = time.monotonic() + 10
        while True:
            try:
                client = connect_checked(settings)
                break
            except RedisUnreachableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.set("acmeq-test-sentinel", "1")
        assert fast_client(redis_server.port, db=2).get("acmeq-test-sentinel") == b"1"
        assert describe(settings) == f"sentinel://127.0.0.1:{sentinel_port}/queue/2"
    finally:
        proc.terminate()
        proc.wait(10)


def test_embedded_server_starts_once_is_shared_and_persists(tmp_path: Path) -> None:
    settings = Settings.load()  # no Redis configured: embedded under ACMEQ_STATE_DIR
    assert settings.redis.embedded
    server = EmbeddedRedis(settings.state_dir)
    try:
        # Given four processes' worth of concurrent first use
        with ThreadPoolExecutor(4) as pool:
            clients = list(pool.map(lambda _: connect_checked(settings), range(4)))
        status = server.status()
        assert status.running and status.pid is not None
        # Then one server serves them all, with AOF on and no eviction
        clients[0].set("k", "v")
        assert all(c.get("k") == b"v" for c in clients)
        assert clients[0].config_get("appendonly")["appendonly"] == "yes"
        assert clients[0].config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert clients[0].connection_pool.connection_kwargs["db"] == 7
        result = run_cli("redis", "status", "--json")
        assert result.returncode == 0, result.stderr
        assert '"embedded": true' in result.stdout
        # When it is stopped and started again, the data is still there
        assert run_cli("redis", "stop").returncode == 0
        assert not server.status().running
        assert connect_checked(settings).get("k") == b"v"
        assert server.status().pid != status.pid
    finally:
        server.stop()


def test_redis_stop_with_a_configured_redis_stops_nothing(redis_url: str) -> None:
    result = run_cli("redis", "stop")
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout
