"""`acmeq cleanup`: exactly the expired data goes, protected data stays, --dry-run changes nothing.

Each test seeds old and new data of every category on a private redis-server and on SQLite (and
PostgreSQL when ACMEQ_TEST_DATABASE_URL is set), then compares what is left with what should be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel
from typer.testing import CliRunner

from acmeq.cli import app
from acmeq.config import settings as settings_module
from acmeq.config.settings import Settings
from acmeq.errors import ConfigError, UsageError
from acmeq.jobs.maintenance import cleanup_expired_data
from acmeq.maintenance import parse_older_than, run_cleanup
from acmeq.maintenance.backup import BackupInfo, backup_dir
from acmeq.maintenance.cleanup_sql import Sweep, prune_audit_log, run_sweep, table
from acmeq.maintenance.report import Category, CategoryResult
from acmeq.storage import sql as db
from acmeq.storage.models import Campaign, Donation, Gateway, User

NOW = datetime.now(UTC)
OLD = timedelta(days=400)  # older than every default retention
RECENT = timedelta(hours=1)
CACHE_IDLE_S = 3  # the cache category's retention in these tests (idle seconds)

# What the seed puts in each category that must go (and the count a dry run reports).
EXPECTED_FOUND = {
    Category.JOB_PROGRESS: 3,
    Category.FAILED_JOBS: 5,  # 3 in RQ's failed registries + 2 SQL records
    Category.EXPORT_FILES: 3,
    Category.TEMP_FILES: 2,
    Category.CACHE: 3,
    Category.AUDIT_LOG: 2,
    Category.BACKUPS: 2,
}


@pytest.fixture
def settings(
    database_url: str, engine: Engine, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("DATABASE_URL", database_url)
    loaded = Settings.load()
    retention = dict(loaded.cleanup.retention, cache=CACHE_IDLE_S)
    return dataclasses.replace(
        loaded, cleanup=dataclasses.replace(loaded.cleanup, retention=retention)
    )


def _rq_job(client: redis.Redis, job_id: str, status: str, queue: str, ended: datetime) -> None:
    client.hset(
        f"rq:job:{job_id}",
        mapping={
            "status": status,
            "origin": queue,
            "description": "noop",
            "ended_at": ended.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    )


def _failed(
    client: redis.Redis, job_id: str, queue: str, ended: datetime, status: str = "failed"
) -> None:
    _rq_job(client, job_id, status, queue, ended)
    client.xadd(f"rq:results:{job_id}", {"type": "2", "exc_string": "boom"})
    client.zadd(f"rq:failed:{queue}", {job_id: ended.timestamp() + 86400})


def _insert(engine: Engine, name: str, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(table(name).insert(), rows)


def _progress(job_id: str, age: timedelta, status: str = "completed") -> dict[str, Any]:
    at = NOW - age
    return {
        "id": job_id,
        "job_name": "noop",
        "queue": "default",
        "status": status,
        "total": 10,
        "processed": 10,
        "failed": 0,
        "message": "x" * 50,
        "created_at": at,
        "updated_at": at,
    }


def _failed_row(job_id: str, age: timedelta) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "queue": "payments",
        "job_name": "noop",
        "exception": "ValueError: boom",
        "traceback": "Traceback ...",
        "attempts": 5,
        "failed_at": NOW - age,
    }


def _export(path: Path | None, age: timedelta, status: str = "completed") -> dict[str, Any]:
    if path is not None and status == "completed":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a,b\n" * 256)
    return {
        "kind": "donations",
        "format": "csv",
        "path": str(path or ""),
        "size_bytes": 1024,
        "row_count": 256,
        "status": status,
        "created_at": NOW - age,
    }


def _audit(age: timedelta, entity_type: str = "campaign", entity_id: str = "1") -> dict[str, Any]:
    return {
        "at": NOW - age,
        "actor": "test",
        "action": "x.changed",
        "entity_type": entity_type,
        "entity_id": entity_id,
    }


def _touch(path: Path, age: timedelta) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"0" * 100)
    stamp = (NOW - age).timestamp()
    os.utime(path, (stamp, stamp))


def _fake_backup(settings: Settings, name: str, age: timedelta) -> None:
    directory = backup_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"x" * 10)
    BackupInfo(
        name=name,
        kind="database",
        format="sqlite.gz",
        created_at=NOW - age,
        size_bytes=10,
        sha256="0" * 64,
        source="sqlite:///x",
        directory=directory,
    ).save()


def seed_everything(settings: Settings, engine: Engine, client: redis.Redis) -> None:
    """Old and new data of every category, plus old data that must be protected."""
    state = settings.state_dir
    # job progress: 3 expired; 2 recent; 2 expired but their job is still queued / running
    _insert(
        engine,
        "job_progress",
        [_progress(f"old-{i}", OLD) for i in range(3)]
        + [_progress(f"new-{i}", RECENT) for i in range(2)]
        + [_progress("queued-1", OLD, "pending"), _progress("running-1", OLD, "running")],
    )
    _rq_job(client, "queued-1", "queued", "default", NOW)
    _rq_job(client, "running-1", "started", "default", NOW)
    # failed jobs in RQ: 3 expired (two queues), 2 recent, 1 requeued meanwhile (status queued)
    for i in range(2):
        _failed(client, f"f-old-{i}", "payments", NOW - OLD)
    _failed(client, "f-old-2", "exports", NOW - OLD)
    for i in range(2):
        _failed(client, f"f-new-{i}", "payments", NOW - RECENT)
    _failed(client, "f-requeued", "payments", NOW - OLD, status="queued")
    # failed job records in SQL: 2 expired, 1 recent, 1 expired whose job was retried and runs
    _insert(
        engine,
        "failed_jobs",
        [
            _failed_row("sql-old-0", OLD),
            _failed_row("sql-old-1", OLD),
            _failed_row("sql-new", RECENT),
            _failed_row("running-1", OLD),
        ],
    )
    # exports: 2 expired with files, 1 expired whose file is gone, 1 recent, 1 still running
    exports = state / "exports"
    _insert(
        engine,
        "export_files",
        [
            _export(exports / "old-0.csv", OLD),
            _export(exports / "old-1.csv", OLD),
            _export(exports / "gone.csv", OLD, status="failed"),
            _export(exports / "new.csv", RECENT),
            _export(exports / "running.csv", OLD, status="running"),
        ],
    )
    # temporary files: 2 expired, 2 recent, 1 expired in the embedded Redis's directory
    _touch(state / "tmp" / "old.bin", timedelta(days=2))
    _touch(exports / "half.csv.part", timedelta(days=2))
    _touch(state / "tmp" / "new.bin", RECENT)
    _touch(state / "upload.tmp", RECENT)
    _touch(state / "redis" / "temp-1.rdb", timedelta(days=2))
    # audit log: 2 expired, 1 recent, 1 expired about a donation still pending
    donation_id = _pending_donation(engine)
    _insert(
        engine,
        "audit_log",
        [_audit(OLD), _audit(OLD), _audit(RECENT), _audit(OLD, "donation", str(donation_id))],
    )
    # backups: 3 older than max_age; the newest of them stays
    for i, days in enumerate((60, 50, 40)):
        _fake_backup(settings, f"db-{i}.sqlite.gz", timedelta(days=days))
    # cache and session keys: 3 idle for longer than the retention; then fresh ones
    client.set("acmeq:cache:old-1", "x" * 100)
    client.set("acmeq:cache:old-2", "x")
    client.hset("acmeq:session:old", mapping={"u": "1"})
    time.sleep(CACHE_IDLE_S + 0.5)
    client.set("acmeq:cache:new", "x")
    client.set("acmeq:cache:with-ttl", "x", ex=3600)
    client.set("other:old", "x")


def _pending_donation(engine: Engine) -> int:
    with Session(engine, expire_on_commit=False) as session:
        user = User(email="o@example.org", name="O")
        session.add(user)
        session.flush()
        campaign = Campaign(title="c", goal_minor=100, currency="EUR", organizer_id=user.id)
        session.add(campaign)
        session.flush()
        donation = Donation(
            campaign_id=campaign.id, amount_minor=500, currency="EUR", gateway=Gateway.STRIPE
        )
        session.add(donation)
        session.commit()
        assert donation.id is not None
        return donation.id


def snapshot(settings: Settings, engine: Engine, client: redis.Redis) -> dict[str, Any]:
    """Every row of every table, every Redis key with its value, every file (but the DB's)."""
    rows = {}
    with engine.connect() as conn:
        for name, tbl in SQLModel.metadata.tables.items():
            if name in sa.inspect(conn).get_table_names():
                rows[name] = sorted(repr(tuple(r)) for r in conn.execute(sa.select(tbl)))
    # DUMP or GET would refresh the keys' idle time; these commands do not touch a key.
    keys = {k: (client.ttl(k) > 0, client.memory_usage(k)) for k in client.keys("*")}
    with contextlib.suppress(redis.ResponseError):  # Redis 7 disables DEBUG by default
        keys["digest"] = client.execute_command("DEBUG", "DIGEST")
    files = {
        str(p.relative_to(settings.state_dir)): (p.stat().st_size, p.stat().st_mtime)
        for p in settings.state_dir.rglob("*")
        if p.is_file() and not p.name.startswith("acmeq.db")
    }
    return {"rows": rows, "keys": keys, "files": files}


def _ids(engine: Engine, name: str, column: str) -> set[Any]:
    with engine.connect() as conn:
        tbl = table(name)
        return set(conn.execute(sa.select(tbl.c[column])).scalars())


def test_dry_run_reports_what_a_real_run_deletes_and_changes_nothing(
    settings: Settings, engine: Engine, redis_client: redis.Redis
) -> None:
    # Given old, new and protected data in every category
    seed_everything(settings, engine, redis_client)
    before = snapshot(settings, engine, redis_client)

    # When a dry run looks at it (a fresh key read just before: on a loaded machine the seeding
    # and the snapshot may take longer than the cache retention of this test)
    redis_client.get("acmeq:cache:new")
    dry = run_cleanup(settings, engine=engine, connection=redis_client, dry_run=True)

    # Then it reports exactly the expired items and nothing changed
    assert {r.category: r.found for r in dry.results} == EXPECTED_FOUND
    assert all(r.deleted == 0 and r.error is None for r in dry.results)
    assert snapshot(settings, engine, redis_client) == before

    # When the real run follows
    redis_client.get("acmeq:cache:new")
    real = run_cleanup(settings, engine=engine, connection=redis_client)

    # Then it deletes what the dry run announced, and only that
    assert {r.category: r.deleted for r in real.results} == EXPECTED_FOUND
    assert {r.category: r.found_bytes for r in real.results} == {
        r.category: r.found_bytes for r in dry.results
    }
    assert _ids(engine, "job_progress", "id") == {"new-0", "new-1", "queued-1", "running-1"}
    assert _ids(engine, "failed_jobs", "job_id") == {"sql-new", "running-1"}
    assert set(redis_client.zrange("rq:failed:payments", 0, -1)) == {
        b"f-new-0",
        b"f-new-1",
        b"f-requeued",
    }
    assert redis_client.zcard("rq:failed:exports") == 0
    for gone in ("f-old-0", "f-old-2"):
        assert not redis_client.exists(f"rq:job:{gone}", f"rq:results:{gone}")
    assert redis_client.exists("rq:job:queued-1", "rq:job:running-1") == 2
    exports = settings.state_dir / "exports"
    assert sorted(p.name for p in exports.iterdir()) == ["new.csv"]
    assert _ids(engine, "export_files", "status") == {"completed", "running"}
    state = settings.state_dir
    assert not (state / "tmp" / "old.bin").exists()
    assert (state / "tmp" / "new.bin").exists() and (state / "upload.tmp").exists()
    assert (state / "redis" / "temp-1.rdb").exists()
    assert sorted(k.decode() for k in redis_client.keys("acmeq:*")) == [
        "acmeq:cache:new",
        "acmeq:cache:with-ttl",
    ]
    assert redis_client.exists("other:old")
    assert _ids(engine, "audit_log", "entity_type") == {"campaign", "donation"}
    assert len(_ids(engine, "audit_log", "id")) == 2
    assert sorted(p.name for p in backup_dir(settings).glob("*.gz")) == ["db-2.sqlite.gz"]

    # And a second run finds nothing more
    again = run_cleanup(settings, engine=engine, connection=redis_client, dry_run=True)
    assert sum(r.found for r in again.results) == 0


def test_only_and_older_than_narrow_the_run(
    settings: Settings, engine: Engine, redis_client: redis.Redis
) -> None:
    # Given progress rows 2 and 10 days old (both within the 30-day default)
    _insert(
        engine,
        "job_progress",
        [_progress("two", timedelta(days=2)), _progress("ten", timedelta(days=10))],
    )
    _insert(engine, "audit_log", [_audit(timedelta(days=10))])

    # When only job progress older than 7 days is cleaned
    report = run_cleanup(
        settings, engine=engine, connection=redis_client, only=["job-progress"], older_than="7d"
    )

    # Then the 10-day row goes, the 2-day row and the audit entry stay
    assert [r.category for r in report.results] == [Category.JOB_PROGRESS]
    assert report.results[0].retention_s == 7 * 86400
    assert _ids(engine, "job_progress", "id") == {"two"}
    assert len(_ids(engine, "audit_log", "id")) == 1


def test_batches_are_short_transactions_and_the_hook_sees_each_batch(engine: Engine) -> None:
    # Given 25 expired audit entries
    _insert(engine, "audit_log", [_audit(OLD, "campaign", str(i)) for i in range(25)])
    seen: list[int] = []

    # When they are pruned 10 at a time with a hook (as issue #17's hash chain will wrap it)
    result = CategoryResult(Category.AUDIT_LOG, 0)
    prune_audit_log(
        engine,
        NOW,
        result,
        batch_size=10,
        dry_run=False,
        before_delete=lambda conn, rows: seen.append(len(rows)),
    )

    # Then three transactions deleted 10 + 10 + 5 entries
    assert seen == [10, 10, 5]
    assert result.deleted == 25 and result.batches == 3
    assert _ids(engine, "audit_log", "id") == set()


def test_a_guard_keeps_rows_across_batches(engine: Engine) -> None:
    # Given 30 expired progress rows of which every third is protected
    _insert(engine, "job_progress", [_progress(f"j{i:02d}", OLD) for i in range(30)])
    protected = {f"j{i:02d}" for i in range(0, 30, 3)}

    # When swept 7 at a time
    sweep = Sweep(
        table("job_progress"),
        "updated_at",
        NOW,
        guard=lambda conn, rows: {r[0] for r in rows if r[0] in protected},
    )
    result = CategoryResult(Category.JOB_PROGRESS, 0)
    run_sweep(engine, sweep, result, batch_size=7, dry_run=False)

    # Then exactly the unprotected rows are gone (keyset paging skips the kept ones)
    assert _ids(engine, "job_progress", "id") == protected
    assert result.deleted == 20 and result.kept == 10


@pytest.fixture
def sqlite_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A migrated SQLite database configured through the environment, as the CLI reads it."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    eng = db.make_engine(url)
    db.upgrade(eng)
    yield eng
    eng.dispose()
    db.dispose_engines()


def test_cli_dry_run_json_enqueue_and_bad_input(
    sqlite_env: Engine, redis_client: redis.Redis, cli: Any
) -> None:
    # Given one expired progress row
    _insert(sqlite_env, "job_progress", [_progress("old", OLD)])
    runner = CliRunner()

    # When `acmeq cleanup --dry-run --json` runs
    done = runner.invoke(
        app, ["cleanup", "--dry-run", "--json", "--only", "job_progress,audit_log"]
    )

    # Then it reports the row and keeps it
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["dry_run"] is True
    assert [c["found"] for c in report["categories"]] == [1, 0]
    assert _ids(sqlite_env, "job_progress", "id") == {"old"}

    # And the table form ends with the summary (the table itself follows the terminal's width)
    done = runner.invoke(app, ["cleanup", "--dry-run"])
    assert done.exit_code == 0, done.output
    assert "dry run: 1 items (" in done.output and "nothing was changed" in done.output
    everything = runner.invoke(app, ["cleanup", "--dry-run", "--json"])
    assert [c["category"] for c in json.loads(everything.output)["categories"]] == [
        c.value for c in Category
    ]

    # When enqueued instead, the job id is printed and the job waits on 'maintenance'
    done = runner.invoke(app, ["cleanup", "--enqueue", "--only", "job_progress"])
    assert done.exit_code == 0, done.output
    job_id = done.output.strip().rsplit(" ", 1)[-1]
    assert redis_client.lrange("rq:queue:maintenance", 0, -1) == [job_id.encode()]

    # And bad input is one line with exit 2 (the real command, in its own process)
    done = cli("cleanup", "--only", "bogus")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "acmeq: error: --only: unknown category 'bogus'; use job_progress, failed_jobs, "
        "export_files, temp_files, cache, audit_log, backups"
    ]
    with pytest.raises(UsageError, match="--older-than: invalid duration 'soon'"):
        parse_older_than("soon")


def test_cleanup_settings_come_from_acmeq_toml(tmp_path: Path) -> None:
    # Given an acmeq.toml with a [cleanup] section
    config = tmp_path / "acmeq.toml"
    config.write_text(
        '[cleanup]\nbatch_size = 250\ncache_prefixes = ["app:cache:"]\n'
        '[cleanup.retention]\njob_progress = "14d"\naudit_log = 3600\n'
        '[backup]\nkeep = 3\nmax_age = "2d"\n'
    )

    # Then the settings carry it, other categories keep their defaults
    loaded = Settings.load(config)
    assert loaded.cleanup.retention["job_progress"] == 14 * 86400
    assert loaded.cleanup.retention["audit_log"] == 3600
    assert loaded.cleanup.retention["failed_jobs"] == 90 * 86400
    assert loaded.cleanup.batch_size == 250
    assert loaded.cleanup.cache_prefixes == ("app:cache:",)
    assert (loaded.backup.keep, loaded.backup.max_age) == (3, 2 * 86400)

    # And bad values are named, one line each
    config.write_text(
        '[cleanup]\ncache_prefixes = ["rq:"]\n[cleanup.retention]\njob_progress = "soon"\n'
    )
    with pytest.raises(ConfigError) as caught:
        Settings.load(config)
    assert caught.value.problems == [
        f"{config}: cleanup.retention.job_progress: must be a duration like 30d, 24h or 3600 "
        "(seconds), got 'soon'",
        f"{config}: cleanup.cache_prefixes: 'rq:' would match queue data, got ['rq:']",
    ]


def test_the_job_runs_the_same_cleanup(
    settings: Settings, engine: Engine, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an expired progress row, and a job process reading its settings from the environment
    _insert(engine, "job_progress", [_progress("old", OLD)])
    monkeypatch.setattr(settings_module, "_process_settings", None)

    # When the registered job runs (as a worker would call it, JSON-safe arguments)
    report = cleanup_expired_data(["job_progress"], None, False)

    # Then it returns the JSON report of what it deleted
    assert json.loads(json.dumps(report))["categories"][0]["deleted"] == 1
    assert _ids(engine, "job_progress", "id") == set()
