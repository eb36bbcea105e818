"""Plain RQ's benchmark jobs (enqueued by import path, e.g. ``rq_jobs.noop``)."""

from __future__ import annotations

import bench_record

QUEUE = bench_record.PEER_QUEUE


def noop() -> None:
    bench_record.noop()


def sleep(seconds: float) -> None:
    bench_record.sleep(seconds)


def warm(round_no: int, seconds: float) -> None:
    bench_record.warm(round_no, seconds)
