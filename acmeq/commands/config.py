"""`acmeq config show|validate`: the effective configuration and where each value came from."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from acmeq.commands import render
from acmeq.commands.common import settings
from acmeq.commands.render import console, emit_json, table
from acmeq.config.settings import SECRET_KEYS, Settings, mask_url
from acmeq.errors import ConfigError

app = typer.Typer(help="Show or validate the effective configuration.", no_args_is_help=True)


def _display(key: str, value: Any) -> Any:
    if key in SECRET_KEYS and value:
        return "***"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def effective(cfg: Settings, profile: str | None) -> dict[str, dict[str, Any]]:
    """Every dotted key with its (masked) value and source, optionally one profile only."""
    if profile is not None:
        cfg.profile(profile)  # unknown profile -> exit 2 naming the valid ones
    rows: dict[str, dict[str, Any]] = {}
    for key in sorted(cfg.values):
        if profile is not None and key.startswith("profiles.") and key.split(".")[1] != profile:
            continue
        rows[key] = {"value": _display(key, cfg.values[key]), "source": cfg.sources.get(key)}
    return rows


@app.command()
def show(
    profile: Annotated[str | None, typer.Option(help="Only this worker profile.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the effective configuration (secrets masked) and the source of each value."""
    cfg = settings()
    rows = effective(cfg, profile)
    if as_json:
        from acmeq.queues import catalog

        emit_json(
            {
                "config_file": str(cfg.config_path) if cfg.config_path else None,
                "values": rows,
                "queues": {
                    q.name: {"retry_intervals": list(q.retry_intervals)} for q in catalog(cfg)
                },
            }
        )
        return
    console.print(f"config file: {cfg.config_path or '(none)'}")
    # Keys are never shortened (they are what one greps for); long values wrap on a terminal.
    out = table("key", "value", "source", ids=["key"], fold=["value"])
    for key, row in rows.items():
        source = row["source"]
        style = "dim" if source == "default" else "bold"
        out.add_row(key, str(row["value"]), source, style=style)
    render.show(out)


@app.command()
def validate() -> None:
    """Check acmeq.toml and the environment; exit 2 with one line per problem.

    Besides bad values, a queue that no profile's supervisor serves is a problem (a misspelt
    [queues.NAME] table makes a new queue whose jobs would wait forever), unless the queue is
    marked `unserved = true`.
    """
    cfg = settings()  # raises ConfigError (exit 2, one line per problem) when invalid
    from acmeq.ops.config_check import unserved_queues
    from acmeq.queues import registry_for

    jobs = registry_for(cfg)
    problems = unserved_queues(cfg)
    if problems:
        raise ConfigError(problems)
    console.print(
        f"configuration OK: {len(cfg.queues)} queues, {len(cfg.profiles)} profiles, "
        f"{len(jobs)} registered jobs"
    )
