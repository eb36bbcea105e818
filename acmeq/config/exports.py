"""Settings of ``[exports]`` in acmeq.toml (docs/exports.md, docs/configuration.md).

The loader (:mod:`acmeq.config.loader`) merges :data:`DEFAULTS` into its tree of dotted keys and
calls :func:`build_exports`, which reads and validates through the loader's typed readers, so a
bad value is reported like any other key::

    acmeq.toml: exports.chunk_size: must be an integer from 100 to 100000, got 5

This module imports nothing from acmeq, so settings.py may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acmeq.config.reader import Reader as Loader

DEFAULTS: dict[str, Any] = {
    "exports": {
        "dir": "",
        "expiry_days": 30,
        "attach_limit_mb": 10,
        "chunk_size": 5000,
        "pdf_max_rows": 200_000,
    },
}


@dataclass(frozen=True)
class ExportSettings:
    """Where export files go, how long they are kept and how they are read."""

    dir: Path | None = None  # None: <state dir>/exports
    expiry_days: int = 30  # the export record's expires_at (for `acmeq cleanup`)
    attach_limit_mb: int = 10  # larger files are mailed as a path, not attached
    chunk_size: int = 5000  # rows per keyset page
    pdf_max_rows: int = 200_000  # a PDF is built in memory by fpdf2: refuse larger ones

    @property
    def attach_limit_bytes(self) -> int:
        return self.attach_limit_mb * 1024 * 1024

    def directory(self, state_dir: Path) -> Path:
        return self.dir if self.dir is not None else state_dir / "exports"


def build_exports(loader: Loader) -> ExportSettings:
    k = "exports."
    directory = loader._str(k + "dir").strip()
    return ExportSettings(
        dir=Path(directory).expanduser() if directory else None,
        expiry_days=loader._int(k + "expiry_days", 1, 3650),
        attach_limit_mb=loader._int(k + "attach_limit_mb", 0, 1024),
        chunk_size=loader._int(k + "chunk_size", 100, 100_000),
        pdf_max_rows=loader._int(k + "pdf_max_rows", 1),
    )
