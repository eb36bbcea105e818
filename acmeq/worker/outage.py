"""Waiting out a Redis outage: bounded exponential backoff with jitter, logged once per change.

Any Redis error inside the worker's serving loop ends up here instead of crashing the process;
the loop retries when :meth:`Outage.wait` returns and calls :meth:`Outage.ok` after the next
success, which logs the recovery once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0  # resume within a few seconds of Redis returning

log = logging.getLogger("acmeq.worker")


class Outage:
    """Shared by the threads of one worker process."""

    def __init__(self, stopped: threading.Event, tick: Callable[[], None] = lambda: None) -> None:
        self._stopped = stopped
        self._tick = tick  # called while waiting (the liveness file)
        self._lock = threading.Lock()
        self.down_since = 0.0  # monotonic; 0: Redis is reachable
        self._failures = 0

    @property
    def down(self) -> bool:
        return self.down_since > 0.0

    def wait(self, exc: BaseException, interruptible: bool = True) -> None:
        """Redis failed: log if this starts an outage, then sleep the next backoff step
        (cut short by a stop unless not ``interruptible``)."""
        with self._lock:
            if not self.down_since:
                self.down_since = time.monotonic()
                log.warning("Redis unreachable (%s: %s): waiting for it", type(exc).__name__, exc)
            self._failures += 1
            step = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(self._failures - 1, 8))
        delay = step * (0.5 + random.random() / 2)
        end = time.monotonic() + delay
        while not (interruptible and self._stopped.is_set()):
            self._tick()
            left = end - time.monotonic()
            if left <= 0:
                break
            if interruptible:
                self._stopped.wait(min(left, 0.5))
            else:
                time.sleep(min(left, 0.5))

    def ok(self) -> None:
        """Redis answered: log the end of an outage once."""
        if not self.down_since:
            return
        with self._lock:
            if self.down_since:
                log.warning(
                    "Redis is back after %.1f s: resuming", time.monotonic() - self.down_since
                )
                self.down_since = 0.0
                self._failures = 0
