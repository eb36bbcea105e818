"""What a cleanup run found and did, per category (shared by every sweeper and the CLI)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Category(StrEnum):
    """The kinds of data `acmeq cleanup` removes, in the order it removes them."""

    JOB_PROGRESS = "job_progress"
    FAILED_JOBS = "failed_jobs"
    EXPORT_FILES = "export_files"
    TEMP_FILES = "temp_files"
    CACHE = "cache"
    AUDIT_LOG = "audit_log"
    BACKUPS = "backups"


@dataclass
class CategoryResult:
    """Counts of one category. In a dry run ``deleted`` stays 0 and ``found`` is what would go.

    ``kept`` counts items old enough to go that were protected (a job still queued or running,
    an export still being written, an in-flight donation's audit trail, the newest backup).
    ``longest_tx_ms`` is the longest single transaction (SQL) or pipeline (Redis) it ran.
    """

    category: Category
    retention_s: int
    found: int = 0
    found_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept: int = 0
    batches: int = 0
    seconds: float = 0.0
    longest_tx_ms: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def add_found(self, items: int, size: int) -> None:
        self.found += items
        self.found_bytes += size

    def add_deleted(self, items: int, size: int) -> None:
        self.deleted += items
        self.deleted_bytes += size

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Time one batch (a transaction or a pipeline) and keep the longest."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.batches += 1
            elapsed = (time.perf_counter() - started) * 1000
            self.longest_tx_ms = max(self.longest_tx_ms, elapsed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category.value,
            "retention_seconds": self.retention_s,
            "found": self.found,
            "found_bytes": self.found_bytes,
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "kept": self.kept,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "longest_transaction_ms": round(self.longest_tx_ms, 1),
            "error": self.error,
            "notes": list(self.notes),
        }


@dataclass
class CleanupReport:
    dry_run: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    results: list[CategoryResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.error for r in self.results)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "seconds": round(self.seconds, 3),
            "found": sum(r.found for r in self.results),
            "found_bytes": sum(r.found_bytes for r in self.results),
            "deleted": sum(r.deleted for r in self.results),
            "deleted_bytes": sum(r.deleted_bytes for r in self.results),
            "categories": [r.as_dict() for r in self.results],
        }


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - unreachable


def human_duration(seconds: int) -> str:
    """2592000 -> '30d', 86400 -> '24h', 90 -> '90s'."""
    if seconds and seconds % 86400 == 0 and seconds // 86400 != 1:
        return f"{seconds // 86400}d"
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
