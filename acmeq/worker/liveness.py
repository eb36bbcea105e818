"""The worker's side of the hung-worker contract with its master: a file whose mtime says until
when the worker is known to be alive (gunicorn's worker tmp file, without Redis).

- not running a job (idle, between jobs, waiting for Redis): mtime = now, at least every 2 s;
- starting a job in inline or fork mode: mtime = now + the job's timeout + 5 s (the job's own
  timeout ends it before that);
- threads mode: the main thread, which runs no job, keeps touching with mtime = now.

The master kills a worker whose mtime is older than now - its hung timeout.
"""

from __future__ import annotations

import contextlib
import os
import time

TOUCH_EVERY_S = 0.5  # well inside the contract's 2 s
NO_TIMEOUT_HORIZON_S = 365 * 24 * 3600.0  # a job without timeout: "alive" for a long time
BUSY_MARGIN_S = 5.0


class Liveness:
    """Touches the heartbeat file (or does nothing without one)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._last = 0.0  # monotonic time of the last "now" touch
        self._ahead = False  # the mtime is in the future (a job is running)
        if path:
            with contextlib.suppress(OSError), open(path, "a"):
                pass
            self.alive(force=True)

    def _touch(self, t: float) -> None:
        if self.path:
            with contextlib.suppress(OSError):
                os.utime(self.path, (t, t))

    def alive(self, force: bool = False) -> None:
        """Not in a job: mtime = now (rate-limited, unless a job's mtime must be taken back)."""
        if not self.path:
            return
        mono = time.monotonic()
        if force or self._ahead or mono - self._last >= TOUCH_EVERY_S:
            self._touch(time.time())
            self._last = mono
            self._ahead = False

    def busy(self, timeout: float) -> None:
        """A job with this timeout (s; <= 0: none) starts now."""
        if not self.path:
            return
        horizon = timeout if timeout > 0 else NO_TIMEOUT_HORIZON_S
        self._touch(time.time() + horizon + BUSY_MARGIN_S)
        self._ahead = True
