"""`acmeq doctor` on a good and on a broken setup (private redis-servers, a real master)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from master_support import MasterStarter

from acmeq import keys
from acmeq.master.control import MASTER_TTL_S
from acmeq.ops import doctor
from acmeq.storage.redis_client import find_redis_server

from conftest import free_port, run_cli, wait_for_redis, wait_until

CONFIG = """
[profiles.doc.supervisors.main]
queues = ["notifications"]
balance = "off"
min_processes = 1
max_processes = 1
"""


class PrivateRedis:
    """A redis-server of this test with the given configuration arguments."""

    def __init__(self, workdir: Path, *args: str) -> None:
        binary = find_redis_server()
        assert binary is not None
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        self.proc = subprocess.Popen(
            [*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.client = wait_for_redis(self.port, self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def good_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(
        tmp_path / "good", "--appendonly", "yes", "--maxmemory-policy", "noeviction"
    )
    yield server
    server.stop()


@pytest.fixture
def bad_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(
        tmp_path / "bad",
        "--appendonly",
        "no",
        "--save",
        "",
        "--maxmemory",
        "100mb",
        "--maxmemory-policy",
        "allkeys-lru",
    )
    yield server
    server.stop()


def _doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("doctor", *args, env=env, timeout=90)


def _by_name(out: str) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def test_doctor_passes_on_a_good_setup(
    good_redis: PrivateRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acmeq.toml").write_text(CONFIG)
    env = {"REDIS_URL": good_redis.url, "STRIPE_WEBHOOK_SECRET": "whsec_doctor_test_secret"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ACMEQ_JOB_MODULES", "sample_jobs")
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    starter = MasterStarter(tmp_path, good_redis.url)
    try:
        starter("doc", "doctor-host")
        # Every master offers to run the schedules; one takes the scheduler lock.
        wait_until("a scheduler leader", lambda: good_redis.client.get(keys.SCHEDULER_LEADER))
        result = _doctor(env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "all checks passed" in result.stdout
        as_json = _doctor(env, "--json")
        assert as_json.returncode == 0, as_json.stderr
        checks = _by_name(as_json.stdout)
        assert {c["status"] for c in checks.values()} <= {"ok", "skip"}
        assert checks["redis persistence"]["detail"].startswith("AOF on")
        assert "doctor-host" in checks["masters alive"]["detail"]
        assert checks["clock skew"]["status"] == "ok"
        assert checks["scheduler leader"]["status"] == "ok"
        assert "at " in checks["database"]["detail"] and "(head)" in checks["database"]["detail"]
    finally:
        starter.cleanup()


def test_doctor_fails_on_a_broken_setup(bad_redis: PrivateRedis, tmp_path: Path) -> None:
    env = {"REDIS_URL": bad_redis.url}
    result = _doctor(env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "check(s) failed" in result.stdout
    as_json = _doctor(env, "--json")
    assert as_json.returncode == 1
    checks = _by_name(as_json.stdout)
    failing = {name for name, c in checks.items() if c["status"] == "fail"}
    assert {
        "redis maxmemory",
        "redis persistence",
        "redis eviction policy",
        "masters alive",
        "database",
        "webhook secrets",
    } <= failing
    assert "allkeys-lru" in checks["redis eviction policy"]["detail"]
    assert "0.10 GB" in checks["redis maxmemory"]["detail"]
    assert "acmeq db upgrade" in checks["database"]["detail"]
    assert checks["redis version"]["status"] == "ok"
    assert checks["redis latency"]["status"] == "ok"


def test_doctor_exits_3_when_redis_is_unreachable(tmp_path: Path) -> None:
    result = _doctor({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    checks = _by_name(result.stdout)
    assert checks["redis reachable"]["status"] == "fail"


def test_clock_skew_between_masters_is_measured(bad_redis: PrivateRedis) -> None:
    """Two published masters whose clocks differ by 5 s: doctor says so."""
    client = bad_redis.client
    snaps = {}
    for name, offset in (("a", 0.0), ("b", 5.0)):
        client.set(keys.master(name), f"{name}:1", ex=MASTER_TTL_S)
        snaps[name] = {"last_seen": time.time() + offset}
    offsets = doctor.clock_offsets(client, ["a", "b"], snaps, MASTER_TTL_S)
    assert abs(offsets["a"]) < 0.5 and abs(offsets["b"] - 5.0) < 0.5
    check = doctor.clock_skew(offsets)
    assert check.status == "fail" and "(b)" in check.detail
    assert doctor.clock_skew({"a": 0.01, "b": 0.05}).status == "ok"


def test_requirement_thresholds() -> None:
    assert doctor.redis_version("4.0.14").status == "fail"
    assert doctor.redis_version("5.0.0").status == "ok"
    assert doctor.maxmemory(0).status == "ok"
    assert doctor.maxmemory(2 * 1024**3).status == "ok"
    assert doctor.maxmemory(1024**3).status == "fail"
    assert doctor.eviction("volatile-lru").status == "fail"


def test_latency_is_measured_over_100_pings(bad_redis: PrivateRedis) -> None:
    client: redis.Redis = bad_redis.client
    check = doctor.latency(client)
    assert check.status == "ok" and "over 100 pings" in check.detail
