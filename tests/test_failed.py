"""`acmeq failed ...` and `acmeq job show`, against real failures of real worker processes.

Every failed job here really raised inside a real ``python -m acmeq.worker`` process (burst mode,
the three execution models), so RQ recorded it the way it records production failures: the
``rq:failed:<queue>`` registry, the job hash, the failure Result with its traceback, and the
permanent ``failed_jobs`` row in SQL. The commands run as real subprocesses (``run_cli``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from sqlalchemy.engine import Engine

from acmeq import pii
from acmeq.config.settings import Settings
from acmeq.ops.failed import (
    SCAN_CAP,
    FailedFilter,
    find_failed,
    list_failed,
    make_filter,
    retry_failed,
)
from acmeq.queues import AcmeqJob, Enqueuer, JobCall
from acmeq.worker.process import WorkerOptions

from conftest import run_cli

TESTS = Path(__file__).resolve().parent
DONOR_EMAIL = "jane.doe@example.org"
IBAN = "DE89370400440532013000"


# -- helpers (test_queue_control.py uses them too) -------------------------------------------------


def drain(queue: str, mode: str = "inline") -> None:
    """Run a real burst worker process on ``queue`` until the queue is empty."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    opts = WorkerOptions(queue=queue, mode=mode, burst=True, name="t")
    proc = subprocess.run(
        [sys.executable, "-m", "acmeq.worker", opts.to_json()],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, bytes | None, bool]]:
    """Every key with its type, its DUMP (the full value) and whether it has a TTL."""
    return {
        key: (client.type(key), client.dump(key), client.pttl(key) > 0)
        for key in client.scan_iter(count=1000)
    }


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = run_cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acmeq: error: "), result.stderr
    assert text in lines[0], lines[0]


def failed_ids(client: redis.Redis, queue: str) -> set[str]:
    return {m.decode() for m in client.zrange(f"rq:failed:{queue}", 0, -1)}


def queued(client: redis.Redis, queue: str) -> list[str]:
    return [m.decode() for m in client.lrange(f"rq:queue:{queue}", 0, -1)]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def one_try(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """payments and exports fail for good at once (their backoff would keep tests waiting)."""
    toml = tmp_path / "acmeq.toml"
    toml.write_text("[queues.payments]\ntries = 1\n\n[queues.exports]\ntries = 1\n")
    monkeypatch.setenv("ACMEQ_CONFIG", str(toml))


@pytest.fixture
def enqueuer(redis_client: redis.Redis, job_modules: str, one_try: None) -> Enqueuer:
    return Enqueuer(Settings.load(), redis_client)


@dataclass
class Failures:
    bulk: list[str]  # explode("disk <i> on fire"): ValueError
    exports: list[str]  # fail("export <i> broke"): RuntimeError
    payments: list[str]  # decline(42, <donor e-mail>, ...): RuntimeError naming the e-mail

    @property
    def all(self) -> list[str]:
        return self.bulk + self.exports + self.payments


def make_failures(enqueuer: Enqueuer) -> Failures:
    """Jobs that really raise, run by real workers in each execution model."""
    bulk = [enqueuer.enqueue("explode", f"disk {i} on fire").id for i in range(3)]
    exports = [enqueuer.enqueue("fail", f"export {i} broke").id for i in range(2)]
    payments = [
        enqueuer.enqueue(
            "decline",
            42,
            DONOR_EMAIL,
            donor_name="Jane Doe",
            iban=IBAN,
            amount_minor=2500,
            campaign_id=7,
            note=f"donor asked for a receipt at {DONOR_EMAIL}",
        ).id
    ]
    drain("bulk", "inline")
    drain("exports", "fork")
    drain("payments", "threads")
    return Failures(bulk, exports, payments)


@pytest.fixture
def failures(enqueuer: Enqueuer) -> Failures:
    return make_failures(enqueuer)


# -- failed list -----------------------------------------------------------------------------------


def test_failed_list_shows_every_real_failure_newest_first(
    failures: Failures, redis_client: redis.Redis
) -> None:
    # When listing every failed job
    listed = cli_json("failed", "list")

    # Then all six failures are there, newest first, with their queue, job and exception
    jobs = listed["jobs"]
    assert {j["id"] for j in jobs} == set(failures.all)
    times = [j["failed_at"] for j in jobs]
    assert times == sorted(times, reverse=True)
    assert all(t.endswith("+00:00") for t in times)  # ISO 8601, UTC
    by_id = {j["id"]: j for j in jobs}
    assert by_id[failures.bulk[1]]["queue"] == "bulk"
    assert by_id[failures.bulk[1]]["job"] == "explode"
    assert by_id[failures.bulk[1]]["function"] == "sample_jobs.explode"
    assert by_id[failures.bulk[1]]["exception"] == "ValueError: disk 1 on fire"
    assert by_id[failures.exports[0]]["exception"] == "RuntimeError: export 0 broke"
    assert by_id[failures.bulk[1]]["worker"].startswith("t.")
    # and the donor's e-mail in an exception message is masked
    assert by_id[failures.payments[0]]["exception"] == (
        "RuntimeError: card declined for donation 42 (***@***)"
    )
    assert DONOR_EMAIL not in json.dumps(listed)
    assert listed["examined"] == 6 and listed["truncated"] is False


def test_failed_list_filters_and_limits(failures: Failures) -> None:
    def ids(*args: str) -> set[str]:
        return {j["id"] for j in cli_json("failed", "list", *args)["jobs"]}

    assert ids("--queue", "bulk") == set(failures.bulk)
    assert ids("--queue", "bulk", "--queue", "exports") == set(failures.bulk + failures.exports)
    assert ids("--job", "fail") == set(failures.exports)
    assert ids("--job", "sample_jobs.decline") == set(failures.payments)  # a path works too
    assert ids("--exception", "DISK 2") == {failures.bulk[2]}
    assert ids("--exception", "runtimeerror") == set(failures.exports + failures.payments)
    assert ids("--since", "1h") == set(failures.all)
    assert ids("--before", "1h") == set()
    assert len(ids("--limit", "2")) == 2

    # The table says what it shows
    table = run_cli("failed", "list", "--limit", "2")
    assert table.returncode == 0, table.stderr
    assert "failed at (UTC)" in table.stdout
    assert "showing the 2 newest (--limit 2)" in table.stdout


def test_since_and_before_split_failures_by_time(enqueuer: Enqueuer) -> None:
    # Given failures before and after a cut
    early = [enqueuer.enqueue("explode", "early").id for _ in range(2)]
    drain("bulk")
    cut = datetime.now(UTC)
    time.sleep(0.05)
    late = [enqueuer.enqueue("explode", "late").id for _ in range(2)]
    drain("bulk")

    # Then --since and --before (ISO 8601) select each side
    since = cli_json("failed", "list", "--since", cut.isoformat())["jobs"]
    before = cli_json("failed", "list", "--before", cut.isoformat())["jobs"]
    assert {j["id"] for j in since} == set(late)
    assert {j["id"] for j in before} == set(early)


# -- failed show / job show ------------------------------------------------------------------------


def test_failed_show_masks_personal_data_and_keeps_ids_and_amounts(failures: Failures) -> None:
    # When showing the declined payment
    job_id = failures.payments[0]
    shown = cli_json("failed", "show", job_id)

    # Then ids and amounts are there, personal data is not
    assert shown["args"] == {
        "args": [42, "***"],  # donation_id kept; donor_email masked by its parameter name
        "kwargs": {
            "donor_name": "***",
            "iban": "***",
            "amount_minor": 2500,
            "campaign_id": 7,
            "note": "donor asked for a receipt at ***@***",
        },
    }
    # and the exception, traceback, attempts and times
    assert shown["status"] == "failed" and shown["source"] == "redis"
    assert shown["queue"] == "payments" and shown["job"] == "decline"
    assert shown["exception"] == "RuntimeError: card declined for donation 42 (***@***)"
    assert "Traceback (most recent call last)" in shown["traceback"]
    assert "sample_jobs.py" in shown["traceback"]
    assert shown["attempts"] == 1 and shown["tries"] == 1
    assert shown["enqueued_at"] <= shown["started_at"] <= shown["failed_at"]
    assert shown["runtime_s"] is not None and shown["runtime_s"] >= 0
    assert shown["worker"].startswith("t.")
    assert shown["expires_at"] > shown["failed_at"]
    # and nothing personal anywhere, in JSON or on the terminal
    text = run_cli("failed", "show", job_id)
    assert text.returncode == 0, text.stderr
    for secret in (DONOR_EMAIL, "Jane Doe", IBAN):
        assert secret not in json.dumps(shown)
        assert secret not in text.stdout
    assert "card declined for donation 42" in text.stdout
    assert "Traceback" in text.stdout


def test_job_show_describes_jobs_in_every_state(
    failures: Failures, enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given a finished, a waiting and a scheduled job besides the failed ones
    done = enqueuer.enqueue("add", 2, 3)
    drain("payments")
    waiting = enqueuer.enqueue("echo", email=DONOR_EMAIL, donation_id=9)
    later = enqueuer.enqueue_call(JobCall("noop", delay=timedelta(hours=1)))

    finished = cli_json("job", "show", done.id)
    assert finished["status"] == "finished"
    assert finished["result"] == 5
    assert finished["args"] == {"args": [2, 3], "kwargs": {}}
    assert finished["worker"].startswith("t.")
    assert finished["exception"] is None

    queued_job = cli_json("job", "show", waiting.id)
    assert queued_job["status"] == "queued" and queued_job["queue"] == "bulk"
    assert queued_job["args"]["kwargs"] == {"email": "***", "donation_id": 9}
    assert queued_job["started_at"] is None

    scheduled = cli_json("job", "show", later.id)
    assert scheduled["status"] == "scheduled"
    assert scheduled["scheduled_for"] > datetime.now(UTC).isoformat()

    failed = cli_json("job", "show", failures.bulk[0])
    assert failed["status"] == "failed"
    assert failed["exception"] == "ValueError: disk 0 on fire"
    assert failed["retries_left"] is None and failed["tries"] == 1

    text = run_cli("job", "show", done.id)
    assert text.returncode == 0 and "finished" in text.stdout and "result" in text.stdout


def test_unknown_ids_are_one_line_not_found_with_exit_1(failures: Failures) -> None:
    one_line_error(run_cli("job", "show", "no-such-job"), 1, "job 'no-such-job' not found")
    one_line_error(run_cli("failed", "show", "no-such-job"), 1, "'no-such-job' not found")
    one_line_error(run_cli("failed", "retry", "no-such-job"), 1, "'no-such-job' not found")
    one_line_error(run_cli("job", "show", "bad id/../x"), 1, "not found")


def test_bad_filters_exit_2_naming_the_bad_value(failures: Failures) -> None:
    one_line_error(
        run_cli("failed", "list", "--queue", "urgent"),
        2,
        "unknown queue 'urgent'; valid queues: payments, notifications, exports",
    )
    one_line_error(
        run_cli("failed", "retry", "--all", "--job", "explod"),
        2,
        "unknown job 'explod'; registered jobs: add, ",
    )
    one_line_error(
        run_cli("failed", "list", "--since", "yesterday"), 2, "--since: invalid time 'yesterday'"
    )
    one_line_error(
        run_cli("failed", "flush", "--before", "2026-13-01"), 2, "--before: invalid time"
    )
    one_line_error(run_cli("failed", "list", "--since", "1h", "--before", "2h"), 2, "not before")
    one_line_error(run_cli("failed", "list", "--limit", "0"), 2, "--limit")
    one_line_error(run_cli("failed", "retry"), 2, "say which failed jobs to retry")
    one_line_error(run_cli("failed", "retry", failures.bulk[0], "--all"), 2, "not both")
    one_line_error(
        run_cli("failed", "retry", failures.bulk[0], "--queue", "bulk"), 2, "with --all only"
    )


# -- retry -----------------------------------------------------------------------------------------


def test_retry_with_filters_moves_exactly_the_matching_jobs(
    failures: Failures, redis_client: redis.Redis
) -> None:
    # When retrying every failed job of bulk whose exception mentions "disk 1" or "disk 2"
    result = cli_json("failed", "retry", "--all", "--queue", "bulk", "--exception", "disk 1")
    result2 = cli_json("failed", "retry", "--all", "--job", "explode", "--exception", "disk 2")

    # Then exactly those two are back on their queue, queued, and nothing else moved
    moved = {failures.bulk[1], failures.bulk[2]}
    assert [j["id"] for j in result["jobs"]] == [failures.bulk[1]]
    assert [j["id"] for j in result2["jobs"]] == [failures.bulk[2]]
    assert result["dry_run"] is False and result["skipped"] == []
    assert queued(redis_client, "bulk") == [failures.bulk[1], failures.bulk[2]]
    assert failed_ids(redis_client, "bulk") == {failures.bulk[0]}
    assert failed_ids(redis_client, "exports") == set(failures.exports)
    assert failed_ids(redis_client, "payments") == set(failures.payments)
    for job_id in moved:
        job = AcmeqJob.fetch(job_id, connection=redis_client)
        assert job.get_status() == "queued"
        assert job.started_at is None and job.ended_at is None
        assert redis_client.ttl(job.key) == -1  # no longer expires while it waits

    # And a worker runs them again: they raise again and are failed again (one more try each)
    drain("bulk")
    assert failed_ids(redis_client, "bulk") == set(failures.bulk)
    again = cli_json("failed", "show", failures.bulk[1])
    assert again["attempts"] == 2  # the first run and the operator's retry


def test_retry_by_id_and_of_everything(failures: Failures, redis_client: redis.Redis) -> None:
    # By id: the text output says what was done
    result = run_cli("failed", "retry", failures.exports[1], failures.payments[0])
    assert result.returncode == 0, result.stderr
    assert "retried 2 failed jobs (exports: 1, payments: 1)" in result.stdout
    assert queued(redis_client, "exports") == [failures.exports[1]]
    assert queued(redis_client, "payments") == [failures.payments[0]]

    # A job that is no longer failed cannot be retried again, and nothing else moves
    one_line_error(
        run_cli("failed", "retry", failures.exports[0], failures.exports[1]),
        1,
        f"job {failures.exports[1]!r} is not a failed job (status queued)",
    )
    assert failed_ids(redis_client, "exports") == {failures.exports[0]}

    # --all without filters: every remaining failed job, oldest failure first
    everything = cli_json("failed", "retry", "--all")
    assert everything["count"] == 4
    assert sum(redis_client.zcard(f"rq:failed:{q}") for q in ("bulk", "exports", "payments")) == 0
    assert queued(redis_client, "bulk") == failures.bulk  # the order they failed in


def test_retry_is_rq_requeue_except_for_the_ttl(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given two identical failed jobs
    a = enqueuer.enqueue("explode", "same").id
    b = enqueuer.enqueue("explode", "same").id
    drain("bulk")

    # When RQ requeues one and acmeq retries the other
    FailedJobRegistry(
        "bulk", connection=redis_client, job_class=AcmeqJob, serializer=JSONSerializer
    ).requeue(a)
    outcome = retry_failed(redis_client, find_failed(Settings.load(), redis_client, [b]))

    # Then both hashes say the same, apart from their times
    assert outcome.done == [b] and outcome.gone == []
    ha, hb = redis_client.hgetall(f"rq:job:{a}"), redis_client.hgetall(f"rq:job:{b}")
    assert ha.keys() == hb.keys()
    # (last_heartbeat: when each job's worker last beat for it, a time of its run)
    stamps = {b"created_at", b"enqueued_at", b"last_heartbeat"}
    assert {k: v for k, v in ha.items() if k not in stamps} == {
        k: v for k, v in hb.items() if k not in stamps
    }
    assert queued(redis_client, "bulk") == [a, b]
    # but only acmeq's retry removes the failure TTL RQ left on the hash
    assert redis_client.ttl(f"rq:job:{a}") > 0
    assert redis_client.ttl(f"rq:job:{b}") == -1


def test_two_retries_racing_retry_a_job_once(failures: Failures, redis_client: redis.Redis) -> None:
    settings = Settings.load()
    first = find_failed(settings, redis_client, failures.bulk)
    second = find_failed(settings, redis_client, failures.bulk)
    assert sorted(retry_failed(redis_client, first).done) == sorted(failures.bulk)
    late = retry_failed(redis_client, second)
    assert late.done == [] and sorted(late.gone) == sorted(failures.bulk)
    assert sorted(queued(redis_client, "bulk")) == sorted(failures.bulk)


# -- dry runs --------------------------------------------------------------------------------------


def test_dry_runs_change_nothing_in_redis(failures: Failures, redis_client: redis.Redis) -> None:
    # Given a queue with waiting jobs besides the failures
    enqueuer = Enqueuer(Settings.load(), redis_client)
    enqueuer.enqueue_many([JobCall("echo", kwargs={"n": i}) for i in range(5)])
    before = snapshot(redis_client)

    # When every destructive command runs with --dry-run
    retry = run_cli("failed", "retry", "--all", "--dry-run")
    retry_some = run_cli("failed", "retry", "--all", "--queue", "bulk", "--dry-run")
    retry_ids = cli_json("failed", "retry", failures.bulk[0], "--dry-run")
    flush = run_cli("failed", "flush", "--dry-run")
    flush_json = cli_json("failed", "flush", "--exception", "disk", "--dry-run")
    clear = run_cli("queue", "clear", "bulk", "--dry-run")

    # Then they say exactly what would happen, exit 0
    assert retry.returncode == 0, retry.stderr
    assert "would retry 6 failed jobs (bulk: 3, exports: 2, payments: 1)" in retry.stdout
    assert "would retry 3 failed jobs (bulk: 3)" in retry_some.stdout
    assert retry_ids["dry_run"] is True and [j["id"] for j in retry_ids["jobs"]] == [
        failures.bulk[0]
    ]
    assert "would delete 6 failed jobs (bulk: 3, exports: 2, payments: 1)" in flush.stdout
    assert "failed_jobs records are kept" in flush.stdout
    assert flush_json["count"] == 3 and flush_json["action"] == "flush"
    assert "would delete 5 waiting jobs from queue bulk" in clear.stdout
    # and Redis is exactly as it was: same keys, same values, same expiries
    assert snapshot(redis_client) == before


# -- flush -----------------------------------------------------------------------------------------


def test_flush_without_a_terminal_needs_yes(failures: Failures, redis_client: redis.Redis) -> None:
    before = snapshot(redis_client)
    one_line_error(
        run_cli("failed", "flush", "--queue", "bulk", input=""),  # stdin: a pipe, not a TTY
        2,
        "refusing to flush 3 failed jobs without confirmation: stdin is not a terminal; pass --yes",
    )
    assert snapshot(redis_client) == before


def test_flush_with_filters_deletes_exactly_the_matching_jobs(
    failures: Failures, redis_client: redis.Redis
) -> None:
    result = cli_json("failed", "flush", "--job", "fail", "--exception", "export 1", "--yes")
    assert [j["id"] for j in result["jobs"]] == [failures.exports[1]]
    assert failed_ids(redis_client, "exports") == {failures.exports[0]}
    assert not [k for k in redis_client.keys("*") if failures.exports[1].encode() in k]
    assert redis_client.exists(f"rq:job:{failures.exports[0]}")


def test_flush_empties_redis_and_keeps_the_sql_record(
    database_url: str,
    engine: Engine,
    enqueuer: Enqueuer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given real failures recorded by the workers in SQL (SQLite, and PostgreSQL when configured)
    monkeypatch.setenv("DATABASE_URL", database_url)
    failures = make_failures(enqueuer)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT job_id, args FROM failed_jobs")).all()
    assert sorted(r[0] for r in rows) == sorted(failures.all)

    # When every failed job is flushed
    result = run_cli("failed", "flush", "--yes")

    # Then Redis holds nothing of them any more
    assert result.returncode == 0, result.stderr
    assert "deleted 6 failed jobs (bulk: 3, exports: 2, payments: 1)" in result.stdout
    assert sum(redis_client.zcard(f"rq:failed:{q}") for q in ("bulk", "exports", "payments")) == 0
    for job_id in failures.all:
        assert not [k for k in redis_client.keys("*") if job_id.encode() in k], job_id
    assert cli_json("failed", "list")["jobs"] == []
    # but SQL still does, untouched
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT job_id, args FROM failed_jobs")).all() == rows
    # and `failed show` reads it from there, masked like the rest
    shown = cli_json("failed", "show", failures.payments[0])
    assert shown["source"] == "database" and shown["status"] == "failed"
    assert shown["args"]["args"] == [42, "***"]
    assert shown["args"]["kwargs"]["iban"] == "***"
    assert shown["exception"] == "RuntimeError: card declined for donation 42 (***@***)"
    assert DONOR_EMAIL not in json.dumps(shown)
    text = run_cli("failed", "show", failures.payments[0])
    assert "failed_jobs table" in text.stdout


def test_a_retried_job_that_fails_again_is_recorded_again(
    database_url: str,
    engine: Engine,
    enqueuer: Enqueuer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    job_id = enqueuer.enqueue("explode", "twice").id
    drain("bulk")
    cli_json("failed", "retry", job_id)
    drain("bulk", "fork")
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM failed_jobs WHERE job_id = :id"), {"id": job_id}
        ).scalar()
    assert count == 2
    assert failed_ids(redis_client, "bulk") == {job_id}


# -- bounded reads ---------------------------------------------------------------------------------


def clone_failures(client: redis.Redis, job_id: str, queue: str, n: int) -> None:
    """Copy one real failed job (hash and results stream, byte for byte) ``n`` times."""
    job_dump = client.dump(f"rq:job:{job_id}")
    result_dump = client.dump(f"rq:results:{job_id}")
    score = client.zscore(f"rq:failed:{queue}", job_id)
    assert job_dump and result_dump and score
    for start in range(0, n, 5000):
        pipe = client.pipeline(transaction=False)
        members = {}
        for i in range(start, min(start + 5000, n)):
            clone = f"clone-{i:06d}"
            pipe.restore(f"rq:job:{clone}", 0, job_dump)
            pipe.restore(f"rq:results:{clone}", 0, result_dump)
            members[clone] = score - 1 - i
        pipe.zadd(f"rq:failed:{queue}", members)
        pipe.execute()


@pytest.mark.timeout(180)
def test_listing_stays_bounded_with_100000_failed_jobs(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    # Given 100,000 failed jobs
    original = enqueuer.enqueue("explode", "one of many").id
    drain("bulk")
    clone_failures(redis_client, original, "bulk", 99_999)
    settings = Settings.load()

    # When listing the newest 50
    started = time.perf_counter()
    page = list_failed(settings, redis_client, FailedFilter(), limit=50)
    took = time.perf_counter() - started

    # Then one page of hashes was read, not 100,000
    assert len(page.entries) == 50 and page.entries[0].id == original
    assert page.examined <= 500 and not page.truncated
    assert took < 2.0, took

    # When a filter matches nothing, the scan stops at the cap and says so
    nothing = make_filter(settings, exception="no such text")
    started = time.perf_counter()
    page = list_failed(settings, redis_client, nothing, limit=50)
    took = time.perf_counter() - started
    assert page.entries == [] and page.truncated and page.examined == SCAN_CAP
    assert took < 20.0, took
    result = run_cli("failed", "list", "--exception", "no such text")
    assert result.returncode == 0, result.stderr
    assert f"stopped after examining {SCAN_CAP} failed jobs" in result.stdout
    capped = cli_json("failed", "list", "--exception", "no such text", "--scan-limit", "1000")
    assert capped["examined"] == 1000 and capped["truncated"] is True


# -- the masker ------------------------------------------------------------------------------------


def test_personal_keys_are_recognised_and_ids_and_amounts_kept() -> None:
    for key in (
        "email", "donorEmail", "donor_email", "first_name", "lastName", "phone_number", "iban",
        "card_last4", "billing-address", "ip", "api_token", "password", "client_secret",
        "donor", "emails", "cardnumber",
    ):  # fmt: skip
        assert pii.is_personal_key(key), key
    for key in ("donor_id", "donation_id", "user_ids", "amount_minor", "currency", "count"):
        assert not pii.is_personal_key(key), key


def test_masking_reaches_nested_values_and_free_text() -> None:
    data = {
        "donation_id": 5,
        "amount_minor": 1000,
        "donor": {"name": "Jane", "email": DONOR_EMAIL},
        "items": [{"email": "x@y.io", "qty": 2}, f"mail {DONOR_EMAIL} now"],
        "memo": f"refund to {IBAN} please",
        "phone": None,
    }
    assert pii.mask(data) == {
        "donation_id": 5,
        "amount_minor": 1000,
        "donor": "***",
        "items": [{"email": "***", "qty": 2}, "mail ***@*** now"],
        "memo": "refund to *** please",
        "phone": None,
    }
    assert pii.mask_call(["a@b.co", 3], {}, ["recipient", "count"]) == {
        "args": ["***", 3],
        "kwargs": {},
    }
