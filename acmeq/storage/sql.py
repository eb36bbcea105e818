"""Engines, sessions and schema migrations for acmeq's SQL database.

SQLite (a file under the state directory) is the default; PostgreSQL is used when
``DATABASE_URL`` says so. The schema is owned by the alembic revisions in
``acmeq/storage/migrations``,
which are run in-process here (no ``alembic.ini``)::

    engine = engine_for(settings)
    check_reachable(engine)          # DatabaseUnreachableError within ~3 s
    upgrade(engine)                  # what `acmeq db upgrade` does
    require_schema(engine)           # UsageError unless at head
    with session(engine) as s:       # commits on success, rolls back on error
        s.add(...)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import URL, Engine, make_url
from sqlmodel import Session

from acmeq.config.settings import Settings, mask_url
from acmeq.errors import DatabaseUnreachableError, UsageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# An unreachable PostgreSQL must be reported in about three seconds (same bar as Redis).
PG_CONNECT_TIMEOUT_S = 3
# Writers wait this long for SQLite's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with acmeq's connection settings.

    ``postgresql://`` and ``postgres://`` URLs get the psycopg 3 driver. SQLite files get WAL
    (readers do not block the writer), a busy timeout and enforced foreign keys; the file's
    directory is created. PostgreSQL connections are pinged before use and time out after
    :data:`PG_CONNECT_TIMEOUT_S`.
    """
    parsed = _normalise(make_url(url))
    if parsed.get_backend_name() == "sqlite":
        _create_sqlite_dir(parsed)
        engine = sa.create_engine(parsed)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    try:
        return sa.create_engine(parsed, **kwargs)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"no driver for {parsed.drivername} ({exc.name} is not installed); "
            "for PostgreSQL install acmeq[postgres]"
        ) from None


def engine_for(settings: Settings) -> Engine:
    """The shared engine of the configured database (one per URL per process)."""
    url = settings.effective_database_url
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Close and forget every engine :func:`engine_for` cached (tests, orderly shutdown)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


def masked_url(engine: Engine) -> str:
    """The engine's URL for messages, password hidden."""
    return mask_url(engine.url.render_as_string(hide_password=False))


def check_reachable(engine: Engine) -> None:
    """Open one connection and run ``SELECT 1``; raise :class:`DatabaseUnreachableError`."""
    with _connect(engine) as conn:
        conn.execute(sa.text("SELECT 1"))


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A SQLModel session that commits when the block succeeds and rolls back when it raises.

    Objects stay readable after the block (``expire_on_commit=False``): callers typically return
    them to code that runs after the session is closed.
    """
    with Session(engine, expire_on_commit=False) as db:
        try:
            yield db
            db.commit()
        except BaseException:
            db.rollback()
            raise


# ---------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema stands: ``current`` is None for an empty database."""

    url: str  # masked
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "current": self.current,
            "head": self.head,
            "up_to_date": self.up_to_date,
        }


def head_revision() -> str:
    """The newest revision shipped with this version of acmeq."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # only possible with a broken install
        raise UsageError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(target: Settings | Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    engine = _engine(target)
    with _connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_state(target: Settings | Engine) -> SchemaState:
    """Current and head revision of the database, for `acmeq db current`."""
    engine = _engine(target)
    return SchemaState(masked_url(engine), current_revision(engine), head_revision())


def upgrade(target: Settings | Engine, revision: str = "head") -> SchemaState:
    """Migrate the database to ``revision`` (default: the newest) and report where it is now.

    Runs in one transaction where the database supports transactional DDL (PostgreSQL).
    """
    engine = _engine(target)
    config = _alembic_config()
    with _connect(engine) as conn:
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, revision)
        except CommandError as exc:  # an unknown or unreachable target revision
            raise UsageError(f"cannot upgrade to revision {revision!r}: {exc}") from None
        conn.commit()
    return schema_state(engine)


def require_schema(engine: Engine) -> None:
    """Raise :class:`UsageError` unless the database is migrated to head."""
    state = schema_state(engine)
    if not state.up_to_date:
        raise UsageError(
            f"database schema is not up to date (at {state.current or 'none'}, head is "
            f"{state.head}); run 'acmeq db upgrade'"
        )


# ---------------------------------------------------------------------------------------------
# Internals


def _engine(target: Settings | Engine) -> Engine:
    return target if isinstance(target, Engine) else engine_for(target)


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@contextmanager
def _connect(engine: Engine) -> Iterator[sa.Connection]:
    # Only failures to *open* the connection mean "unreachable": SQLite also raises
    # OperationalError for SQL mistakes ("no such table"), which must surface as they are.
    try:
        conn = engine.connect()
    except sa.exc.OperationalError as exc:
        raise DatabaseUnreachableError(masked_url(engine), _reason(exc)) from None
    with conn:
        yield conn


def _reason(exc: sa.exc.OperationalError) -> str:
    """The short cause of a connection failure: 'Connection refused', 'database "x" does ...'."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # psycopg: 'connection failed: connection to server at "h", port 1 failed: FATAL:  ...'
    if " failed: " in line:
        line = line.rsplit(" failed: ", 1)[1]
    for prefix in ("FATAL:", "ERROR:"):
        if line.startswith(prefix):
            line = line[len(prefix) :]
    return line.strip() or type(exc).__name__


def _normalise(url: URL) -> URL:
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    return url


def _create_sqlite_dir(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    parent = Path(database).expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnreachableError(
            mask_url(url.render_as_string(hide_password=False)),
            f"cannot create directory {parent}: {exc.strerror}",
        ) from None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _after_fork_in_child() -> None:
    # A forked work-horse must not reuse the parent's pooled sockets or SQLite handles;
    # close=False leaves them to the parent (SQLAlchemy's documented recipe for fork). The lock
    # is replaced because another thread of the parent may have held it at fork time.
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()
    for engine in list(_ENGINES.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)
