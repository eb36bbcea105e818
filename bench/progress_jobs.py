"""The work and the job bench/progress.py measures (``ACMEQ_JOB_MODULES=progress_jobs``).

The per-item work is what an export job does for each donation: build the donation's record as a
dict and write it as a CSV row (about 2-3 us on the reference machine). The tracked loop does the
same plus ``p.advance(1)``; the untracked loop does nothing else.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import acmeq
from acmeq.progress import Tracker, track

CURRENCIES = ("EUR", "USD", "GBP", "CHF")
STATUSES = ("completed", "completed", "completed", "refunded")


def rows(n: int, tracker: Tracker | None = None) -> tuple[float, float]:
    """Build and write ``n`` donation CSV rows (advancing ``tracker`` per row).

    Returns (wall seconds, CPU seconds of the whole process: the tracker's ticker thread and its
    flushes count too).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    started = time.perf_counter()
    cpu = time.process_time()
    if tracker is None:
        for i in range(n):
            _row(writer, i)
            if i % 10_000 == 0:
                buffer.seek(0)
                buffer.truncate()
    else:
        for i in range(n):
            _row(writer, i)
            if i % 10_000 == 0:
                buffer.seek(0)
                buffer.truncate()
            tracker.advance(1)
    return time.perf_counter() - started, time.process_time() - cpu


def _row(writer: Any, i: int) -> None:
    donation = {
        "id": i,
        "campaign_id": 1 + i % 200,
        "donor": f"donor{i % 10_007}@acme.test",
        "amount_minor": 500 + (i * 7919) % 99_500,
        "currency": CURRENCIES[i % 4],
        "status": STATUSES[i % 4],
    }
    writer.writerow(
        (
            donation["id"],
            donation["campaign_id"],
            donation["donor"],
            f"{donation['amount_minor'] / 100:.2f}",
            donation["currency"],
            donation["status"],
        )
    )


@acmeq.job(queue="bulk")
def bench_progress_rows(n: int, tracked: bool) -> dict[str, float]:
    """Write ``n`` donation rows, tracked or not; return the loop's wall and CPU seconds."""
    if not tracked:
        wall, cpu = rows(n)
    else:
        with track(total=n, meta={"bench": True}) as p:
            wall, cpu = rows(n, p)
    return {"wall": wall, "cpu": cpu}
