"""The job bench/autoscale.py runs (``ACMEQ_JOB_MODULES=autoscale_jobs``)."""

from __future__ import annotations

import time

import acmeq


@acmeq.job(queue="reports")
def bench_sleep_10ms() -> None:
    """Sleep 10 ms: an I/O-bound job of known length."""
    time.sleep(0.01)
