"""Celery's benchmark app: Redis broker, no result backend (``celery -A celery_app worker``)."""

from __future__ import annotations

import os

import bench_record
from celery import Celery

QUEUE = bench_record.PEER_QUEUE

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    bench_record.noop()


@app.task(name="bench.sleep")
def sleep(seconds: float) -> None:
    bench_record.sleep(seconds)


@app.task(name="bench.warm")
def warm(round_no: int, seconds: float) -> None:
    bench_record.warm(round_no, seconds)
