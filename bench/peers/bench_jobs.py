"""acmeq's benchmark jobs, declared like any application's (``ACMEQ_JOB_MODULES=bench_jobs``).

All on one queue, because an acmeq worker serves one queue.
"""

from __future__ import annotations

import bench_record

import acmeq

QUEUE = "notifications"


@acmeq.job(queue=QUEUE)
def bench_noop() -> None:
    """Benchmark: do nothing (but record)."""
    bench_record.noop()


@acmeq.job(queue=QUEUE)
def bench_sleep(seconds: float) -> None:
    """Benchmark: sleep, then record."""
    bench_record.sleep(seconds)


@acmeq.job(queue=QUEUE)
def bench_warm(round_no: int, seconds: float) -> None:
    """Benchmark: warm-up job."""
    bench_record.warm(round_no, seconds)


@acmeq.job(queue=QUEUE)
def bench_probe(sent: float) -> None:
    """Benchmark: latency probe."""
    bench_record.probe(sent)
