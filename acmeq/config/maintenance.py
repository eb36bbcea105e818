"""Settings of ``[cleanup]`` and ``[backup]`` in acmeq.toml (docs/maintenance.md).

The loader (:mod:`acmeq.config.loader`) merges :data:`DEFAULTS` into its tree of dotted keys and
calls :func:`build_cleanup` / :func:`build_backup`, which read and validate through the loader's
own typed readers so every problem is reported like any other key::

    acmeq.toml: cleanup.retention.job_progress: must be a duration like 30d, 24h or 3600, got 'x'

This module imports nothing from acmeq but the duration parser, so settings.py may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acmeq.errors import UsageError
from acmeq.timeparse import parse_duration

if TYPE_CHECKING:
    from acmeq.config.reader import Reader as Loader

DAY = 86400

# Retention per cleanup category, seconds (seed: CleanupExpiredDataJob).
RETENTION: dict[str, int] = {
    "job_progress": 30 * DAY,
    "failed_jobs": 90 * DAY,
    "export_files": 30 * DAY,
    "temp_files": DAY,
    "cache": DAY,  # idle time of a key without a TTL under one of the cache/session prefixes
    "audit_log": 365 * DAY,
}

DEFAULTS: dict[str, Any] = {
    "cleanup": {
        "retention": {name: f"{secs // DAY}d" for name, secs in RETENTION.items()},
        "batch_size": 1000,
        "cache_prefixes": ["acmeq:cache:", "acmeq:session:"],
        "temp_patterns": ["*.part", "*.partial", "*.tmp"],
    },
    "backup": {"dir": "", "keep": 7, "max_age": "30d", "compress_level": 6},
}


@dataclass(frozen=True)
class CleanupSettings:
    """What `acmeq cleanup` removes and how fast: retention per category in seconds."""

    retention: Mapping[str, int] = field(default_factory=lambda: dict(RETENTION))
    batch_size: int = 1000  # rows (or Redis jobs) per transaction / pipeline
    cache_prefixes: tuple[str, ...] = ("acmeq:cache:", "acmeq:session:")
    temp_patterns: tuple[str, ...] = ("*.part", "*.partial", "*.tmp")


@dataclass(frozen=True)
class BackupSettings:
    """Where backups go and how many are kept (the newest of each kind always stays)."""

    dir: Path | None = None  # None: <state dir>/backups
    keep: int = 7  # at most this many backups of each kind (database, redis)
    max_age: int = 30 * DAY  # seconds; older backups go (0: no age limit)
    compress_level: int = 6  # gzip level of SQLite/Redis files, pg_dump -Z of PostgreSQL ones


def _duration(loader: Loader, key: str, allow_zero: bool = False) -> int:
    value = loader.values.get(key)
    seconds = -1
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        try:
            seconds = int(parse_duration(value, key).total_seconds())
        except UsageError:
            seconds = -1
    if seconds < 0 or (seconds == 0 and not allow_zero):
        loader._bad(key, "must be a duration like 30d, 24h or 3600 (seconds)")
        return 0
    return seconds


def build_cleanup(loader: Loader) -> CleanupSettings:
    k = "cleanup."
    retention = {name: _duration(loader, f"{k}retention.{name}", True) for name in RETENTION}
    prefixes = loader._list(
        k + "cache_prefixes", lambda v: isinstance(v, str) and len(v) >= 2, "key prefixes"
    )
    for prefix in prefixes:
        if prefix.startswith("rq:") or prefix in ("acmeq:", "acmeq"):
            loader._bad(k + "cache_prefixes", f"{prefix!r} would match queue data")
    patterns = loader._list(
        k + "temp_patterns",
        lambda v: isinstance(v, str) and bool(v) and "/" not in v and v not in ("*", "*.*"),
        "file name patterns (like *.part)",
    )
    return CleanupSettings(
        retention=retention,
        batch_size=loader._int(k + "batch_size", 1, 100_000),
        cache_prefixes=tuple(prefixes),
        temp_patterns=tuple(patterns),
    )


def build_backup(loader: Loader) -> BackupSettings:
    k = "backup."
    directory = loader._str(k + "dir").strip()
    return BackupSettings(
        dir=Path(directory).expanduser() if directory else None,
        keep=loader._int(k + "keep", 1),
        max_age=_duration(loader, k + "max_age", True),
        compress_level=loader._int(k + "compress_level", 0, 9),
    )
