"""Chaos: an export into a full disk or a read-only export directory fails with a clear reason
and leaves no file behind (neither a partial export nor its hidden .part file).

The disk is a real tmpfs mounted for the test (64 KiB: full; or read-only); skipped where this
process may not mount (not root). Running as root, a chmod'ed directory would still be writable.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from acmeq.storage import sql

from conftest import run_cli

pytestmark = [pytest.mark.chaos]


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("options", "reason"),
    [("size=64k", "No space left on device"), ("ro", "is not writable")],
    ids=["full-disk", "read-only"],
)
@pytest.mark.timeout(180)
def test_export_into_a_broken_directory_fails_cleanly(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: str,
    reason: str,
) -> None:
    from acmeq.storage.seed import seed_demo

    engine = sql.make_engine(database_url)
    sql.upgrade(engine)
    seed_demo(engine, campaigns=3, donations=1500)  # ~150 KB of CSV: more than 64 KiB
    engine.dispose()
    monkeypatch.setenv("DATABASE_URL", database_url)
    with tmpfs(tmp_path / "exports", options) as directory:
        (tmp_path / "acmeq.toml").write_text(f'[exports]\ndir = "{directory}"\n')
        result = run_cli("export", "donations", "--format", "csv", "--sync", timeout=150)
        left = sorted(p.name for p in directory.iterdir())
    print(
        f"\nchaos export ({options}): exit {result.returncode}, "
        f"error {result.stderr.strip()!r}, files left {left}"
    )
    assert result.returncode != 0
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert left == []  # no partial export, no .part file
