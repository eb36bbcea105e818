"""Cleanup of files: acmeq's temporary and partial files, and export files with their records."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from acmeq.maintenance.report import CategoryResult

TMP_DIR = "tmp"  # <state dir>/tmp: everything in it is temporary
SKIP_DIRS = ("redis",)  # the embedded redis-server's own files are its business


def temp_files(
    state_dir: Path, patterns: Sequence[str], extra_dirs: Sequence[Path] = ()
) -> Iterator[Path]:
    """Regular files under ``<state dir>/tmp``, and files named like ``patterns`` anywhere under
    the state directory (and ``extra_dirs``), except the embedded Redis's directory."""
    roots = [state_dir, *[d for d in extra_dirs if not _inside(d, state_dir)]]
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if here == root:
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            temporary = here == state_dir / TMP_DIR or _inside(here, state_dir / TMP_DIR)
            for name in filenames:
                if temporary or any(fnmatch.fnmatch(name, p) for p in patterns):
                    yield here / name


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def sweep_temp_files(
    files: Iterator[Path], cutoff: datetime, result: CategoryResult, *, dry_run: bool
) -> None:
    """Delete the files last modified before ``cutoff`` (symlinks are never followed)."""
    limit = cutoff.timestamp()
    for path in files:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not _regular(info.st_mode) or info.st_mtime >= limit:
            continue
        result.add_found(1, info.st_size)
        if dry_run:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            result.notes.append(f"cannot delete {path}: {exc.strerror}")
            continue
        result.add_deleted(1, info.st_size)


def _regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def export_file_size(path: str) -> int:
    """Size of an export's file on disk (0 when it is gone or not a regular file)."""
    if not path:
        return 0
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    return info.st_size if _regular(info.st_mode) else 0


def unlink_export_files(rows: Sequence[Any], result: CategoryResult) -> None:
    """Remove the files of export records just deleted (missing files are fine)."""
    for row in rows:
        path = row.path
        if not path or not os.path.lexists(path):
            continue
        if os.path.islink(path) or not os.path.isfile(path):
            result.notes.append(f"not a regular file, left alone: {path}")
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            result.notes.append(f"cannot delete {path}: {exc.strerror}")
