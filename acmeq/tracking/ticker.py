"""The progress ticker: one thread per process raising the flush flag of every live tracker.

Every :data:`FLUSH_INTERVAL_S` it marks each tracker due (its next ``advance()`` flushes) and lets
it look at its cancel request (:meth:`Watched._watch`); a tracker whose grace period is over is
stopped by raising :class:`~acmeq.errors.JobCancelled` in the job's thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Protocol

from acmeq.errors import JobCancelled

log = logging.getLogger("acmeq.progress")

FLUSH_INTERVAL_S = 0.5  # at most ~2 writes per second per job


class Watched(Protocol):
    """What the ticker needs of a tracker (:class:`acmeq.progress.Tracker`)."""

    job_id: str
    _thread_id: int
    _due: bool
    _forced: bool
    _forced_at: float

    def _watch(self, ticker: Ticker) -> None: ...


def raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    # None clears an exception that was set but not raised yet.
    arg = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), arg)


class Ticker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.trackers: set[Watched] = set()
        self.running = False

    def add(self, tracker: Watched) -> None:
        with self.lock:
            self.trackers.add(tracker)
            if not self.running:
                self.running = True
                threading.Thread(target=self._run, name="acmeq-progress", daemon=True).start()

    def remove(self, tracker: Watched, *, clear: bool = True) -> bool:
        """Forget ``tracker``; return whether a forced stop was fired at it.

        ``clear``: the job's thread is leaving the tracker, so a forced stop not raised yet is
        moot and is withdrawn (it must not land in the worker's code after the job).
        """
        with self.lock:
            self.trackers.discard(tracker)
            forced = tracker._forced
            if forced and clear:
                raise_in_thread(tracker._thread_id, None)
            return forced

    def force(self, tracker: Watched) -> None:
        with self.lock:
            if tracker in self.trackers and not tracker._forced:
                tracker._forced = True
                tracker._forced_at = time.monotonic()
                raise_in_thread(tracker._thread_id, JobCancelled)

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            with self.lock:
                if not self.trackers:
                    self.running = False
                    return
                trackers = list(self.trackers)
            for tracker in trackers:
                tracker._due = True
                try:
                    tracker._watch(self)
                except Exception:  # never let one tracker's trouble stop the others' ticks
                    log.exception("progress ticker: job %s", tracker.job_id)


_ticker = Ticker()


def current() -> Ticker:
    """This process's ticker (a forked child gets a fresh one)."""
    return _ticker


def _reset_ticker_in_child() -> None:
    # The thread does not survive a fork and its lock may have been held: start afresh.
    global _ticker
    _ticker = Ticker()


os.register_at_fork(after_in_child=_reset_ticker_in_child)
