"""`acmeq deploy`: configuration for running acmeq as services (docs/deployment.md)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import line

app = typer.Typer(help="Deployment: service unit files.", no_args_is_help=True)


def _default_command() -> str:
    beside = Path(sys.executable).parent / "acmeq"  # the venv's console script
    if beside.exists():
        return str(beside)
    return shutil.which("acmeq") or f"{sys.executable} -m acmeq"


@app.command()
def systemd(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Worker profile.")] = "production",
    user: Annotated[str, typer.Option(help="User (and group) the services run as.")] = "acmeq",
    workdir: Annotated[Path, typer.Option(help="Working directory (where acmeq.toml is).")] = Path(
        "/srv/acmeq"
    ),
    env_file: Annotated[
        Path, typer.Option(help="EnvironmentFile with REDIS_URL, DATABASE_URL, secrets.")
    ] = Path("/etc/acmeq/acmeq.env"),
    command: Annotated[
        str | None, typer.Option(help="How to run acmeq (default: this installation's).")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Write the unit files here instead of printing them.")
    ] = None,
) -> None:
    """Print unit files for the master and the webhook receiver."""
    from acmeq.ops.deploy import UnitOptions, systemd_units

    cfg = settings()
    opts = UnitOptions(
        profile=profile,
        command=command or _default_command(),
        user=user,
        workdir=workdir,
        env_file=env_file,
        config=cfg.config_path.resolve() if cfg.config_path else None,
    )
    units = systemd_units(cfg, opts)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (output_dir / name).write_text(text)
            line(f"wrote {output_dir / name}")
        return
    for name, text in units.items():
        sys.stdout.write(f"# ---- {name} ----\n{text}\n")
