"""Small operating-system helpers shared by the worker and the master: the parent-death signal,
asynchronous exceptions in threads, and a traceback as text.

The master (:mod:`acmeq.supervisor`) uses :func:`set_parent_death_signal` too: one ``prctl``
call site for the whole package.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import signal
import sys
import traceback

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux only).

    Called by the process itself at the start of its ``main()`` (never through ``preexec_fn``,
    which is unsafe while the parent runs other threads) and by a forked work horse. Returns
    whether the call succeeded; elsewhere than on Linux it does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        return int(_libc().prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0
    return False


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded once (find_library may run ldconfig): a forked work horse reuses the parent's.
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def raise_in_thread(thread_id: int, exc: type[BaseException]) -> bool:
    """Raise ``exc`` asynchronously in the thread ``thread_id`` (at its next bytecode; a thread
    blocked in C, e.g. in ``time.sleep``, sees it only when the call returns)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc)
    )
    return int(done) == 1


def format_exc() -> str:
    """The exception being handled, formatted as RQ stores it (with its traceback)."""
    return "".join(traceback.format_exception(*sys.exc_info()))
