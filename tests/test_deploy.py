"""`acmeq deploy systemd`: unit files whose stop timeout outlasts the longest job."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli

CONFIG = """
[queues.exports]
timeout = 5400

[profiles.tiny.supervisors.one]
queues = ["notifications"]
min_processes = 1
max_processes = 1
"""


def _units(stdout: str) -> dict[str, configparser.ConfigParser]:
    units: dict[str, configparser.ConfigParser] = {}
    for chunk in stdout.split("# ---- ")[1:]:
        name, _, body = chunk.partition(" ----\n")
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(body)
        units[name] = parser
    return units


def test_production_units(tmp_path: Path) -> None:
    (tmp_path / "acmeq.toml").write_text(CONFIG)
    result = run_cli("deploy", "systemd", "--profile", "production", "--user", "svc")
    assert result.returncode == 0, result.stderr
    units = _units(result.stdout)
    assert set(units) == {"acmeq-master.service", "acmeq-webhooks.service"}
    master = units["acmeq-master.service"]["Service"]
    assert "worker start --profile production --hostname %H" in master["ExecStart"]
    assert master["KillSignal"] == "SIGTERM"
    assert master["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert master["Restart"] == "always"
    assert master["User"] == "svc"
    # exports (in the production profile) was given 5400 s: the stop timeout outlasts it.
    assert int(master["TimeoutStopSec"]) > 5400
    receiver = units["acmeq-webhooks.service"]["Service"]
    assert "webhook serve" in receiver["ExecStart"]
    assert receiver["KillSignal"] == "SIGTERM"
    assert receiver["Restart"] == "always"


def test_stop_timeout_follows_the_profile(tmp_path: Path) -> None:
    (tmp_path / "acmeq.toml").write_text(CONFIG)
    tiny = _units(run_cli("deploy", "systemd", "--profile", "tiny").stdout)
    timeout = int(tiny["acmeq-master.service"]["Service"]["TimeoutStopSec"])
    assert 0 < timeout < 5400  # notifications only: far below the exports timeout


def test_units_written_to_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "units"
    result = run_cli("deploy", "systemd", "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "acmeq-master.service",
        "acmeq-webhooks.service",
    ]
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", *map(str, out.iterdir())],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert "Unknown key" not in check.stderr and "bad-setting" not in check.stderr


def test_unknown_profile_is_a_usage_error() -> None:
    result = run_cli("deploy", "systemd", "--profile", "nope")
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("profile", ["production"])
def test_stop_timeout_with_defaults(profile: str) -> None:
    result = run_cli("deploy", "systemd", "--profile", profile)
    master = _units(result.stdout)["acmeq-master.service"]["Service"]
    assert int(master["TimeoutStopSec"]) > 3600  # the default longest timeout (exports)
