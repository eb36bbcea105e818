"""Database fixtures (a pytest plugin: ``pytest_plugins = ["db_support"]``).

Every test that asks for ``database_url`` runs on SQLite (a file under ``tmp_path``) and, when
``ACMEQ_TEST_DATABASE_URL`` names a PostgreSQL server, on PostgreSQL too. On PostgreSQL each test
gets a schema of its own (``acmeq_t_<random>``), selected through the connection's
``search_path`` and dropped afterwards, so tests never see each other's tables and never touch
anything they did not create.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from acmeq.storage import sql as db

POSTGRES_ENV = "ACMEQ_TEST_DATABASE_URL"


def _backends() -> list[str]:
    return ["sqlite", "postgres"] if os.environ.get(POSTGRES_ENV) else ["sqlite"]


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: SQLite, and PostgreSQL when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'acmeq.db'}"
        return
    base = os.environ[POSTGRES_ENV]
    schema = f"acmeq_t_{secrets.token_hex(6)}"
    admin = db.make_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as conn:
            # Only the schema this fixture created. Engines on it are disposed by then (their
            # fixtures end first), and idle pooled connections hold no locks anyway.
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on ``database_url``, migrated to head."""
    eng = db.make_engine(database_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def db_session(engine: Engine) -> Iterator[Session]:
    """A session on the migrated database; the test commits what it wants to keep."""
    with Session(engine, expire_on_commit=False) as session:
        yield session
