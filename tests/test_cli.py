"""The CLI skeleton: help, version, JSON output, one-line errors and named exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from conftest import run_cli


def test_help_lists_every_command_group() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for group in (
        "config",
        "redis",
        "db",
        "queue",
        "job",
        "demo",
        "enqueue",
        "worker",
        "failed",
        "alerts",
        "status",
        "metrics",
    ):
        assert f" {group} " in result.stdout


def test_no_arguments_shows_help_and_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "Usage" in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("acmeq ")


def test_usage_errors_are_one_line_with_exit_2() -> None:
    for args, text in [
        (["bogus"], "No such command 'bogus'"),
        (["enqueue"], "Missing argument"),
        (["config", "show", "--profile", "staging"], "unknown profile 'staging'"),
    ]:
        result = run_cli(*args)
        assert result.returncode == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("acmeq: error: "), result.stderr
        assert text in lines[0]


def test_config_validate_reports_each_problem_and_exits_2(tmp_path: Path) -> None:
    toml = tmp_path / "acmeq.toml"
    toml.write_text("[queues.payments]\ntimeout = 'abc'\n\n[queues.bulk]\nmemory = -1\n")
    result = run_cli("config", "validate", env={"ACMEQ_CONFIG": str(toml)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"acmeq: error: {toml}: queues.bulk.memory: must be a positive integer, got -1",
        f"acmeq: error: {toml}: queues.payments.timeout: must be a positive integer, got 'abc'",
    ]


def test_config_validate_accepts_a_good_file_given_with_config(tmp_path: Path) -> None:
    toml = tmp_path / "custom.toml"
    toml.write_text("[queues.payments]\ntimeout = 200\n")
    result = run_cli("--config", str(toml), "config", "validate")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_config_show_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    result = run_cli(
        "config",
        "show",
        "--json",
        env={"REDIS_PASSWORD": "hunter2", "DATABASE_URL": "postgresql://app:pw@db.internal/acme"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["values"]["redis.password"] == {"value": "***", "source": "env REDIS_PASSWORD"}
    assert data["values"]["database.url"]["value"] == "postgresql://app:***@db.internal/acme"
    assert data["values"]["queues.payments.timeout"] == {"value": 180, "source": "default"}
    assert data["queues"]["payments"]["retry_intervals"] == [30, 60, 120, 300]
    assert "hunter2" not in result.stdout
    one_profile = json.loads(
        run_cli("config", "show", "--json", "--profile", "development").stdout
    )["values"]
    assert not any(k.startswith("profiles.production.") for k in one_profile)


def test_enqueue_from_the_command_line(redis_url: str, job_modules: str) -> None:
    client = redis.Redis.from_url(redis_url)
    result = run_cli("enqueue", "add", "--arg", "a=2", "--arg", "b=40", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["queue"] == "payments" and data["status"] == "queued"
    assert client.lrange("rq:queue:payments", 0, -1) == [data["id"].encode()]

    result = run_cli("enqueue", "echo", "--json-args", '{"name": "x", "n": [1, 2]}', "--in", "5m")
    assert result.returncode == 0, result.stderr
    assert "(in 5m)" in result.stdout and ", scheduled for 20" in result.stdout
    assert client.zcard("rq:scheduled:bulk") == 1


def test_enqueue_bad_input_exits_2_and_writes_nothing(redis_url: str, job_modules: str) -> None:
    client = redis.Redis.from_url(redis_url)
    cases = [
        (["enqueue", "nope"], "unknown job 'nope'; registered jobs:"),
        (["enqueue", "add", "--arg", "1x=2"], "--arg: expected NAME=VALUE"),
        (["enqueue", "add", "--json-args", "{oops"], "--json-args: invalid JSON"),
        (["enqueue", "add", "--in", "soon"], "--in: invalid duration 'soon'"),
        (["enqueue", "add", "--at", "tomorrow"], "--at: invalid time 'tomorrow'"),
    ]
    for args, text in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert text in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert client.dbsize() == 0


def test_a_job_module_that_fails_to_import_is_a_config_error(redis_url: str) -> None:
    result = run_cli("job", "list", env={"ACMEQ_JOB_MODULES": "no_such_module_here"})
    assert result.returncode == 2
    assert "cannot import job module 'no_such_module_here'" in result.stderr


def test_job_list_and_queue_list(redis_url: str, job_modules: str) -> None:
    jobs = json.loads(run_cli("job", "list", "--json").stdout)
    assert {
        "name": "add",
        "queue": "payments",
        "path": "sample_jobs.add",
        "description": "Return a + b (argument passing).",
    } in jobs
    run_cli("enqueue", "noop")
    queues = json.loads(run_cli("queue", "list", "--json").stdout)
    assert [q["name"] for q in queues][:2] == ["payments", "notifications"]
    assert next(q for q in queues if q["name"] == "notifications")["ready"] == 1


def test_version_matches_the_package_metadata() -> None:
    from importlib.metadata import version

    import acmeq

    assert acmeq.__version__ == version("acmeq")
