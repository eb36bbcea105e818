"""`acmeq job ...`: the registered job functions (and, later, single jobs by id)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from acmeq.commands.common import console, emit_json, settings
from acmeq.queues import registry_for

app = typer.Typer(help="Registered job functions and single jobs.", no_args_is_help=True)


@app.command("list")
def list_jobs(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the job functions that may be enqueued and executed (the allowlist)."""
    jobs = list(registry_for(settings()))
    if as_json:
        emit_json(
            [
                {"name": j.name, "queue": j.queue, "path": j.path, "description": j.description}
                for j in jobs
            ]
        )
        return
    table = Table("job", "queue", "function", "description", box=None, pad_edge=False)
    for j in jobs:
        table.add_row(j.name, j.queue, j.path, j.description)
    console.print(table)
