"""`acmeq backup`: round trips on SQLite and PostgreSQL, verify, retention, Redis BGSAVE copies."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from typer.testing import CliRunner

from acmeq.cli import app
from acmeq.config.settings import Settings
from acmeq.errors import BackupToolMissingError, RedisBackupUnavailableError, UsageError
from acmeq.maintenance import (
    create_backup,
    list_backups,
    restore_backup,
    verify_backup,
)
from acmeq.maintenance.backup import BackupInfo, backup_dir, sha256_of
from acmeq.maintenance.backup_db import require_tool, target_of
from acmeq.maintenance.backup_redis import bgsave
from acmeq.storage import seed
from acmeq.storage import sql as db


@pytest.fixture
def settings(database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DATABASE_URL", database_url)
    return Settings.load()


def _all_rows(engine: Engine) -> dict[str, list[str]]:
    rows = {}
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
        for name, tbl in SQLModel.metadata.tables.items():
            if name in present and name != "backups":
                rows[name] = sorted(repr(tuple(r)) for r in conn.execute(sa.select(tbl)))
    return rows


def _wipe(engine: Engine) -> None:
    """Leave the test's database empty (no tables at all)."""
    target = target_of(engine)
    engine.dispose()
    if target.backend == "sqlite":
        assert target.path is not None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target.path}{suffix}").unlink(missing_ok=True)
        return
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{target.schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{target.schema}"'))


def test_backup_verify_restore_round_trip(settings: Settings, engine: Engine) -> None:
    # Given a database with demo data
    seed.seed_demo(engine, campaigns=3, donations=200)
    before = _all_rows(engine)

    # When it is backed up
    result = create_backup(settings, engine=engine)

    # Then one compressed file with a sidecar and a checksum exists, recorded in SQL too
    (info,) = result.created
    assert info.path.is_file() and info.sidecar.is_file()
    assert info.sha256 == sha256_of(info.path)
    assert (
        info.tables["donations" if info.backend == "sqlite" else f"{info.schema}.donations"] == 200
    )
    if info.backend == "sqlite":
        with gzip.open(info.path) as handle:
            assert handle.read(16) == b"SQLite format 3\x00"
    else:
        assert info.path.read_bytes()[:5] == b"PGDMP"
    with engine.connect() as conn:
        names = conn.execute(sa.text("SELECT name FROM backups")).scalars().all()
    assert names == [info.name]

    # And verify restores it into a scratch database with the same row counts
    verified = verify_backup(settings, engine=engine)
    assert verified.ok, verified.as_dict()
    assert all(expected == restored for _, expected, restored in verified.tables)
    assert list_backups(settings)[0].verified_at is not None

    # When restoring into the database that still holds the data, it is refused
    with pytest.raises(UsageError, match="--force"):
        restore_backup(settings, info.name, engine=engine)

    # When the database is emptied and the backup restored
    _wipe(engine)
    restored = restore_backup(settings, info.name, engine=engine)

    # Then every row is back as it was
    assert restored.replaced_tables == []
    assert _all_rows(engine) == before

    # And --force replaces a database holding data
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log"))
    restore_backup(settings, info.name, engine=engine, force=True)
    assert _all_rows(engine) == before


def test_verify_detects_a_changed_file(settings: Settings, engine: Engine) -> None:
    # Given a backup whose file was changed afterwards
    (info,) = create_backup(settings, engine=engine).created
    with open(info.path, "ab") as handle:
        handle.write(b"tampered")

    # Then verify fails on the checksum and restore refuses it
    result = verify_backup(settings, info.name, engine=engine)
    assert not result.ok and not result.sha256_ok
    with pytest.raises(Exception, match="sha256"):
        restore_backup(settings, info.name, engine=engine, force=True)


def _fake(settings: Settings, name: str, kind: str, age: timedelta) -> None:
    directory = backup_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"x")
    BackupInfo(
        name=name,
        kind=kind,
        format="rdb.gz" if kind == "redis" else "sqlite.gz",
        created_at=datetime.now(UTC) - age,
        size_bytes=1,
        sha256="0" * 64,
        source="x",
        directory=directory,
    ).save()


def test_retention_by_count_and_age_keeps_the_newest(
    settings: Settings, engine: Engine, database_url: str
) -> None:
    # Given keep = 2, max age 30 days, and older backups of both kinds
    cfg = dataclasses.replace(
        settings, backup=dataclasses.replace(settings.backup, keep=2, max_age=30 * 86400)
    )
    for days in (1, 2, 3):
        _fake(cfg, f"db-old-{days}.sqlite.gz", "database", timedelta(days=days))
    _fake(cfg, "redis-ancient.rdb.gz", "redis", timedelta(days=90))

    # When a new backup is created (retention runs after it)
    result = create_backup(cfg, engine=engine)

    # Then two database backups remain (the new one and the 1-day-old one) and the only Redis
    # backup stays although it is older than max_age: the newest of a kind is never deleted
    names = sorted(b.name for b in list_backups(cfg))
    assert names == sorted([result.created[0].name, "db-old-1.sqlite.gz", "redis-ancient.rdb.gz"])
    assert result.pruned is not None and result.pruned.deleted == 2 and result.pruned.kept == 1
    assert not (backup_dir(cfg) / "db-old-3.sqlite.gz.json").exists()


def test_redis_backup_of_a_local_server(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a private redis-server (local, its dir readable) with some keys
    for i in range(50):
        redis_client.set(f"k{i}", "v" * i)
    cfg = Settings.load()

    # When a Redis backup is created (no database)
    result = create_backup(cfg, database=False, redis_data=True)

    # Then the RDB written by a fresh BGSAVE is stored gzipped beside the database backups
    (info,) = result.created
    assert info.kind == "redis" and info.format == "rdb.gz"
    with gzip.open(info.path) as handle:
        assert handle.read(5) == b"REDIS"
    assert info.tables.get("db1") == 50

    # And it loads into a scratch redis-server with the same keys
    verified = verify_backup(cfg, info.name)
    assert verified.ok
    assert dict((t, r) for t, _, r in verified.tables)["db1"] == 50

    # And `backup list` shows it, and `restore` explains what to do instead
    assert [b.kind for b in list_backups(cfg)] == ["redis"]
    with pytest.raises(UsageError, match="dbfilename"):
        restore_backup(cfg, info.name)


def test_remote_redis_is_refused_with_advice() -> None:
    client = redis.Redis(host="redis.example.invalid", port=6379)
    with pytest.raises(RedisBackupUnavailableError, match=r"not on this host.*BGSAVE"):
        bgsave(client, "redis://redis.example.invalid:6379/7")


def test_missing_pg_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackupToolMissingError, match="pg_dump not found on PATH"):
        require_tool("pg_dump")


def test_cli_create_list_verify_restore(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a migrated SQLite database configured through the environment
    url = f"sqlite:///{tmp_path / 'state' / 'acmeq.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = db.make_engine(url)
    db.upgrade(engine)
    runner = CliRunner()

    # When a backup is created, listed and verified from the command line
    done = runner.invoke(app, ["backup", "create", "--json"])
    assert done.exit_code == 0, done.output
    name = json.loads(done.output)["created"][0]["name"]
    listed = runner.invoke(app, ["backup", "list", "--json"])
    assert [(b["name"], b["kind"]) for b in json.loads(listed.output)["backups"]] == [
        (name, "database")
    ]
    verified = runner.invoke(app, ["backup", "verify", name[:12]])
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output

    # Then restoring over a database with data needs --force (exit 2, one line)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO companies (name, match_ratio_bp, currency, created_at) "
                "VALUES ('x', 1, 'EUR', '2026-01-01')"
            )
        )
    engine.dispose()
    db.dispose_engines()
    refused = cli("backup", "restore", name)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"acmeq: error: refusing to restore into {url}: it holds data (companies); "
        "pass --force to replace it"
    ]
    restored = runner.invoke(app, ["backup", "restore", name, "--force"])
    assert restored.exit_code == 0, restored.output
    assert "replaced 1 table(s) holding data" in restored.output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM companies")).scalar_one() == 0
    engine.dispose()
    db.dispose_engines()

    # And `list` works with the database gone (it reads the sidecars)
    (tmp_path / "state" / "acmeq.db").unlink()
    listed = runner.invoke(app, ["backup", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [b["name"] for b in json.loads(listed.output)["backups"]] == [name]


def test_the_backup_database_job_exists_and_backs_up(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the job registry (the nightly schedule names the job)
    from acmeq.config import settings as settings_module
    from acmeq.jobs.maintenance import backup_database
    from acmeq.queues import registry_for

    registry = registry_for(settings)
    assert registry.get("backup_database").queue == "maintenance"
    assert registry.get("cleanup_expired_data").queue == "maintenance"
    monkeypatch.setattr(settings_module, "_process_settings", None)

    # When the job runs as a worker would call it
    result = json.loads(json.dumps(backup_database()))

    # Then it made a database backup and reports it
    (created,) = result["created"]
    assert created["kind"] == "database"
    assert [b.name for b in list_backups(settings)] == [created["name"]]
