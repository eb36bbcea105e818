"""A throw-away redis-server that loads an RDB file, to prove a Redis backup can be restored."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from acmeq.errors import BackupError
from acmeq.storage.redis_client import find_redis_server

LOAD_TIMEOUT_S = 60.0


def load_rdb(directory: Path, dbfilename: str) -> dict[str, int]:
    """Start redis-server on ``directory/dbfilename`` (unix socket only); return keys per DB."""
    binary = find_redis_server()
    if binary is None:
        raise BackupError("no redis-server binary to verify the Redis backup with")
    sock = directory / "verify.sock"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(directory),
            "--dbfilename",
            dbfilename,
            "--appendonly",
            "no",
            "--save",
            "",
            "--databases",
            "16",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
    try:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise BackupError("redis-server refused to load the RDB file: it is damaged")
            try:
                if client.info("persistence").get("loading") in (0, "0"):
                    break
            except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BackupError(f"the RDB file did not load within {LOAD_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        keyspace = client.info("keyspace")
        return {db: int(v.get("keys", 0)) for db, v in keyspace.items() if isinstance(v, dict)}
    finally:
        client.close()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
