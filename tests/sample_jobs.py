"""Jobs the tests declare the way a platform team would (`[jobs] modules`)."""

from __future__ import annotations

import time
from typing import Any

import acmeq


@acmeq.job(queue="notifications")
def noop() -> None:
    """Do nothing (throughput tests)."""


@acmeq.job(queue="payments")
def add(a: int, b: int) -> int:
    """Return a + b (argument passing)."""
    return a + b


@acmeq.job(queue="reports")
def sleep_for(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    time.sleep(seconds)
    return seconds


@acmeq.job(queue="exports")
def fail(message: str = "boom") -> None:
    """Always raise (failure handling)."""
    raise RuntimeError(message)


@acmeq.job(queue="bulk")
def echo(**kwargs: Any) -> dict[str, Any]:
    """Return the keyword arguments it was given."""
    return kwargs
