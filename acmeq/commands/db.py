"""`acmeq db`: migrate the SQL schema and show where it stands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from acmeq.commands.common import console, emit_json, settings

if TYPE_CHECKING:
    from acmeq.storage.sql import SchemaState

app = typer.Typer(help="Database schema: upgrade, current revision.", no_args_is_help=True)


def _where(state: SchemaState) -> str:
    if state.current is None:
        return f"is not migrated (head is {state.head}); run 'acmeq db upgrade'"
    if state.up_to_date:
        return f"is at {state.current} (head)"
    return f"is at {state.current} (head is {state.head}); run 'acmeq db upgrade'"


@app.command()
def upgrade(
    revision: Annotated[
        str, typer.Option(help="Target revision; 'head' is the newest this acmeq ships.")
    ] = "head",
) -> None:
    """Create or migrate the schema (safe to run on every deploy)."""
    from acmeq.storage import (
        sql as db,  # imported late: SQLAlchemy and alembic cost ~0.3 s at startup
    )

    state = db.upgrade(settings(), revision)
    head = " (head)" if state.up_to_date else f" (head is {state.head})"
    line = f"database {escape(state.url)} upgraded to {state.current or 'base'}{head}"
    # soft_wrap: a long SQLite path must stay on one line for scripts that grep the output.
    console.print(line, soft_wrap=True)


@app.command()
def current(
    json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show the database's schema revision and the newest one available."""
    from acmeq.storage import sql as db

    state = db.schema_state(settings())
    if json:
        emit_json(state.as_dict())
        return
    console.print(f"database {escape(state.url)} {_where(state)}", soft_wrap=True)
