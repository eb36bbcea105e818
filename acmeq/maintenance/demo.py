"""The demo's last step: what `acmeq cleanup --dry-run` would delete from the demo's own data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from acmeq.config.settings import Settings


class Output(Protocol):  # the part of acmeq.demo.DemoOutput this step uses
    def step(self, title: str) -> None: ...
    def line(self, text: str) -> None: ...
    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


def cleanup_dry_run(cfg: Settings, out: Output, title: str = "Maintenance") -> None:
    """Run the cleanup as a dry run on the demo's Redis and database and show its table."""
    from acmeq.maintenance.cleanup import run_cleanup
    from acmeq.maintenance.report import human_bytes, human_duration

    out.step(f"{title}: acmeq cleanup --dry-run")
    report = run_cleanup(cfg, dry_run=True)
    rows = [
        (
            r.category.value,
            human_duration(r.retention_s),
            f"{r.found:,}",
            human_bytes(r.found_bytes),
            f"{r.kept:,}",
            f"{r.seconds:.2f} s",
            r.error or "",
        )
        for r in report.results
    ]
    columns = ["category", "retention", "would delete", "size", "kept", "time", "error"]
    out.table("acmeq cleanup --dry-run", columns, rows)
    found = sum(r.found for r in report.results)
    out.line(
        f"{found:,} items are past their retention (the demo's data is minutes old); nothing "
        "was changed. `acmeq cleanup` deletes them in short batches; `--enqueue` runs it as the "
        "cleanup_expired_data job on the maintenance queue."
    )
