"""Jobs of the master's fault tests: each run appends its token to a ledger file, so a test can
prove that every job completed (at least once) whatever happened to workers, Redis or masters."""

from __future__ import annotations

import os
import time

import acmeq


def _write(path: str, token: str, seconds: float) -> str:
    time.sleep(seconds)
    # One O_APPEND write per run: lines from concurrent runs never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)
    return token


@acmeq.job(queue="notifications")
def ledger_inline(path: str, token: str, seconds: float = 0.0) -> str:
    """Sleep, then record ``token`` in the ledger (served inline in the fault tests)."""
    return _write(path, token, seconds)


@acmeq.job(queue="payments")
def ledger_threads(path: str, token: str, seconds: float = 0.0) -> str:
    """Sleep, then record ``token`` in the ledger (served by threads in the fault tests)."""
    return _write(path, token, seconds)


@acmeq.job(queue="reports")
def ledger_fork(path: str, token: str, seconds: float = 0.0) -> str:
    """Sleep, then record ``token`` in the ledger (served by fork in the fault tests)."""
    return _write(path, token, seconds)
