"""`acmeq demo` and `acmeq demo seed`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.rule import Rule

from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json, layout_width, show, table
from acmeq.constants import ExitCode

app = typer.Typer(help="Run the demo, or seed realistic demo data.", invoke_without_command=True)


class RichDemoOutput:
    def step(self, title: str) -> None:
        console.print(Rule(f"[bold]{title}[/]", align="left"), width=layout_width())

    def line(self, text: str) -> None:
        console.print("  " + text, highlight=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        out = table(*columns)
        out.title, out.title_justify = title, "left"
        for row in rows:
            out.add_row(*(str(cell) for cell in row))
        show(out)


@app.callback()
def demo(
    ctx: typer.Context,
    campaigns: Annotated[int, typer.Option(min=1, help="Campaigns to seed.")] = 25,
    donations: Annotated[int, typer.Option(min=0, help="Donations to seed.")] = 20_000,
    keep_redis: Annotated[bool, typer.Option(help="Leave the embedded Redis running.")] = False,
) -> None:
    """Run the whole product once on a private embedded Redis and SQLite file."""
    if ctx.invoked_subcommand is not None:
        return
    from acmeq.demo import run_demo

    unfinished = run_demo(
        settings(),
        RichDemoOutput(),
        campaigns=campaigns,
        donations=donations,
        keep_redis=keep_redis,
    )
    if unfinished:
        console.print(f"[red]{unfinished} demo jobs did not finish[/]")
        raise typer.Exit(int(ExitCode.FAILED))
    console.print("[green]demo complete[/]")


@app.command()
def seed(
    campaigns: Annotated[int, typer.Option(min=1, help="Campaigns to create.")] = 50,
    donations: Annotated[int, typer.Option(min=0, help="Donations to create.")] = 10_000,
    random_seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create realistic companies, users, campaigns and donations in the configured database."""
    from acmeq.storage import sql as db
    from acmeq.storage.seed import seed_demo

    engine = db.engine_for(settings())
    db.check_reachable(engine)
    db.require_schema(engine)
    result = seed_demo(engine, campaigns=campaigns, donations=donations, seed=random_seed)
    if as_json:
        emit_json(
            {
                "companies": result.companies,
                "users": result.users,
                "campaigns": result.campaigns,
                "donations": result.donations,
                "seconds": round(result.seconds, 3),
            }
        )
        return
    console.print(
        f"seeded {result.companies} companies, {result.users} users, "
        f"{result.campaigns} campaigns and {result.donations:,} donations "
        f"in {result.seconds:.1f} s"
    )
