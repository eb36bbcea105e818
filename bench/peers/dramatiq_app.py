"""Dramatiq's benchmark actors on a RedisBroker (``dramatiq dramatiq_app -p 2 -t N``)."""

from __future__ import annotations

import os

import bench_record
import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = bench_record.PEER_QUEUE

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_noop", max_retries=0)
def noop() -> None:
    bench_record.noop()


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_sleep", max_retries=0)
def sleep(seconds: float) -> None:
    bench_record.sleep(seconds)


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_warm", max_retries=0)
def warm(round_no: int, seconds: float) -> None:
    bench_record.warm(round_no, seconds)
