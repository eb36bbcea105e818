"""Running a master as a service: pidfile lock, logging, and detaching into the background.

These used to live in the CLI, so only `acmeq worker start --detach` could start a background
master; here :func:`acmeq.supervisor.start_detached` (Python) and the CLI share them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import psutil

from acmeq.errors import AcmeqError, UnreachableError, UsageError

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
STARTUP_TIMEOUT_S = 30.0


def lock_pidfile(path: Path, name: str) -> TextIO:
    """Lock ``path`` and write this process's pid into it; keep the returned handle open for
    as long as the master runs (closing it releases the lock). Raises UsageError naming the
    running master when another process holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open (and locked) for the master's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        other = handle.read().strip() or "?"
        handle.close()
        raise UsageError(
            f"a master named {name!r} is already running on this host (pid {other}, pidfile {path})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def release_pidfile(handle: TextIO, path: Path) -> None:
    """Remove the pidfile (while still holding its lock) and release it."""
    with contextlib.suppress(OSError):
        path.unlink()
    handle.close()


def setup_logging(level: str, log_file: Path | None = None) -> None:
    """Log to ``log_file`` (or stdout) at ``level``, replacing the root logger's handlers."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter: alembic announces each plugin and migration context at INFO (most of a
    # master's start-up log); it is shown at DEBUG only. RQ's loggers follow --log-level (RQ
    # gives them their own handlers and levels; see acmeq.master.scheduler).
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in ("rq", "rq.scheduler", "rq.worker"):
        logging.getLogger(name).setLevel(level)


@dataclass
class Detached:
    """A master running in the background, as seen by the process that started it."""

    pid: int
    log_file: Path
    _status_fd: int  # the daemon writes its exit status here when it ends

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def wait(self, timeout: float) -> int | None:
        """Wait for the master to end; its exit status, or None if still running at the end."""
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._status_fd], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(self._status_fd, 64)
            if not chunk:
                break
            data += chunk
        else:
            return None
        self.close()
        text = data.decode(errors="replace").strip()
        return int(text) if text.lstrip("-").isdigit() else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._status_fd)
        self._status_fd = -1


def detach(
    run: Callable[[Callable[[], None]], int], log_file: Path, environ: dict[str, str] | None
) -> Detached:
    """Run ``run(started)`` in a daemon (double fork, new session, stdio to ``log_file``).

    ``run`` calls ``started()`` once it is up (pidfile locked, Redis reached), and returns the
    exit status. This returns in the calling process as soon as ``started`` was called, and
    raises UsageError with the daemon's message if it failed before that.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    up_r, up_w = os.pipe()
    status_r, status_w = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(up_w)
        os.close(status_w)
        os.waitpid(first, 0)  # the intermediate child exits at once
        return _await_start(up_r, status_r, log_file)
    code = 1
    try:  # pragma: no cover - runs in the forked children (covered by the process tests)
        os.close(up_r)
        os.close(status_r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        if environ is not None:
            os.environ.clear()
            os.environ.update(environ)
        _redirect(log_file)

        def started() -> None:
            with contextlib.suppress(OSError):
                os.write(up_w, f"ok {os.getpid()}\n".encode())
                os.close(up_w)

        try:
            code = run(started)
        except Exception as exc:
            code = int(getattr(exc, "exit_code", 1))
            with contextlib.suppress(OSError):
                os.write(up_w, f"error {code} {exc}\n".encode())
            logging.getLogger("acmeq.master").error("cannot start: %s", exc)
        with contextlib.suppress(OSError):
            os.write(status_w, f"{code}\n".encode())
    finally:
        os._exit(code)


def _redirect(log_file: Path) -> None:
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(devnull)
    os.close(out)


def _await_start(up_r: int, status_r: int, log_file: Path) -> Detached:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    data = b""
    while b"\n" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([up_r], [], [], 0.5)
        if ready:
            chunk = os.read(up_r, 4096)
            if not chunk:
                break
            data += chunk
    os.close(up_r)
    line = data.decode(errors="replace").strip()
    if line.startswith("ok "):
        return Detached(int(line.split()[1]), log_file, status_r)
    os.close(status_r)
    if line.startswith("error "):
        _, code, message = [*line.split(" ", 2), "", ""][:3]
        error = {"2": UsageError, "3": UnreachableError}.get(code, AcmeqError)
        raise error(message)
    raise UsageError(f"the master did not start within {STARTUP_TIMEOUT_S:.0f} s; see {log_file}")


def make_run_dir() -> Path:
    """A master's private directory (boot reports, heartbeat files); the master removes it when
    it stops. Directories left by masters that were killed (their pid is gone) go too."""
    base = Path(tempfile.gettempdir())
    for old in base.glob("acmeq-master-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"acmeq-master-{os.getpid()}-"))
