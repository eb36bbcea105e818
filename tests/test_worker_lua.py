"""The worker's Lua scripts (acmeq/worker/lua/*.lua) against the private redis-server: every
branch of start.lua, finish.lua and metrics_flush.lua, and the contract between each script's
header table and the dataclass Python builds its ARGV from."""

from __future__ import annotations

import dataclasses
import re

import pytest
import redis

from acmeq import keys
from acmeq.observability.metrics import keys_for
from acmeq.worker import lua_scripts
from acmeq.worker.fastpath import FastPath, FinishArgs, StartArgs, encode_result
from acmeq.worker.metrics_buffer import FlushArgs, MetricsBuffer
from acmeq.worker.states import DEFAULT_JOB_TIMEOUT_S, Reply

Q = "default"
W = "w1"


def header_names(script: str) -> list[str]:
    """The ARGV names of a script's header table (``--   | 3  | name | ...``)."""
    rows = re.findall(r"^--\s+\|\s*(\d+)\s*\|\s*(\w+)\s*\|", lua_scripts.source(script), re.M)
    return [name for _, name in rows]


def lua_list(script: str, var: str) -> list[str]:
    body = re.search(var + r" = \{(.*?)\}", lua_scripts.source(script), re.S)
    assert body is not None
    return re.findall(r"'(\w+)'", body.group(1))


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_every_header_table_names_its_dataclass_fields_in_order() -> None:
    assert header_names("start") == field_names(StartArgs)
    assert lua_list("start_lib", "START_ARGS") == field_names(StartArgs)
    assert header_names("finish") == field_names(FinishArgs)
    assert lua_list("finish", "FINISH_ARGS") == field_names(FinishArgs)
    assert header_names("metrics_flush") == field_names(FlushArgs)


def test_the_default_timeout_is_one_constant() -> None:
    # The Lua files carry no timeout number of their own: Python passes DEFAULT_JOB_TIMEOUT_S.
    for name in ("start_lib", "start", "finish"):
        assert "180" not in lua_scripts.source(name)
    assert StartArgs("q", "w", "", 0.0, "e", "", "p", "", 0).default_timeout == (
        DEFAULT_JOB_TIMEOUT_S
    )


@pytest.fixture
def fast(redis_client: redis.Redis) -> FastPath:
    return FastPath(redis_client, Q, W, ["acmeq:paused:queue:default", "acmeq:paused:sup"])


def put_job(client: redis.Redis, job_id: str, **fields: str) -> None:
    client.hset(f"rq:job:{job_id}", mapping={"status": "queued", "origin": Q, **fields})
    client.rpush(f"rq:queue:{Q}", job_id)


def test_start_takes_the_next_job_and_marks_it_started_where_rq_does(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1", timeout="30")
    started = fast.start("e1")
    assert started.kind == Reply.JOB and started.job_id == "j1"
    assert started.fields is not None and started.fields[b"timeout"] == b"30"
    job = redis_client.hgetall("rq:job:j1")
    assert job[b"status"] == b"started" and job[b"worker_name"] == W.encode()
    assert redis_client.ttl("rq:job:j1") == -1
    assert redis_client.zscore(f"rq:wip:{Q}", "j1:e1") is not None
    assert redis_client.hget("rq:execution:j1:e1", "worker_name") == W.encode()
    assert 0 < redis_client.ttl("rq:execution:j1:e1") <= 90  # timeout + 60
    assert redis_client.hget(f"rq:worker:{W}", "state") == b"busy"
    assert redis_client.sismember(f"rq:worker:{W}:executions", "j1:e1")


def test_start_without_timeout_uses_the_default_and_timeout_minus_one_rq_worker_ttl(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    put_job(redis_client, "j2", timeout="-1")
    fast.start("e1")
    assert DEFAULT_JOB_TIMEOUT_S < redis_client.ttl("rq:execution:j1:e1") <= 240
    fast.start("e2")
    assert 0 < redis_client.ttl("rq:execution:j2:e2") <= 420  # RQ's DEFAULT_WORKER_TTL


def test_start_on_an_empty_queue_answers_empty(fast: FastPath) -> None:
    assert fast.start("e1").kind == Reply.EMPTY


@pytest.mark.parametrize(
    "pause", ["rq:suspended", "acmeq:paused:queue:default", "acmeq:paused:sup"]
)
def test_start_on_a_paused_queue_answers_paused_and_puts_a_blmoved_job_back(
    pause: str, fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    redis_client.set(pause, 1)
    assert fast.start("e1").kind == Reply.PAUSED
    assert redis_client.lrange(f"rq:queue:{Q}", 0, -1) == [b"j1"]
    # a job a BLMOVE already moved goes back to the head of the queue
    redis_client.lmove(f"rq:queue:{Q}", f"rq:queue:{Q}:intermediate", "LEFT", "RIGHT")
    assert fast.start("e1", "j1").kind == Reply.PAUSED
    assert redis_client.lrange(f"rq:queue:{Q}", 0, -1) == [b"j1"]
    assert redis_client.llen(f"rq:queue:{Q}:intermediate") == 0


def test_start_of_a_deleted_job_answers_gone(fast: FastPath, redis_client: redis.Redis) -> None:
    redis_client.rpush(f"rq:queue:{Q}", "ghost")
    started = fast.start("e1")
    assert (started.kind, started.job_id) == (Reply.GONE, "ghost")
    assert redis_client.zcard(f"rq:wip:{Q}") == 0


def test_start_of_a_blmoved_job_takes_it_out_of_the_intermediate_list(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    redis_client.lmove(f"rq:queue:{Q}", f"rq:queue:{Q}:intermediate", "LEFT", "RIGHT")
    assert fast.start("e1", "j1").kind == Reply.JOB
    assert redis_client.llen(f"rq:queue:{Q}:intermediate") == 0


def finish(fast: FastPath, job_id: str, exec_id: str, ttl: int, nxt: str | None = None) -> Reply:
    return fast.finish(job_id, exec_id, encode_result({"a": 1}), ttl, 0.01, 1.0, nxt).kind


def test_finish_with_a_result_ttl_records_the_result_and_expires_the_job(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    fast.start("e1")
    assert finish(fast, "j1", "e1", 500) == Reply.DONE
    assert redis_client.hget("rq:job:j1", "status") == b"finished"
    assert 0 < redis_client.ttl("rq:job:j1") <= 500
    assert 0 < redis_client.ttl("rq:results:j1") <= 500
    entry = redis_client.xrange("rq:results:j1")[0][1]
    assert entry[b"type"] == b"1" and entry[b"execution_id"] == b"e1"
    assert b"return_value" in entry
    assert redis_client.zscore(f"rq:finished:{Q}", "j1") is not None
    assert redis_client.zcard(f"rq:wip:{Q}") == 0
    assert not redis_client.exists("rq:execution:j1:e1")
    worker = redis_client.hgetall(f"rq:worker:{W}")
    assert worker[b"state"] == b"idle" and worker[b"successful_job_count"] == b"1"


def test_finish_of_a_none_result_writes_no_return_value(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    fast.start("e1")
    assert fast.finish("j1", "e1", None, 500, 0.0, 1.0, None).kind == Reply.DONE
    assert b"return_value" not in redis_client.xrange("rq:results:j1")[0][1]


def test_finish_with_result_ttl_minus_one_keeps_everything(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    fast.start("e1")
    finish(fast, "j1", "e1", -1)
    assert redis_client.ttl("rq:job:j1") == -1 and redis_client.ttl("rq:results:j1") == -1
    assert redis_client.zscore(f"rq:finished:{Q}", "j1") == float("inf")


def test_finish_with_result_ttl_zero_deletes_the_job_and_its_group_membership(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1", group_id="g1")
    redis_client.sadd("rq:group:g1", "j1", "j2")
    fast.start("e1")
    finish(fast, "j1", "e1", 0)
    assert not redis_client.exists("rq:job:j1", "rq:results:j1", "rq:executions:j1")
    assert redis_client.smembers("rq:group:g1") == {b"j2"}


def test_finish_of_a_job_with_dependents_answers_slow_and_writes_nothing(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    fast.start("e1")
    redis_client.sadd("rq:job:j1:dependents", "child")
    assert finish(fast, "j1", "e1", 500, "e2") == Reply.SLOW
    assert redis_client.hget("rq:job:j1", "status") == b"started"
    assert redis_client.zscore(f"rq:wip:{Q}", "j1:e1") is not None


def test_finish_and_start_takes_the_next_job_in_the_same_call(
    fast: FastPath, redis_client: redis.Redis
) -> None:
    put_job(redis_client, "j1")
    put_job(redis_client, "j2")
    fast.start("e1")
    started = fast.finish("j1", "e1", None, 500, 0.0, 1.0, "e2")
    assert (started.kind, started.job_id, started.exec_id) == (Reply.JOB, "j2", "e2")
    assert redis_client.hget("rq:job:j2", "status") == b"started"
    # and on an empty queue the same call says so
    assert fast.finish("j2", "e2", None, 500, 0.0, 1.0, "e3").kind == Reply.EMPTY


def test_metrics_flush_writes_successes_and_failures_counted_by_one_buffer(
    redis_client: redis.Redis,
) -> None:
    buffer = MetricsBuffer(minute_retention=600, hour_retention=7200)
    ts = 1_800_000_000.0
    buffer.record(ts, Q, "noop", 0.004, wait=0.002)
    buffer.record(ts, Q, "noop", 0.030, wait=0.001)
    buffer.record(ts, Q, "noop", 0.5, ok=False)
    buffer.flush(redis_client)
    assert not buffer.pending()
    minute, hour = keys_for(ts)
    for key in (minute, hour):
        h = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
        for prefix in (Q, "job:noop"):
            assert h[f"{prefix}|processed"] == "2" and h[f"{prefix}|failed"] == "1"
            assert float(h[f"{prefix}|runtime"]) == pytest.approx(0.534)
            assert float(h[f"{prefix}|max"]) == pytest.approx(0.030)
            assert float(h[f"{prefix}|wait"]) == pytest.approx(0.003)
            assert h[f"{prefix}|rt|5"] == "1" and h[f"{prefix}|rt|500"] == "1"
        assert h[f"{Q}|wt|2"] == "1" and h[f"{Q}|wt|1"] == "1"
    assert 0 < redis_client.ttl(minute) <= 660 and 0 < redis_client.ttl(hour) <= 10800
    stats = redis_client.hgetall(keys.stats(Q))
    assert stats[b"processed"] == b"2" and stats[b"failed"] == b"1"
    # the max only grows
    buffer.record(ts, Q, "noop", 0.010, wait=0.0)
    buffer.flush(redis_client)
    assert float(redis_client.hget(minute, f"{Q}|max") or 0) == pytest.approx(0.030)


def test_a_flush_that_fails_keeps_the_sums_for_the_next_one(redis_client: redis.Redis) -> None:
    buffer = MetricsBuffer()
    buffer.record(1_800_000_000.0, Q, "noop", 0.001, wait=0.0)
    dead = redis.Redis(port=1, socket_connect_timeout=0.2)
    with pytest.raises(redis.ConnectionError):
        buffer.flush(dead)
    assert buffer.pending()
    buffer.flush(redis_client)
    assert redis_client.hget(keys.stats(Q), "processed") == b"1"
