"""The database side of backups: SQLite's online backup API, PostgreSQL's pg_dump/pg_restore.

SQLite: ``sqlite3.Connection.backup`` copies a consistent snapshot while other connections keep
writing (WAL). The row counts are taken from the copy, so they match it exactly.

PostgreSQL: a REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot``), counts
the rows in it, and ``pg_dump --snapshot`` dumps that very snapshot in custom format
(compressed). When the database URL selects a schema (``options=-csearch_path=<schema>``, as the
tests and benchmarks do), only that schema is dumped. Passwords reach pg_dump through
``PGPASSWORD`` in its environment, never on its command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from acmeq.errors import BackupError, BackupToolMissingError, UsageError

PG_TOOL_TIMEOUT_S = 3600
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True)
class DbTarget:
    backend: str  # "sqlite" or "postgresql"
    url: URL
    path: Path | None = None  # SQLite file
    schema: str | None = None  # PostgreSQL schema selected by the URL's search_path


def target_of(engine: Engine) -> DbTarget:
    url = engine.url
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise UsageError(f"cannot back up SQLite database {database or ':memory:'!r}")
        return DbTarget("sqlite", url, path=Path(database).expanduser())
    if backend == "postgresql":
        return DbTarget("postgresql", url, schema=_search_path_schema(url))
    raise UsageError(f"backups support SQLite and PostgreSQL, not {backend}")


def _search_path_schema(url: URL) -> str | None:
    options = url.query.get("options")
    text = " ".join(options) if isinstance(options, tuple) else (options or "")
    match = re.search(r"search_path\s*=\s*([A-Za-z0-9_]+)", text)
    return match.group(1) if match else None


# -- SQLite ------------------------------------------------------------------------------------


def sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    return {
        name: int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]) for name in names
    }


def sqlite_snapshot(source: Path, dest: Path) -> dict[str, int]:
    """Copy the live database ``source`` into ``dest``; return the copy's row counts."""
    if not source.is_file():
        raise BackupError(f"SQLite database {source} does not exist")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)  # one step: a read snapshot; writers go on under WAL
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
        return sqlite_counts(dst)
    finally:
        dst.close()
        src.close()


def sqlite_check(path: Path) -> dict[str, int]:
    """``PRAGMA integrity_check`` then row counts of a restored copy."""
    conn = sqlite3.connect(path)
    try:
        status = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if status != "ok":
            raise BackupError(f"integrity check of the restored copy failed: {status}")
        return sqlite_counts(conn)
    finally:
        conn.close()


def sqlite_tables(path: Path) -> list[str]:
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        return list(sqlite_counts(conn))
    finally:
        conn.close()


def sqlite_restore(snapshot: Path, target: Path) -> None:
    """Replace ``target``'s content with ``snapshot`` (the backup API, page by page)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(snapshot)
    dst = sqlite3.connect(target, timeout=30)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


# -- PostgreSQL --------------------------------------------------------------------------------


def require_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupToolMissingError(
            f"{name} not found on PATH: PostgreSQL backups need the PostgreSQL client programs "
            "(pg_dump, pg_restore) of the server's major version, e.g. "
            "`apt install postgresql-client-15`"
        )
    return found


def pg_env(url: URL, database: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGOPTIONS"):
        env.pop(name, None)
    if url.host:
        env["PGHOST"] = url.host
    if url.port:
        env["PGPORT"] = str(url.port)
    if url.username:
        env["PGUSER"] = url.username
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    env["PGDATABASE"] = database or url.database or "postgres"
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=PG_TOOL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish within {PG_TOOL_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {done.returncode}"
        raise BackupError(f"{what} failed: {detail}")


def pg_counts(conn: Connection, schema: str | None) -> dict[str, int]:
    """Row counts of the base tables of ``schema`` (or of every user schema), ``schema.table``."""
    sql = (
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema NOT IN :system "
        "AND table_schema NOT LIKE 'pg_temp%'"
    )
    params: dict[str, Any] = {"system": list(_SYSTEM_SCHEMAS)}
    if schema is not None:
        sql += " AND table_schema = :schema"
        params["schema"] = schema
    query = sa.text(sql + " ORDER BY 1, 2").bindparams(sa.bindparam("system", expanding=True))
    rows = conn.execute(query, params).all()
    counts = {}
    for table_schema, table_name in rows:
        count = conn.execute(sa.text(f'SELECT count(*) FROM "{table_schema}"."{table_name}"'))
        counts[f"{table_schema}.{table_name}"] = int(count.scalar_one())
    return counts


def pg_dump(engine: Engine, target: DbTarget, dest: Path, level: int) -> dict[str, int]:
    """Dump one consistent snapshot to ``dest`` (custom format); return its row counts."""
    binary = require_tool("pg_dump")
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
            counts = pg_counts(conn, target.schema)
            args = [binary, "--format=custom", f"--compress={level}", "--no-owner"]
            args += ["--no-privileges", f"--snapshot={snapshot}", f"--file={dest}"]
            if target.schema:
                args.append(f"--schema={target.schema}")
            _run(args, pg_env(target.url), "pg_dump")
    return counts


def pg_user_tables(engine: Engine, schema: str | None) -> list[str]:
    with engine.connect() as conn:
        return list(pg_counts(conn, schema)) if schema is None else _tables_in(conn, schema)


def _tables_in(conn: Connection, schema: str) -> list[str]:
    rows = conn.execute(
        sa.text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
            "AND table_type = 'BASE TABLE'"
        ),
        {"s": schema},
    ).scalars()
    return [f"{schema}.{name}" for name in rows]


def pg_restore(
    engine: Engine, target: DbTarget, dump: Path, dump_schema: str | None, force: bool
) -> None:
    """Restore ``dump`` into the configured database; the caller checked emptiness/--force."""
    binary = require_tool("pg_restore")
    args = [binary, "--no-owner", "--no-privileges", "--exit-on-error"]
    if dump_schema:
        # The dump creates its schema itself: drop the (empty, or --force) one in the way.
        drop = f'DROP SCHEMA IF EXISTS "{dump_schema}"' + (" CASCADE" if force else "")
        with engine.begin() as conn:
            conn.execute(sa.text(drop))
    elif force:
        args += ["--clean", "--if-exists"]
    _run([*args, f"--dbname={target.url.database}", str(dump)], pg_env(target.url), "pg_restore")


@contextlib.contextmanager
def pg_scratch_database(engine: Engine) -> Iterator[tuple[str, Engine]]:
    """A temporary database on the same server, dropped afterwards (needs CREATEDB)."""
    name = f"acmeq_verify_{secrets.token_hex(6)}"
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.SQLAlchemyError as exc:
        raise BackupError(
            f"cannot create a scratch database to verify into ({_first_line(exc)}); "
            "verify needs the CREATEDB privilege"
        ) from None
    scratch_url = engine.url.set(database=name).difference_update_query(["options"])
    scratch = sa.create_engine(scratch_url, poolclass=sa.pool.NullPool)
    try:
        yield name, scratch
    finally:
        scratch.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pg_verify(engine: Engine, target: DbTarget, dump: Path, schema: str | None) -> dict[str, int]:
    """Restore ``dump`` into a scratch database and count its rows."""
    binary = require_tool("pg_restore")
    with pg_scratch_database(engine) as (name, scratch):
        args = [binary, "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={name}"]
        _run([*args, str(dump)], pg_env(target.url, name), "pg_restore (verify)")
        with scratch.connect() as conn:
            return pg_counts(conn, schema)


def _first_line(exc: BaseException) -> str:
    orig: Any = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
