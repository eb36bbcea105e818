"""`acmeq status` on real data: jobs run by real worker processes, jobs that really raised, a
paused queue, a busy worker and a master snapshot published the way a master publishes it.

The scene is built with acmeq's own enqueue API and worker processes (``python -m acmeq.worker``,
as a supervisor starts them); the command runs as a real subprocess (``run_cli``) and is read as
an operator or a monitoring probe would read it: the screen at 80 columns, the JSON document, the
``--check`` line and exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from acmeq import keys
from acmeq.config.settings import Settings
from acmeq.master import control
from acmeq.observability import status
from acmeq.queues import Enqueuer, JobCall
from acmeq.worker.process import WorkerOptions

from conftest import ROOT, run_cli, wait_until

TESTS = Path(__file__).resolve().parent


def worker_env() -> dict[str, str]:
    """The test's environment (REDIS_URL, ACMEQ_JOB_MODULES ...) with tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def start_worker(opts: WorkerOptions, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "acmeq.worker", opts.to_json()],
            env=worker_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def run_burst_workers(queues: list[str], tmp_path: Path) -> None:
    """One burst worker per queue, at once; returns when every queue is drained."""
    procs = [
        start_worker(WorkerOptions(queue=q, burst=True, name="t"), tmp_path / "w.log")
        for q in queues
    ]
    for proc in procs:
        assert proc.wait(60) == 0, (tmp_path / "w.log").read_text()


@pytest.fixture
def scene(redis_client: redis.Redis, job_modules: str, tmp_path: Path) -> Iterator[str]:
    """30 notifications done, 4 bulk jobs failed, 3 jobs waiting on paused exports, one report
    running on a busy worker that master ``m1`` lists, an idle worker on payments; yields the
    busy worker's name."""
    enqueuer = Enqueuer(Settings.load(), redis_client)
    enqueuer.enqueue_many([JobCall("noop") for _ in range(30)])
    enqueuer.enqueue_many([JobCall("explode", ("on purpose",)) for _ in range(4)])
    run_burst_workers(["notifications", "bulk"], tmp_path)
    control.set_paused(redis_client, True, queues=["exports"])
    enqueuer.enqueue_many([JobCall("fail") for _ in range(3)])
    enqueuer.enqueue("long_report", 60)
    busy = start_worker(WorkerOptions(queue="reports", name="busy"), tmp_path / "busy.log")
    idle = start_worker(WorkerOptions(queue="payments", name="idle"), tmp_path / "idle.log")
    name = f"busy.{busy.pid}"
    try:
        wait_until(
            "the reports worker to be busy",
            lambda: redis_client.hget(f"rq:worker:{name}", "state") == b"busy",
        )
        wait_until(
            "the payments worker to register",
            lambda: redis_client.scard("rq:workers:payments") == 1,
        )
        control.publish(redis_client, "m1", 4242, "host-a", _snapshot(name, busy.pid))
        yield name
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait(10)


def _snapshot(worker: str, pid: int) -> dict[str, Any]:
    """What a master publishes (acmeq.supervisor.Master.snapshot), for one supervisor."""
    proc = {"name": worker, "pid": pid, "started_at": time.time(), "generation": 1}
    return {
        "name": "m1",
        "hostname": "host-a",
        "pid": 4242,
        "profile": "production",
        "status": "running",
        "started_at": time.time() - 60,
        "supervisors": [
            {
                "name": "supervisor-1",
                "queues": ["reports", "exports"],
                "pools": [
                    {"queue": "reports", "desired": 1, "halted": None, "processes": [proc]},
                    {"queue": "exports", "desired": 0, "halted": None, "processes": []},
                ],
            }
        ],
    }


def _json() -> dict[str, Any]:
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _waiting(client: redis.Redis, queue: str = "payments", age: float = 95.0) -> None:
    """A job at the head of ``queue`` that has waited ``age`` seconds."""
    job_id = f"waiting-{queue}"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - age))
    client.hset(keys.job(job_id), mapping={"enqueued_at": stamp, "origin": queue})
    client.lpush(keys.queue(queue), job_id)


def _alert(client: redis.Redis, alert_id: str = "wait:payments", **fields: Any) -> None:
    """An active alert as the evaluator stores it; a wait alert on payments also gets the job
    that makes it true (status re-checks every alert against the queues)."""
    if alert_id == "wait:payments":
        _waiting(client)
    record = {
        "rule": "wait",
        "queue": "payments",
        "message": "oldest job waited 95 s (threshold 30 s)",
        "since": time.time() - 120,
        "severity": "critical",
    }
    client.hset(keys.ALERTS_ACTIVE, alert_id, json.dumps(record | fields))


# -- 1. what status reports -----------------------------------------------------------------------


def test_status_reports_real_queues_workers_and_masters(scene: str) -> None:
    data = _json()
    queues = {q["name"]: q for q in data["queues"]}
    # 30 jobs ran on notifications: finished, with a throughput and a runtime
    n = queues["notifications"]
    assert (n["ready"], n["finished"], n["processed_5m"], n["failed_5m"]) == (0, 30, 30, 0)
    assert n["throughput_per_min"] > 0 and n["runtime_avg_s"] is not None
    assert n["runtime_p95_s"] >= 0
    # 4 jobs raised on bulk (1 try): failed, and counted as failed runs
    b = queues["bulk"]
    assert (b["failed"], b["failed_5m"], b["processed_5m"]) == (4, 4, 0)
    # exports is paused with 3 jobs waiting, the oldest for a measurable time
    e = queues["exports"]
    assert (e["paused"], e["ready"]) == (True, 3)
    assert e["oldest_age_s"] >= 0
    assert queues["payments"]["oldest_age_s"] is None
    # an idle worker (no job yet) serves payments
    p = queues["payments"]
    assert (p["processes_busy"], p["processes_total"]) == (0, 1)
    # one report is running on the one (busy) reports worker
    r = queues["reports"]
    assert (r["started"], r["processes_busy"], r["processes_total"]) == (1, 1, 1)
    # master m1 lists that process under supervisor-1
    [m] = data["masters"]
    assert (m["name"], m["status"], m["processes_busy"], m["processes_total"]) == (
        "m1",
        "running",
        1,
        1,
    )
    [sup] = m["supervisors"]
    assert (sup["name"], sup["queues"], sup["processes_busy"]) == (
        "supervisor-1",
        ["reports", "exports"],
        1,
    )
    assert data["alerts"] == []


def test_the_screen_fits_80_columns_one_row_per_queue(scene: str) -> None:
    result = run_cli("status", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), result.stdout
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    # queue ready sched run dfr fail done age /min avg p95 procs: every cell on the queue's line
    for name in ("payments", "notifications", "reports", "bulk", "maintenance"):
        assert len(rows[name]) == 12, rows[name]
    assert rows["notifications"][6] == "30"
    assert rows["bulk"][5] == "4"
    assert rows["reports"][3] == "1" and rows["reports"][11] == "1/1"
    assert rows["payments"][11] == "0/1"
    assert rows["exports‖"][1] == "3"
    assert "‖ paused: exports" in result.stdout
    assert "m1" in rows and "supervisor-1" in result.stdout
    assert "no alerts" in result.stdout


def test_a_wide_terminal_gets_full_headers_and_numbers(redis_client: redis.Redis) -> None:
    redis_client.rpush("rq:queue:bulk", *[f"id-{i}" for i in range(12345)])
    result = run_cli("status", env={"COLUMNS": "140"})
    assert "scheduled" in result.stdout and "12,345" in result.stdout
    narrow = run_cli("status", env={"COLUMNS": "80"})
    assert " 12.3k " in narrow.stdout


def test_persistence_off_and_an_evicting_policy_are_warned(
    redis_client: redis.Redis, redis_server: Any
) -> None:
    # Given the private test server: no AOF, no RDB snapshots
    data = _json()
    assert (data["redis"]["aof_enabled"], data["redis"]["rdb_save"]) == (False, "")
    assert any("persistence is off" in w for w in data["redis"]["warnings"])
    assert "! persistence is off" in run_cli("status").stdout
    server = redis_server.client
    try:
        # When it may evict keys and saves snapshots
        server.config_set("maxmemory-policy", "allkeys-lru")
        server.config_set("save", "3600 1")
        warnings = _json()["redis"]["warnings"]
        # Then eviction is warned about, persistence no longer
        assert warnings == ["maxmemory-policy is allkeys-lru: Redis may evict jobs; use noeviction"]
    finally:
        server.config_set("maxmemory-policy", "noeviction")
        server.config_set("save", "")


# -- 2. the JSON schema ---------------------------------------------------------------------------

NUM = (int, float)
OPT_NUM = (int, float, type(None))
SCHEMA: dict[str, dict[str, Any]] = {
    "top": {
        "schema": int,
        "taken_at": NUM,
        "redis": dict,
        "queues": list,
        "masters": list,
        "alerts": list,
    },
    "redis": {
        "where": str,
        "version": str,
        "used_memory": int,
        "used_memory_human": str,
        "maxmemory": int,
        "maxmemory_policy": str,
        "aof_enabled": bool,
        "rdb_save": (str, type(None)),
        "warnings": list,
    },
    "queue": {
        "name": str,
        "priority": int,
        "ready": int,
        "scheduled": int,
        "started": int,
        "deferred": int,
        "failed": int,
        "finished": int,
        "oldest_age_s": OPT_NUM,
        "wait_threshold_s": int,
        "throughput_per_min": NUM,
        "processed_5m": int,
        "failed_5m": int,
        "runtime_avg_s": OPT_NUM,
        "runtime_p95_s": OPT_NUM,
        "processes_busy": int,
        "processes_total": int,
        "paused": bool,
    },
    "master": {
        "name": str,
        "hostname": str,
        "pid": int,
        "profile": str,
        "status": str,
        "started_at": NUM,
        "last_seen": NUM,
        "processes_busy": int,
        "processes_total": int,
        "supervisors": list,
    },
    "supervisor": {
        "name": str,
        "queues": list,
        "paused": bool,
        "processes_busy": int,
        "processes_total": int,
        "problems": list,  # pools halted or backing off after crashes (strings)
    },
    "alert": {
        "id": str,
        "rule": str,
        "queue": (str, type(None)),
        "message": str,
        "since": NUM,
        "severity": str,
        "stale_s": (*NUM, type(None)),
    },
}


def _conforms(obj: dict[str, Any], kind: str) -> None:
    assert set(obj) == set(SCHEMA[kind]), f"{kind} keys changed: {sorted(obj)}"
    for key, types in SCHEMA[kind].items():
        assert isinstance(obj[key], types), f"{kind}.{key} = {obj[key]!r}"
        if types in (int, NUM):
            assert not isinstance(obj[key], bool), f"{kind}.{key} is a bool"


def test_the_json_document_keeps_its_documented_keys_and_types(
    redis_client: redis.Redis, job_modules: str
) -> None:
    # Given a queue with jobs, a master with a paused supervisor, and an alert
    Enqueuer(Settings.load(), redis_client).enqueue("add", 1, 2)
    control.publish(redis_client, "m1", 1, "host-a", _snapshot("gone-worker", 1))
    redis_client.set("acmeq:paused:supervisor:m1:supervisor-1", "1")
    _alert(redis_client)

    data = _json()

    _conforms(data, "top")
    assert data["schema"] == 1
    _conforms(data["redis"], "redis")
    assert [q["name"] for q in data["queues"]] == [
        "payments",
        "notifications",
        "exports",
        "reports",
        "bulk",
        "maintenance",
    ]
    for q in data["queues"]:
        _conforms(q, "queue")
    [m] = data["masters"]
    _conforms(m, "master")
    [sup] = m["supervisors"]
    _conforms(sup, "supervisor")
    assert sup["paused"] is True and sup["processes_total"] == 1
    [alert] = data["alerts"]
    _conforms(alert, "alert")
    assert (alert["id"], alert["queue"]) == ("wait:payments", "payments")
    # the docs show the same keys
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    for kind in SCHEMA.values():
        for key in kind:
            assert f'"{key}"' in docs, f"docs/monitoring.md does not document {key!r}"


# -- 3. --check for probes, --watch for people ----------------------------------------------------


def test_check_exits_0_without_alerts_and_1_with_one(redis_client: redis.Redis) -> None:
    ok = run_cli("status", "--check")
    assert (ok.returncode, ok.stdout.count("\n")) == (0, 1)
    assert ok.stdout.startswith("OK: no active alerts")

    _alert(redis_client)
    alerting = run_cli("status", "--check")
    assert (alerting.returncode, alerting.stdout.count("\n")) == (1, 1)
    assert alerting.stdout.startswith("ALERT: 1 active alert: [critical] wait payments:")
    assert re.search(r"oldest job waited \d+ s", alerting.stdout)

    # an unreadable record is still an active alert, never silently ignored
    redis_client.hset(keys.ALERTS_ACTIVE, "broken", "{not json")
    broken = run_cli("status", "--check")
    assert broken.returncode == 1 and "2 active alerts" in broken.stdout
    # and the screen lists them
    screen = run_cli("status", env={"COLUMNS": "80"}).stdout
    assert "2 alerts" in screen and re.search(r"oldest job waited \d+ s", screen)


def test_an_alert_whose_condition_no_longer_holds_is_not_shown(redis_client: redis.Redis) -> None:
    # Given a backlog alert on maintenance (threshold 50) left active by an evaluator that
    # stopped, and 60 jobs still ready
    redis_client.rpush(keys.queue("maintenance"), *[f"j{i}" for i in range(60)])
    _alert(
        redis_client,
        "backlog:maintenance",
        rule="backlog",
        queue="maintenance",
        message="2001 jobs ready (threshold 50)",
        severity="warning",
    )
    # Then status shows it with today's count, and --check fails
    alerting = run_cli("status", "--check")
    assert alerting.returncode == 1
    assert "backlog maintenance: 60 jobs ready (threshold 50)" in alerting.stdout

    # When the queue is cleared (no evaluator runs to resolve the alert)
    redis_client.delete(keys.queue("maintenance"))

    # Then status shows no backlog alert and --check exits 0
    assert _json()["alerts"] == []
    cleared = run_cli("status", "--check")
    assert (cleared.returncode, cleared.stdout.startswith("OK: no active alerts")) == (0, True)
    assert "backlog" not in run_cli("status", env={"COLUMNS": "120"}).stdout


def test_an_alert_that_cannot_be_rechecked_is_marked_stale(redis_client: redis.Redis) -> None:
    # Given a failure alert on payments last refreshed 5 minutes ago, and no evaluator running
    now = time.time()
    _alert(
        redis_client,
        "failed:payments",
        rule="failed",
        message="2 payments jobs failed permanently: a, b",
        since=now - 300,
        last_event=now - 300,
        updated_at=now - 300,
    )
    # Then status still shows it (its quiet period is not over), marked stale with its age
    [alert] = _json()["alerts"]
    assert alert["id"] == "failed:payments"
    assert 290 < alert["stale_s"] < 400
    assert re.search(r" \(stale, 5 min( \d+ s)? old\)$", alert["message"])

    # When an evaluator holds the lock, the alert is current again
    redis_client.set(keys.ALERTS_LOCK, "m1", ex=15)
    [alert] = _json()["alerts"]
    assert alert["stale_s"] is None and "stale" not in alert["message"]


def test_check_exits_3_when_redis_is_unreachable() -> None:
    result = run_cli("status", "--check", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 3
    assert result.stderr.startswith("acmeq: error: cannot reach Redis at redis://127.0.0.1:1/0")


def test_watch_refreshes_until_ctrl_c_and_exits_0(redis_url: str) -> None:
    env = dict(worker_env(), COLUMNS="100", NO_COLOR="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "acmeq", "status", "--watch", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 0, err
    assert "payments" in out and "Redis" in out


def test_watch_cannot_be_combined_with_json_or_check(redis_url: str) -> None:
    for extra in ("--json", "--check"):
        result = run_cli("status", "--watch", extra)
        assert result.returncode == 2
        assert "--watch" in result.stderr


# -- 4. cost: counts and bounded reads only -------------------------------------------------------


def test_collect_costs_two_round_trips_and_no_per_job_read(
    redis_client: redis.Redis, job_modules: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 5,000 ready jobs, 500 failed ones and a master
    enqueuer = Enqueuer(Settings.load(), redis_client)
    enqueuer.enqueue_many([JobCall("echo", (), {"i": i}) for i in range(5000)])
    redis_client.zadd("rq:failed:bulk", {f"f{i}": time.time() + 60 for i in range(500)})
    control.publish(redis_client, "m1", 1, "host-a", _snapshot("w1", 1))
    trips: list[int] = []
    real_execute = redis.client.Pipeline.execute

    def counting(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        trips.append(len(self.command_stack))
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    redis_client.config_resetstat()

    # When status collects
    snap = status.collect(Settings.load(), redis_client)

    # Then it took two round trips, with a bounded number of commands
    assert snap.queues[4].ready == 5000 and snap.queues[4].failed == 500
    assert len(trips) == 2
    stats = redis_client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    assert not {"keys", "scan", "lrange", "zrange", "hscan"} & set(calls)
    assert calls.get("hget", 0) <= 6  # the oldest job of each queue
    # five minute buckets, each queue's counters (in the probe's script), one worker
    assert calls.get("hmget", 0) <= 5 + 6 + 1
    assert sum(calls.values()) < 120
