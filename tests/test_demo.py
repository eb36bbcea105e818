"""`acmeq demo` runs the whole product end to end with nothing but Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from acmeq.storage.redis_client import EmbeddedRedis

from conftest import run_cli


# Two full demo runs (every feature's step) take well over the default two minutes under load.
@pytest.mark.timeout(480)
def test_demo_runs_end_to_end_and_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # Given a configured REDIS_URL that must never be touched by the demo
    env = {
        "ACMEQ_STATE_DIR": str(state),
        "REDIS_URL": "redis://127.0.0.1:1/7",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing",
    }
    result = run_cli("demo", "--campaigns", "4", "--donations", "300", env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "seeded 5 companies" in out and "4 campaigns and 300 donations" in out
    assert "jobs (2001 in all, 0 unfinished)" in out
    assert "a supervised, autoscaled pool" in out and "exited with code 0" in out
    assert "recalculate_campaign_totals" in out
    assert "demo complete" in out
    # Then the embedded Redis it started is stopped again, its data kept on disk
    assert not EmbeddedRedis(state / "demo").status().running
    assert (state / "demo" / "acmeq.db").exists()

    # When it runs a second time it reuses the data instead of seeding again
    again = run_cli("demo", env=env, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "demo data already there (4 campaigns)" in again.stdout


def test_demo_seed_writes_to_the_configured_database(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'seed.db'}"
    assert run_cli("db", "upgrade", env={"DATABASE_URL": db_url}).returncode == 0
    result = run_cli(
        "demo",
        "seed",
        "--campaigns",
        "3",
        "--donations",
        "250",
        "--json",
        env={"DATABASE_URL": db_url},
    )
    assert result.returncode == 0, result.stderr
    assert '"donations": 250' in result.stdout


def test_demo_seed_on_an_unmigrated_database_says_what_to_do(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run_cli("demo", "seed", env={"DATABASE_URL": db_url})
    assert result.returncode == 2
    assert "run 'acmeq db upgrade'" in result.stderr
