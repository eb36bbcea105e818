"""What every command group shares: the loaded settings (output lives in :mod:`render`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from acmeq.commands.render import console, emit_json, err_console
from acmeq.config.settings import Settings

__all__ = ["CliState", "console", "emit_json", "err_console", "settings", "state"]


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
