"""Docs that are generated must be current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date(tmp_path: Path) -> None:
    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "typer",
            "acmeq.cli",
            "utils",
            "docs",
            "--name",
            "acmeq",
            "--title",
            "Command reference",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="80"),
    ).stdout
    body = generated.split("\n", 1)[1]  # drop the title line; the header file replaces it
    current = (ROOT / "docs" / "cli.md").read_text()
    assert body.strip() in current, "docs/cli.md is stale: run scripts/gen-cli-docs"
