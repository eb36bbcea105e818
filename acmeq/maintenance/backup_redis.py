"""The Redis side of backups: BGSAVE, wait for it, copy the RDB file beside the database backups.

Only possible when the server's files are on this host (the embedded server, or a redis-server
on a unix socket or a loopback address whose ``CONFIG GET dir`` is readable here). For any other
Redis, :class:`~acmeq.errors.RedisBackupUnavailableError` says what to do instead.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from acmeq.errors import RedisBackupUnavailableError
from acmeq.storage.redis_client import text

REMOTE_ADVICE = (
    "back up this Redis where it runs: take the provider's snapshot, or run BGSAVE there and "
    "copy its dump.rdb (`redis-cli -h HOST --rdb FILE` fetches one over the network); "
    "see docs/maintenance.md#redis"
)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class RedisSnapshot:
    path: Path  # the server's RDB file, freshly written
    saved_at: int  # LASTSAVE, epoch seconds
    info: dict[str, Any]


def is_local(connection: redis.Redis) -> bool:
    kwargs = connection.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return True  # a unix socket is on this host by definition
    host = str(kwargs.get("host", "localhost"))
    if host in LOCAL_HOSTS or host.startswith("127."):
        return True
    try:
        return host in (socket.gethostname(), socket.getfqdn())
    except OSError:
        return False


def _config(connection: redis.Redis, name: str) -> str:
    try:
        reply = connection.config_get(name)
    except redis.ResponseError as exc:
        raise RedisBackupUnavailableError(
            f"the Redis server refuses CONFIG GET {name} ({exc}); {REMOTE_ADVICE}"
        ) from None
    value = reply.get(name) if isinstance(reply, dict) else None
    return text(value) if value is not None else ""


def bgsave(connection: redis.Redis, where: str, timeout: float = 300.0) -> RedisSnapshot:
    """Trigger BGSAVE, wait until it finished, and return the path of the RDB file it wrote."""
    if not is_local(connection):
        raise RedisBackupUnavailableError(f"Redis at {where} is not on this host; {REMOTE_ADVICE}")
    directory = Path(_config(connection, "dir"))
    rdb = directory / _config(connection, "dbfilename")
    _wait_idle(connection, timeout)
    before = int(connection.lastsave().timestamp())
    try:
        connection.bgsave()
    except redis.ResponseError as exc:  # "already in progress" (AOF rewrite): wait and retry
        if "progress" not in str(exc):
            raise
        _wait_idle(connection, timeout)
        connection.bgsave()
    deadline = time.monotonic() + timeout
    while True:
        info = connection.info("persistence")
        done = not info.get("rdb_bgsave_in_progress")
        saved = int(info.get("rdb_last_save_time", 0))
        ok = done and info.get("rdb_last_bgsave_status") == "ok"
        if ok and saved >= before and (saved > before or _fresh(rdb, before)):
            break
        if done and info.get("rdb_last_bgsave_status") not in (None, "ok"):
            raise RedisBackupUnavailableError(f"BGSAVE failed on Redis at {where}; see its log")
        if time.monotonic() > deadline:
            raise RedisBackupUnavailableError(f"BGSAVE did not finish within {timeout:.0f} s")
        time.sleep(0.05)
    if not rdb.is_file() or not _readable(rdb):
        raise RedisBackupUnavailableError(
            f"the RDB file {rdb} of Redis at {where} is not readable from this host; "
            f"{REMOTE_ADVICE}"
        )
    return RedisSnapshot(rdb, saved, dict(info))


def _wait_idle(connection: redis.Redis, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while connection.info("persistence").get("rdb_bgsave_in_progress"):
        if time.monotonic() > deadline:
            raise RedisBackupUnavailableError("a BGSAVE already running did not finish in time")
        time.sleep(0.05)


def _fresh(path: Path, since: int) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(5) == b"REDIS"
    except OSError:
        return False


def check_rdb(data_head: bytes) -> bool:
    """Whether bytes look like the start of an RDB file (``REDIS`` + 4-digit version)."""
    return data_head[:5] == b"REDIS" and data_head[5:9].isdigit()
