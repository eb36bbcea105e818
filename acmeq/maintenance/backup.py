"""`acmeq backup create|list|verify|restore` and the ``backup_database`` job.

A backup is a file in the backup directory (``[backup] dir``, default ``<state dir>/backups``)
plus a JSON sidecar ``<file>.json`` holding what is needed to list, verify and restore it with
no database at all: kind, format, sha256, size, source, row counts per table. The ``backups``
table records the same (best effort: a database that is down does not stop a backup).

Kinds and formats:

- ``database`` / ``sqlite.gz``: SQLite's online backup API, then gzip.
- ``database`` / ``pg_dump``: pg_dump custom format (compressed by pg_dump itself).
- ``redis`` / ``rdb.gz``: the RDB file a fresh BGSAVE wrote, gzipped (local Redis only).

Retention (``[backup] keep`` and ``max_age``) applies per kind after every ``create`` and in
`acmeq cleanup`; the newest backup of each kind is never deleted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings, mask_url
from acmeq.errors import BackupError, UsageError
from acmeq.maintenance import backup_db, backup_redis
from acmeq.maintenance.report import CategoryResult
from acmeq.storage.models_maintenance import BackupKind

SIDECAR = ".json"
CHUNK = 1 << 20


def backup_dir(settings: Settings) -> Path:
    return settings.backup.dir or settings.state_dir / "backups"


@dataclass
class BackupInfo:
    """One backup as its sidecar describes it."""

    name: str
    kind: str
    format: str
    created_at: datetime
    size_bytes: int
    sha256: str
    source: str
    backend: str = ""  # sqlite, postgresql, redis
    schema: str | None = None
    tables: dict[str, int] = field(default_factory=dict)
    revision: str | None = None
    verified_at: datetime | None = None
    directory: Path = Path(".")

    @property
    def path(self) -> Path:
        return self.directory / self.name

    @property
    def sidecar(self) -> Path:
        return self.directory / (self.name + SIDECAR)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "format": self.format,
            "created_at": self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "source": self.source,
            "backend": self.backend,
            "schema": self.schema,
            "tables": self.tables,
            "revision": self.revision,
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
            "path": str(self.path),
        }

    @classmethod
    def load(cls, sidecar: Path) -> BackupInfo:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        verified = data.get("verified_at")
        return cls(
            name=data["name"],
            kind=data["kind"],
            format=data["format"],
            created_at=datetime.fromisoformat(data["created_at"]),
            size_bytes=int(data["size_bytes"]),
            sha256=data["sha256"],
            source=data.get("source", ""),
            backend=data.get("backend", ""),
            schema=data.get("schema"),
            tables={k: int(v) for k, v in (data.get("tables") or {}).items()},
            revision=data.get("revision"),
            verified_at=datetime.fromisoformat(verified) if verified else None,
            directory=sidecar.parent,
        )

    def save(self) -> None:
        part = self.sidecar.with_name(self.sidecar.name + ".part")
        data = {k: v for k, v in self.as_dict().items() if k != "path"}
        part.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        part.replace(self.sidecar)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _gzip(source: Path, dest: Path, level: int) -> None:
    with open(source, "rb") as src, gzip.open(dest, "wb", compresslevel=level) as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def _gunzip(source: Path, dest: Path) -> None:
    with gzip.open(source, "rb") as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


# -- create ------------------------------------------------------------------------------------


@dataclass
class CreateResult:
    created: list[BackupInfo] = field(default_factory=list)
    pruned: CategoryResult | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": [b.as_dict() for b in self.created],
            "pruned": self.pruned.as_dict() if self.pruned else None,
            "notes": self.notes,
        }


def create_backup(
    settings: Settings,
    *,
    database: bool = True,
    redis_data: bool = False,
    prune: bool = True,
    engine: Engine | None = None,
    connection: redis.Redis | None = None,
) -> CreateResult:
    """Back up the database and/or Redis into the backup directory, then apply retention."""
    from acmeq.storage import sql as db

    if not database and not redis_data:
        raise UsageError("nothing to back up: give the database, Redis, or both")
    directory = backup_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    result = CreateResult()
    if engine is None and database:
        engine = db.engine_for(settings)
    if database:
        assert engine is not None
        db.check_reachable(engine)
        info = create_database_backup(settings, engine, directory)
        result.created.append(info)
        _record(engine, info, result.notes)
    if redis_data:
        from acmeq.storage.redis_client import connect_checked, describe

        client = connection if connection is not None else connect_checked(settings)
        info = create_redis_backup(settings, client, describe(settings), directory)
        result.created.append(info)
        if engine is not None:
            _record(engine, info, result.notes)
    if prune:
        result.pruned = CategoryResult(_backups_category(), settings.backup.max_age)
        prune_backups(settings, result.pruned, engine=engine)
    return result


def _backups_category() -> Any:
    from acmeq.maintenance.report import Category

    return Category.BACKUPS


def create_database_backup(settings: Settings, engine: Engine, directory: Path) -> BackupInfo:
    from acmeq.storage import sql as db

    target = backup_db.target_of(engine)
    now = datetime.now(UTC)
    level = settings.backup.compress_level
    if target.backend == "sqlite":
        assert target.path is not None
        name, fmt = f"db-{_stamp(now)}.sqlite.gz", "sqlite.gz"
        with tempfile.TemporaryDirectory(dir=directory, prefix=".snapshot-") as tmp:
            snapshot = Path(tmp) / "snapshot.sqlite"
            tables = backup_db.sqlite_snapshot(target.path, snapshot)
            part = directory / (name + ".part")
            _gzip(snapshot, part, level)
    else:
        name, fmt = f"db-{_stamp(now)}.pgdump", "pg_dump"
        part = directory / (name + ".part")
        try:
            tables = backup_db.pg_dump(engine, target, part, level)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    final = directory / name
    part.replace(final)
    info = BackupInfo(
        name=name,
        kind=BackupKind.DATABASE.value,
        format=fmt,
        created_at=now,
        size_bytes=final.stat().st_size,
        sha256=sha256_of(final),
        source=db.masked_url(engine),
        backend=target.backend,
        schema=target.schema,
        tables=tables,
        revision=db.current_revision(engine),
        directory=directory,
    )
    info.save()
    return info


def create_redis_backup(
    settings: Settings, connection: redis.Redis, where: str, directory: Path
) -> BackupInfo:
    snapshot = backup_redis.bgsave(connection, where)
    now = datetime.now(UTC)
    name = f"redis-{_stamp(now)}.rdb.gz"
    part = directory / (name + ".part")
    _gzip(snapshot.path, part, settings.backup.compress_level)
    final = directory / name
    part.replace(final)
    keyspace = {
        db: int(v.get("keys", 0))
        for db, v in connection.info("keyspace").items()
        if isinstance(v, dict)
    }
    info = BackupInfo(
        name=name,
        kind=BackupKind.REDIS.value,
        format="rdb.gz",
        created_at=now,
        size_bytes=final.stat().st_size,
        sha256=sha256_of(final),
        source=mask_url(where),
        backend="redis",
        tables=keyspace,  # keys per database at the time of the save (approximate)
        directory=directory,
    )
    info.save()
    return info


def _record(engine: Engine, info: BackupInfo, notes: list[str]) -> None:
    """Insert the ``backups`` row; a database without the table (not migrated) only gets a note."""
    from acmeq.storage.models_maintenance import Backup

    tbl = Backup.__table__  # type: ignore[attr-defined]
    values = {
        "kind": info.kind,
        "name": info.name,
        "path": str(info.path),
        "format": info.format,
        "size_bytes": info.size_bytes,
        "sha256": info.sha256,
        "source": info.source[:500],
        "tables": info.tables,
        "created_at": info.created_at,
    }
    try:
        with engine.begin() as conn:
            conn.execute(tbl.insert().values(**values))
    except sa.exc.SQLAlchemyError as exc:
        notes.append(f"backup not recorded in the database ({type(exc).__name__}); sidecar only")


def _update_record(engine: Engine | None, info: BackupInfo) -> None:
    from acmeq.storage.models_maintenance import Backup

    if engine is None:
        return
    tbl = Backup.__table__  # type: ignore[attr-defined]
    try:
        with engine.begin() as conn:
            conn.execute(
                tbl.update().where(tbl.c.name == info.name).values(verified_at=info.verified_at)
            )
    except sa.exc.SQLAlchemyError:
        pass  # the sidecar is the authority


def _delete_record(engine: Engine | None, name: str) -> None:
    from acmeq.storage.models_maintenance import Backup

    if engine is None:
        return
    tbl = Backup.__table__  # type: ignore[attr-defined]
    try:
        with engine.begin() as conn:
            conn.execute(tbl.delete().where(tbl.c.name == name))
    except sa.exc.SQLAlchemyError:
        pass


# -- list and retention ------------------------------------------------------------------------


def list_backups(settings: Settings, kind: str | None = None) -> list[BackupInfo]:
    """Every backup in the backup directory (from the sidecars), newest first."""
    directory = backup_dir(settings)
    if not directory.is_dir():
        return []
    found = []
    for sidecar in directory.glob("*" + SIDECAR):
        try:
            info = BackupInfo.load(sidecar)
        except (OSError, ValueError, KeyError):
            continue  # not one of ours, or damaged: never guess
        if kind is None or info.kind == kind:
            found.append(info)
    return sorted(found, key=lambda b: b.created_at, reverse=True)


def find_backup(settings: Settings, name: str | None, kind: str | None = None) -> BackupInfo:
    """The backup named ``name`` (a file name or unique prefix), or the newest one of ``kind``."""
    backups = list_backups(settings, kind)
    if name is None:
        if not backups:
            raise UsageError(f"no backups in {backup_dir(settings)}; run 'acmeq backup create'")
        return backups[0]
    exact = [b for b in backups if b.name == name or str(b.path) == name]
    matches = exact or [b for b in backups if b.name.startswith(name)]
    if len(matches) != 1:
        what = "no backup" if not matches else f"{len(matches)} backups"
        raise UsageError(f"{what} named {name!r} in {backup_dir(settings)}; see acmeq backup list")
    return matches[0]


def prune_backups(
    settings: Settings,
    result: CategoryResult,
    *,
    dry_run: bool = False,
    max_age: int | None = None,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> None:
    """Delete backups beyond ``keep`` per kind or older than ``max_age``; never the newest."""
    now = now or datetime.now(UTC)
    age = settings.backup.max_age if max_age is None else max_age
    by_kind: dict[str, list[BackupInfo]] = {}
    for info in list_backups(settings):
        by_kind.setdefault(info.kind, []).append(info)
    for backups in by_kind.values():
        for index, info in enumerate(backups):
            too_many = index >= settings.backup.keep
            too_old = bool(age) and now - info.created_at > timedelta(seconds=age)
            if not (too_many or too_old):
                continue
            if index == 0:
                result.kept += 1  # the newest backup of a kind always stays
                continue
            size = info.size_bytes + _size(info.sidecar)
            result.add_found(1, size)
            if dry_run:
                continue
            info.path.unlink(missing_ok=True)
            info.sidecar.unlink(missing_ok=True)
            _delete_record(engine, info.name)
            result.add_deleted(1, size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- verify and restore ------------------------------------------------------------------------


@dataclass
class VerifyResult:
    backup: BackupInfo
    tables: list[tuple[str, int | None, int | None]]  # name, expected, restored
    sha256_ok: bool
    detail: str = ""
    # Redis keeps changing between the save and the count taken beside it: informative only.
    counts_must_match: bool = True

    @property
    def ok(self) -> bool:
        same = all(e == r for _, e, r in self.tables)
        return self.sha256_ok and (same or not self.counts_must_match)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": self.backup.name,
            "ok": self.ok,
            "sha256_ok": self.sha256_ok,
            "detail": self.detail,
            "tables": [{"table": t, "expected": e, "restored": r} for t, e, r in self.tables],
        }


def _check_sha(info: BackupInfo) -> bool:
    if not info.path.is_file():
        raise BackupError(f"backup file {info.path} is missing")
    return sha256_of(info.path) == info.sha256


def verify_backup(
    settings: Settings, name: str | None = None, *, engine: Engine | None = None
) -> VerifyResult:
    """Check the checksum, restore into a scratch database and compare row counts per table."""
    from acmeq.storage import sql as db

    info = find_backup(settings, name, None if name else BackupKind.DATABASE.value)
    if not _check_sha(info):
        return VerifyResult(info, [], False, "sha256 does not match: the file changed")
    if info.kind == BackupKind.REDIS.value:
        restored = _verify_redis(info)
        names = sorted(set(info.tables) | set(restored))
        tables = [(k, info.tables.get(k), restored.get(k)) for k in names]
        detail = "RDB loaded into a scratch redis-server; expected = keys counted at backup time"
        result = VerifyResult(info, tables, True, detail, counts_must_match=False)
    elif info.format == "sqlite.gz":
        with tempfile.TemporaryDirectory(prefix="acmeq-verify-") as tmp:
            scratch = Path(tmp) / "scratch.sqlite"
            _gunzip(info.path, scratch)
            counts = backup_db.sqlite_check(scratch)
        result = _compare(info, counts, "restored into a temporary SQLite file")
    else:
        engine = engine or db.engine_for(settings)
        target = backup_db.target_of(engine)
        if target.backend != "postgresql":
            raise UsageError(
                f"backup {info.name} is a PostgreSQL dump; verifying it needs the configured "
                "database to be a PostgreSQL server (DATABASE_URL) to create a scratch database on"
            )
        counts = backup_db.pg_verify(engine, target, info.path, info.schema)
        result = _compare(info, counts, "restored into a temporary PostgreSQL database")
    if result.ok:
        info.verified_at = datetime.now(UTC)
        info.save()
        _update_record(engine, info)
    return result


def _compare(info: BackupInfo, counts: dict[str, int], detail: str) -> VerifyResult:
    names = sorted(set(info.tables) | set(counts))
    tables = [(n, info.tables.get(n), counts.get(n)) for n in names]
    return VerifyResult(info, tables, True, detail)


def _verify_redis(info: BackupInfo) -> dict[str, int]:
    from acmeq.maintenance.scratch_redis import load_rdb

    with tempfile.TemporaryDirectory(prefix="acmeq-verify-") as tmp:
        rdb = Path(tmp) / "dump.rdb"
        _gunzip(info.path, rdb)
        if not backup_redis.check_rdb(rdb.read_bytes()[:9]):
            raise BackupError(f"{info.name} is not an RDB file")
        return load_rdb(Path(tmp), rdb.name)


@dataclass
class RestoreResult:
    backup: BackupInfo
    target: str
    replaced_tables: list[str]
    revision: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup": self.backup.name,
            "target": self.target,
            "replaced_tables": self.replaced_tables,
            "revision": self.revision,
        }


def restore_backup(
    settings: Settings, name: str, *, force: bool = False, engine: Engine | None = None
) -> RestoreResult:
    """Restore a database backup into the configured database.

    Refuses a database that holds data (any table with rows, alembic's version table and the
    backup records aside)
    unless ``force``; with ``force`` the existing tables are replaced.
    """
    from acmeq.storage import sql as db

    info = find_backup(settings, name)
    if info.kind == BackupKind.REDIS.value:
        raise UsageError(
            f"{info.name} is a Redis backup: stop the redis-server, gunzip it to the server's "
            "`dir`/`dbfilename` (CONFIG GET dir), disable appendonly or delete the AOF directory "
            "for that start, and start it again (docs/maintenance.md#restoring-redis)"
        )
    if not _check_sha(info):
        raise BackupError(f"sha256 of {info.path} does not match its record: not restoring")
    engine = engine or db.engine_for(settings)
    target = backup_db.target_of(engine)
    wanted = "sqlite" if info.format == "sqlite.gz" else "postgresql"
    if target.backend != wanted:
        raise UsageError(
            f"{info.name} is a {wanted} backup but the configured database is {target.backend}"
        )
    occupied = _occupied_tables(engine, target, info.schema)
    if occupied and not force:
        raise UsageError(
            f"refusing to restore into {db.masked_url(engine)}: it holds data "
            f"({', '.join(occupied[:5])}{' ...' if len(occupied) > 5 else ''}); "
            "pass --force to replace it"
        )
    if target.backend == "sqlite":
        assert target.path is not None
        engine.dispose()
        db.dispose_engines()
        with tempfile.TemporaryDirectory(prefix="acmeq-restore-") as tmp:
            snapshot = Path(tmp) / "restore.sqlite"
            _gunzip(info.path, snapshot)
            backup_db.sqlite_restore(snapshot, target.path)
    else:
        if info.schema and target.schema and info.schema != target.schema:
            raise UsageError(
                f"{info.name} holds schema {info.schema!r}; the configured database uses "
                f"{target.schema!r} (restore needs the same schema)"
            )
        backup_db.pg_restore(engine, target, info.path, info.schema, force)
        engine.dispose()
    return RestoreResult(info, db.masked_url(engine), occupied, db.current_revision(engine))


def _occupied_tables(engine: Engine, target: backup_db.DbTarget, schema: str | None) -> list[str]:
    if target.backend == "sqlite":
        assert target.path is not None
        if not target.path.exists() or os.path.getsize(target.path) == 0:
            return []
        import sqlite3

        handle = sqlite3.connect(target.path)
        try:
            counts = backup_db.sqlite_counts(handle)
        finally:
            handle.close()
    else:
        with engine.connect() as conn:
            counts = backup_db.pg_counts(conn, schema or target.schema)
    bookkeeping = ("alembic_version", "backups")  # the schema version and backup records
    return sorted(n for n, c in counts.items() if c and n.rsplit(".", 1)[-1] not in bookkeeping)
