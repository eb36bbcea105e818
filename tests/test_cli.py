"""The CLI skeleton: help, version, JSON output, one-line errors and named exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from conftest import ROOT, fast_client, free_port, run_cli


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


# -- issue #10: what a new user meets -------------------------------------------------------------


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("acmeq: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# 1. the suite never hangs: ports every server accepts, probes that fail fast


def test_free_ports_fit_every_server_and_a_closed_port_fails_fast() -> None:
    # Given ports handed out by the test helpers
    ports = [free_port() for _ in range(50)]
    # Then they are distinct and low enough for redis-server in cluster mode (its bus: +10000)
    assert len(set(ports)) == 50
    assert all(20000 <= p <= 55535 - 10000 for p in ports)
    # and a ping to one that nothing listens on fails at once instead of retrying for seconds
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        fast_client(ports[0]).ping()
    assert time.monotonic() - started < 2


# 2. no tracebacks


def test_a_bad_job_id_is_one_line_and_exit_2(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for bad in ("has space", "", "a:b"):
        result = run_cli("enqueue", "ping", "--job-id", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert f"invalid job id {bad!r}" in _one_error_line(result)
    assert client.dbsize() == 0


def test_a_redis_url_pointing_at_another_service_is_exit_3(tmp_path: Path) -> None:
    # Given REDIS_URL pointing at a server that speaks a text protocol (an SMTP greeting)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def greet() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"220 smtp.example.test ESMTP\r\n")
                conn.settimeout(1)
                conn.recv(100)

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    try:
        result = run_cli("queue", "list", env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    # Then it is named for what it is, in one line, with exit code 3
    assert result.returncode == 3
    line = _one_error_line(result)
    assert line.startswith(f"acmeq: error: not a Redis server at redis://127.0.0.1:{port}/0")
    assert "220 smtp.example.test ESMTP" in line


# 4. ids you can copy


def _failed(client: redis.Redis, job_id: str) -> None:
    """Put an enqueued job into its failed registry, as a worker would (no worker needed)."""
    from rq.job import JobStatus
    from rq.registry import FailedJobRegistry
    from rq.serializers import JSONSerializer

    from acmeq.queues import AcmeqJob

    job = AcmeqJob.fetch(job_id, connection=client)
    client.lrem(f"rq:queue:{job.origin}", 0, job_id)
    job.set_status(JobStatus.FAILED)
    FailedJobRegistry(job.origin, connection=client, serializer=JSONSerializer).add(
        job, exc_string="Traceback (most recent call last):\nRuntimeError: boom"
    )


@pytest.mark.timeout(240)  # a dozen CLI processes: minutes on a loaded machine
def test_ids_are_never_cut_and_unique_prefixes_name_a_job(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    # Given three jobs, two of whose ids share their first 8 characters
    ids = ["abcdef01-1111-2222-3333-444444444444", "abcdef01-9999-2222-3333-444444444444"]
    for job_id in ids:
        assert run_cli("enqueue", "ping", "--job-id", job_id).returncode == 0
    other = json.loads(run_cli("enqueue", "ping", "--json").stdout)["id"]
    _failed(client, ids[0])
    _failed(client, other)

    # When failed jobs are listed into a pipe on a narrow "terminal" width
    listing = run_cli("failed", "list", env={"COLUMNS": "40"})
    # Then every id is printed whole
    assert ids[0] in listing.stdout and other in listing.stdout, listing.stdout
    assert "…" not in listing.stdout

    # and a unique prefix of 6+ characters names a job, as in git
    shown = run_cli("job", "show", other[:8], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == other
    failed = run_cli("failed", "show", other[:6], "--json")
    assert json.loads(failed.stdout)["id"] == other
    longer = run_cli("job", "show", "abcdef01-1", "--json")
    assert json.loads(longer.stdout)["id"] == ids[0]
    # while an ambiguous one is refused naming the matches, and an unknown one is not found
    ambiguous = run_cli("job", "show", "abcdef01")
    assert ambiguous.returncode == 2
    line = _one_error_line(ambiguous)
    assert "job id prefix 'abcdef01' is ambiguous" in line and ids[0] in line and ids[1] in line
    unknown = run_cli("job", "show", "ffffff")
    assert unknown.returncode == 1
    assert "'ffffff' not found" in _one_error_line(unknown)
    # and a prefix shorter than 6 characters is taken as a whole id
    assert run_cli("job", "show", other[:5]).returncode == 1


@pytest.mark.timeout(240)  # a dozen CLI processes: minutes on a loaded machine
def test_job_cancel_by_prefix_and_of_an_unknown_job(redis_url: str) -> None:
    assert run_cli("db", "upgrade").returncode == 0
    job_id = json.loads(run_cli("enqueue", "ping", "--json").stdout)["id"]
    cancelled = run_cli("job", "cancel", job_id[:7])
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {job_id} cancelled before it ran" in cancelled.stdout
    missing = run_cli("job", "cancel", "nonexistent")
    assert missing.returncode == 1
    assert _one_error_line(missing) == "acmeq: error: job 'nonexistent' not found"


# 5. tables that use the terminal, and full values in a pipe


def test_piped_output_is_never_cut() -> None:
    # Given stdout is a pipe and no COLUMNS is exported (as in `acmeq config show | grep ...`)
    result = run_cli("config", "show", env={"COLUMNS": ""})
    assert result.returncode == 0, result.stderr
    # Then no value is shortened and every row is on its own line
    assert "…" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if "max_processes" in line]
    keys = json.loads(run_cli("config", "show", "--json").stdout)["values"]
    assert len(rows) == len([k for k in keys if k.endswith(".max_processes")]) > 3
    assert all(line.split()[0].endswith("max_processes") for line in rows)


def test_a_terminal_table_keeps_ids_whole_at_any_width() -> None:
    from io import StringIO

    from rich.console import Console

    from acmeq.commands import render

    job_id = "a1b68868-fa8d-4c3e-9a6e-1234567890ab"
    for width in (40, 80, 120):
        out = StringIO()
        terminal = Console(file=out, width=width, force_terminal=True, color_system=None)
        table = render.table("id", "queue", "exception", ids=["id"], fold=["exception"])
        table.add_row(job_id, "notifications", "RuntimeError: " + "x" * 100)
        terminal.print(render.keep_ids(table))
        assert job_id in out.getvalue(), (width, out.getvalue())


# 6. configuration mistakes are caught


def test_config_validate_reports_a_queue_no_profile_serves(tmp_path: Path) -> None:
    toml = tmp_path / "acmeq.toml"
    toml.write_text("[queues.paymnts]\ntimeout = 100\n")
    result = run_cli("--config", str(toml), "config", "validate")
    assert result.returncode == 2
    assert _one_error_line(result) == (
        "acmeq: error: queues.paymnts: no supervisor of any profile (development, production) "
        "serves queue 'paymnts': add it to a supervisor's queues, or set "
        "queues.paymnts.unserved = true"
    )
    toml.write_text("[queues.side]\nunserved = true\n")
    ok = run_cli("--config", str(toml), "config", "validate")
    assert ok.returncode == 0, ok.stderr


def test_arguments_the_job_does_not_take_are_refused_at_enqueue_time(
    redis_url: str, job_modules: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    # Given the CLI
    result = run_cli("enqueue", "ping", "--arg", "bogus=1")
    assert result.returncode == 2
    assert _one_error_line(result) == (
        "acmeq: error: job 'ping' does not accept these arguments (got an unexpected keyword "
        "argument 'bogus'); it takes ping(echo='pong')"
    )
    # and the Python API
    import acmeq
    from acmeq import queues
    from acmeq.errors import JobArgumentError

    queues._default = None
    try:
        with pytest.raises(JobArgumentError, match="missing a required argument: 'b'"):
            acmeq.enqueue("add", 1)
        with pytest.raises(JobArgumentError, match="does not accept"):
            queues.enqueue_many([queues.JobCall("add", (1, 2), {"c": 3})])
    finally:
        queues._default = None
    assert client.dbsize() == 0


# 7. small things


def test_a_group_without_a_subcommand_prints_its_help_once() -> None:
    for args in ([], ["worker"], ["queue"]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stdout.count("Usage:") == 1, (args, result.stdout)


@pytest.mark.timeout(240)  # a dozen CLI processes: minutes on a loaded machine
def test_at_in_the_past_is_refused_and_a_naive_time_is_local(redis_url: str) -> None:
    past = run_cli("enqueue", "ping", "--at", "2020-01-01T09:00:00Z")
    assert past.returncode == 2
    assert "in the past; pass --allow-past" in _one_error_line(past)
    allowed = run_cli("enqueue", "ping", "--at", "2020-01-01T09:00:00Z", "--allow-past", "--json")
    assert allowed.returncode == 0, allowed.stderr
    # A time without an offset is the local time of TZ (here UTC+9)
    tokyo = run_cli("enqueue", "ping", "--at", "2099-01-01T09:00", "--json", env={"TZ": "JST-9"})
    assert json.loads(tokyo.stdout)["scheduled_for"] == "2099-01-01T00:00:00+00:00"


def _publish_master(client: redis.Redis, name: str, alive: bool, started_ago: float) -> None:
    from acmeq.master import control

    now = time.time()
    control.publish(
        client,
        name,
        4242,
        "host-a",
        {
            "hostname": "host-a",
            "pid": 4242,
            "profile": "production",
            "status": "running",
            "started_at": now - started_ago,
            "supervisors": [],
        },
    )
    if alive:  # a heartbeat that outlives a slow CLI start on a loaded machine
        client.persist(f"acmeq:master:{name}")
    else:
        client.delete(f"acmeq:master:{name}")


def test_a_killed_master_is_listed_as_gone_with_a_frozen_uptime(redis_url: str) -> None:
    from acmeq import keys

    client = redis.Redis.from_url(redis_url)
    # Given a master that published a snapshot 600 s after it started, then was killed -9
    _publish_master(client, "m1", alive=True, started_ago=600)
    client.delete(keys.master("m1"))
    # Then `worker list` says it is gone and when it was last seen, not an uptime that grows
    listed = run_cli("worker", "list")
    assert re.search(r"gone \(last seen \d+s ago, after 10m up\)", listed.stdout), listed.stdout
    assert ", up " not in listed.stdout


def test_redis_stop_refuses_while_a_master_runs_on_the_embedded_redis() -> None:
    from acmeq.config.settings import Settings
    from acmeq.storage.redis_client import EmbeddedRedis, connect_checked

    settings = Settings.load()  # no Redis configured: the embedded one under the test's state dir
    server = EmbeddedRedis(settings.state_dir)
    try:
        _publish_master(connect_checked(settings), "m1", alive=True, started_ago=5)
        refused = run_cli("redis", "stop")
        assert refused.returncode == 2
        assert "refusing to stop the embedded Redis: master m1 is running on it" in (
            _one_error_line(refused)
        )
        assert server.status().running
        forced = run_cli("redis", "stop", "--force")
        assert forced.returncode == 0, forced.stderr
        assert not server.status().running
    finally:
        server.stop()


def test_log_level_warning_silences_rq_scheduler_and_alembic(redis_client: redis.Redis) -> None:
    import logging

    from acmeq.master.daemon import setup_logging
    from acmeq.master.scheduler import Scheduler

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("alembic", "rq", "rq.scheduler", "rq.worker")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        setup_logging("WARNING")
        Scheduler(["payments"], redis_client, "m1")._scheduler()  # RQ sets its logger's level
        assert not logging.getLogger("rq.scheduler").isEnabledFor(logging.INFO)
        assert not logging.getLogger("alembic.runtime.plugins").isEnabledFor(logging.INFO)
        setup_logging("INFO")
        assert not logging.getLogger("alembic.runtime.plugins").isEnabledFor(logging.INFO)
        assert logging.getLogger("rq.scheduler").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def test_enqueue_watch_says_when_no_worker_serves_the_queue(redis_url: str) -> None:
    assert run_cli("db", "upgrade").returncode == 0
    env = dict(os.environ, NO_COLOR="1", COLUMNS="120")
    proc = subprocess.Popen(
        [sys.executable, "-m", "acmeq", "enqueue", "ping", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # bounded by the test timeout
    finally:
        proc.kill()
        proc.wait(10)
    assert lines[0].startswith("enqueued ping on maintenance as ")
    assert lines[1].strip() == (
        "no worker serves queue maintenance right now: the job waits until one starts "
        "(acmeq worker start)"
    )


# 8. the README's Python example works as written


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.timeout(240)  # a dozen CLI processes: minutes on a loaded machine
def test_the_readme_python_example_works_as_written(redis_url: str, tmp_path: Path) -> None:
    # Given the README's two Python blocks written where their first lines say
    jobs, signup = _readme_python_blocks()[:2]
    assert jobs.startswith("# myapp/jobs.py") and signup.startswith("# signup.py")
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(jobs.replace(": ...", ": print(user_id)"))
    (tmp_path / "signup.py").write_text(signup)
    env = dict(os.environ, ACMEQ_JOB_MODULES="myapp.jobs", PYTHONPATH=str(tmp_path))
    # When the script runs as the README says
    ran = subprocess.run(
        [sys.executable, "signup.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    # Then a worker process can load and run the job it enqueued
    client = redis.Redis.from_url(redis_url)
    (job_id,) = [m.decode() for m in client.lrange("rq:queue:notifications", 0, -1)]
    performed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, redis; from acmeq.queues import AcmeqJob; "
            f"job = AcmeqJob.fetch({job_id!r}, connection=redis.Redis.from_url({redis_url!r})); "
            "job.perform()",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert performed.returncode == 0, performed.stderr
    assert performed.stdout.strip() == "42"


def test_a_job_declared_in_main_is_refused_when_enqueued(redis_url: str, tmp_path: Path) -> None:
    jobs, signup = _readme_python_blocks()[:2]
    script = tmp_path / "all_in_one.py"
    script.write_text(jobs + "\n" + signup)
    ran = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode != 0
    assert (
        "job 'send_welcome' is defined in __main__ (the script being run), which no worker can "
        "import: move it into a module and name that module in jobs.modules (acmeq.toml) or "
        "ACMEQ_JOB_MODULES"
    ) in ran.stderr
    assert redis.Redis.from_url(redis_url).dbsize() == 0
