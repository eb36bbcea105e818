"""What every command group shares: the loaded settings, consoles and JSON output."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from acmeq.config.settings import Settings

console = Console()
err_console = Console(stderr=True)


@dataclass
class CliState:
    """Options of the root command, read by every subcommand."""

    config_path: Path | None = None
    _settings: Settings | None = None


state = CliState()


def settings() -> Settings:
    """The effective settings (loaded once per command; ConfigError propagates as exit 2)."""
    if state._settings is None:
        state._settings = Settings.load(state.config_path)
    return state._settings


def emit_json(data: Any) -> None:
    """Print machine-readable output on stdout: stable keys, ISO times, no colour."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()
