"""The queue catalog and enqueue API, against a real private redis-server and real RQ workers."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from acmeq.config.settings import Settings
from acmeq.errors import JobArgumentError, UnknownJobError, UnknownQueueError, UnregisteredJobError
from acmeq.queues import AcmeqJob, Enqueuer, JobCall, catalog, queue_spec


@pytest.fixture
def enqueuer(redis_client: redis.Redis, job_modules: str) -> Enqueuer:
    return Enqueuer(Settings.load(), redis_client)


def run_worker(url: str, queue: str) -> subprocess.CompletedProcess[str]:
    """Drain one queue with RQ's own worker in a child process (burst mode)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--burst",
            "--url",
            url,
            "--worker-class",
            "rq.SimpleWorker",
            "--job-class",
            "acmeq.queues.AcmeqJob",
            "--serializer",
            "rq.serializers.JSONSerializer",
            queue,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_catalog_is_ordered_by_priority() -> None:
    names = [q.name for q in catalog(Settings.load(env={}))]
    assert names == ["payments", "notifications", "exports", "reports", "bulk", "maintenance"]
    with pytest.raises(UnknownQueueError, match="valid queues: payments, notifications"):
        queue_spec(Settings.load(env={}), "urgent")


def test_enqueue_applies_the_queue_options_and_json(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    job = enqueuer.enqueue("add", 2, b=3)
    stored = AcmeqJob.fetch(job.id, connection=redis_client)
    assert stored.origin == "payments"
    assert stored.timeout == 180
    assert stored.retries_left == 4
    assert stored.retry_intervals == [30, 60, 120, 300]
    assert stored.result_ttl == 3600
    assert stored.failure_ttl == 7 * 24 * 3600
    assert stored.func_name == "sample_jobs.add"
    raw = zlib.decompress(redis_client.hget(job.key, "data"))
    assert raw.startswith(b'["sample_jobs.add"')  # JSON, never pickle
    assert redis_client.lrange("rq:queue:payments", 0, -1) == [job.id.encode()]


def test_a_queue_with_one_try_gets_no_retry(enqueuer: Enqueuer) -> None:
    job = enqueuer.enqueue("echo", x=1)  # bulk: tries 1
    assert job.retries_left is None


def test_unknown_job_lists_the_registered_names(enqueuer: Enqueuer) -> None:
    with pytest.raises(UnknownJobError) as err:
        enqueuer.enqueue("nope")
    assert "unknown job 'nope'; registered jobs:" in str(err.value)
    assert "add" in str(err.value) and "ping" in str(err.value)


def test_arguments_that_are_not_json_safe_are_refused(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    from decimal import Decimal

    with pytest.raises(JobArgumentError, match="not JSON-safe"):
        enqueuer.enqueue("echo", amount=Decimal("10.00"))
    with pytest.raises(JobArgumentError, match="integer cents"):
        enqueuer.enqueue_many([JobCall("echo", (), {"at": datetime.now(UTC)})])
    assert redis_client.llen("rq:queue:bulk") == 0  # nothing half-written


def test_enqueue_many_writes_the_same_hash_as_rq(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    single = enqueuer.enqueue("add", 1, 2)
    (bulk_id,) = enqueuer.enqueue_many([JobCall("add", (1, 2))])
    a = redis_client.hgetall(single.key)
    b = redis_client.hgetall(Job.key_for(bulk_id))
    volatile = {b"created_at", b"enqueued_at", b"data"}
    assert {k: v for k, v in a.items() if k not in volatile} == {
        k: v for k, v in b.items() if k not in volatile
    }
    assert zlib.decompress(a[b"data"]) == zlib.decompress(b[b"data"])
    assert set(a) == set(b)


def test_enqueue_many_spreads_jobs_over_their_queues(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    calls = [JobCall("noop") for _ in range(1200)] + [JobCall("add", (i, i)) for i in range(30)]
    ids = enqueuer.enqueue_many(calls)
    assert len(ids) == len(set(ids)) == 1230
    assert redis_client.llen("rq:queue:notifications") == 1200
    assert redis_client.llen("rq:queue:payments") == 30
    assert {b"rq:queue:notifications", b"rq:queue:payments"} <= redis_client.smembers("rq:queues")


def test_jobs_from_both_paths_run_in_a_real_rq_worker(
    enqueuer: Enqueuer, redis_url: str, redis_client: redis.Redis
) -> None:
    single = enqueuer.enqueue("add", 2, 3)
    bulk = enqueuer.enqueue_many([JobCall("add", (i, 1)) for i in range(5)])
    result = run_worker(redis_url, "payments")
    assert result.returncode == 0, result.stderr
    assert AcmeqJob.fetch(single.id, connection=redis_client).return_value() == 5
    values = [AcmeqJob.fetch(i, connection=redis_client).return_value() for i in bulk]
    assert values == [1, 2, 3, 4, 5]


def test_failed_job_is_retried_with_the_queue_backoff(
    enqueuer: Enqueuer, redis_url: str, redis_client: redis.Redis
) -> None:
    job = enqueuer.enqueue("fail", "first")  # exports: 2 tries, backoff (60,)
    run_worker(redis_url, "exports")
    stored = AcmeqJob.fetch(job.id, connection=redis_client)
    assert stored.get_status() == JobStatus.SCHEDULED  # retry in 60 s, not lost
    assert stored.retries_left == 0
    scheduled = redis_client.zscore("rq:scheduled:exports", job.id)
    assert scheduled is not None
    assert 50 <= scheduled - datetime.now(UTC).timestamp() <= 61


def test_an_unregistered_function_is_never_executed(
    redis_url: str, job_modules: str, redis_client: redis.Redis, tmp_path: Any
) -> None:
    # Someone with Redis access writes a job naming an arbitrary function.
    marker = tmp_path / "pwned"
    queue = Queue("bulk", connection=redis_client, serializer=JSONSerializer)
    job = queue.enqueue("pathlib.Path.touch", str(marker))
    result = run_worker(redis_url, "bulk")
    assert not marker.exists()
    stored = Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer)
    assert stored.get_status() == JobStatus.FAILED
    assert "not a registered acmeq job" in (stored.latest_result().exc_string or "")
    assert result.returncode == 0
    with pytest.raises(UnregisteredJobError):
        AcmeqJob.fetch(job.id, connection=redis_client).func  # noqa: B018


def test_scheduled_enqueue_lands_in_rqs_scheduled_registry(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    job = enqueuer.enqueue_call(JobCall("noop", at=at))
    delayed = enqueuer.enqueue_call(JobCall("noop", delay=timedelta(seconds=30)))
    assert redis_client.zscore("rq:scheduled:notifications", job.id) == pytest.approx(
        at.timestamp(), abs=1
    )
    assert redis_client.zscore("rq:scheduled:notifications", delayed.id) is not None
    assert redis_client.llen("rq:queue:notifications") == 0


def test_rq_scheduler_works_with_the_json_job_class(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    from rq_scheduler import Scheduler

    scheduler = Scheduler(
        queue_name="notifications", connection=redis_client, job_class=AcmeqJob, queue_class=Queue
    )
    job = scheduler.enqueue_in(timedelta(seconds=-1), "sample_jobs.noop")
    assert zlib.decompress(redis_client.hget(job.key, "data")).startswith(b"[")
    scheduler.enqueue_jobs()
    assert redis_client.llen("rq:queue:notifications") == 1


def test_rq_info_reads_acmeqs_queues(enqueuer: Enqueuer, redis_url: str) -> None:
    enqueuer.enqueue_many([JobCall("noop") for _ in range(7)])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq.cli",
            "info",
            "--url",
            redis_url,
            "--serializer",
            "rq.serializers.JSONSerializer",
            "--only-queues",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "notifications" in out and "7" in out


def test_module_level_api_uses_the_environment(
    redis_url: str, job_modules: str, redis_client: redis.Redis
) -> None:
    import acmeq
    import acmeq.queues

    acmeq.queues._default = None
    job: Any = acmeq.enqueue("add", 1, 1)
    assert redis_client.exists(job.key)
    acmeq.queues._default = None
