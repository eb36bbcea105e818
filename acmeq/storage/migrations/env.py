"""Alembic environment of acmeq.

:func:`acmeq.storage.sql.upgrade` passes an open connection in ``config.attributes["connection"]``;
run
through the ``alembic`` command instead, the database comes from ``sqlalchemy.url`` or, failing
that, from acmeq's own settings (``DATABASE_URL`` / the state-directory SQLite file).
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import acmeq.storage.models  # registers every table on SQLModel.metadata
import acmeq.storage.models_exports
import acmeq.storage.models_mail
import acmeq.storage.models_maintenance
import acmeq.storage.models_payments

config = context.config
target_metadata = SQLModel.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Revisions spell plain SQLAlchemy types so they never import acmeq.storage.models: a revision
    # must
    # keep producing the same DDL after the models have moved on.
    if type_ != "type":
        return False
    if isinstance(obj, acmeq.storage.models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, sa.Enum) and not obj.native_enum:
        return f"sa.String(length={obj.length})"
    if isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=_render_item,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    from acmeq.config.settings import Settings

    return config.get_main_option("sqlalchemy.url") or Settings.load().effective_database_url


def run_offline() -> None:
    url = _url()
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection: sa.Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from acmeq.storage.sql import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


def _run(connection: sa.Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
