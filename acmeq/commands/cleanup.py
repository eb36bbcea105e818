"""`acmeq cleanup`: delete data past its retention, or show what would go (--dry-run)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import emit_json, line, show, table

if TYPE_CHECKING:
    from acmeq.maintenance.report import CategoryResult, CleanupReport

CATEGORIES = "job_progress, failed_jobs, export_files, temp_files, cache, audit_log, backups"


def cleanup(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be deleted; change nothing.")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help=f"Only these categories (comma-separated or repeated): {CATEGORIES}.",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Retention for this run (e.g. 7d, 12h) instead of each category's configured "
            "one ([cleanup.retention] in acmeq.toml).",
            show_default=False,
        ),
    ] = None,
    enqueue: Annotated[
        bool,
        typer.Option("--enqueue", help="Run as the cleanup_expired_data job on 'maintenance'."),
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=100_000,
            help="Rows or jobs per transaction.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Delete expired job progress, failed jobs, exports, temp files, cache keys, audit logs and
    old backups, in short batches; never data of jobs still queued or running."""
    from acmeq.maintenance.cleanup import parse_categories, parse_older_than, run_cleanup

    categories = [c.value for c in parse_categories(only)] if only else None
    parse_older_than(older_than)  # a bad duration is exit 2 before anything happens
    if enqueue:
        _enqueue(categories, older_than, dry_run, batch_size, as_json)
        return
    report = run_cleanup(
        settings(), only=categories, older_than=older_than, dry_run=dry_run, batch_size=batch_size
    )
    if as_json:
        emit_json(report.as_dict())
    else:
        render_report(report)
    if report.failed:
        raise typer.Exit(1)


def _enqueue(
    categories: list[str] | None,
    older_than: str | None,
    dry_run: bool,
    batch_size: int | None,
    as_json: bool,
) -> None:
    from acmeq.queues import Enqueuer
    from acmeq.storage.redis_client import connect_checked

    cfg = settings()
    job = Enqueuer(cfg, connect_checked(cfg)).enqueue(
        "cleanup_expired_data",
        categories=categories,
        older_than=older_than,
        dry_run=dry_run,
        batch_size=batch_size,
    )
    if as_json:
        emit_json({"job_id": job.id, "job": "cleanup_expired_data", "queue": job.origin})
    else:
        line(f"enqueued cleanup_expired_data on {job.origin}: {job.id}")


def render_report(report: CleanupReport) -> None:
    from acmeq.maintenance.report import human_bytes, human_duration

    verb = "would delete" if report.dry_run else "deleted"
    grid = table(
        "category",
        "retention",
        "found",
        "size",
        verb,
        "kept",
        "time",
        "longest tx",
        right=("found", "size", verb, "kept", "time", "longest tx"),
    )
    for r in report.results:
        done = r.found if report.dry_run else r.deleted
        grid.add_row(
            r.category.value,
            human_duration(r.retention_s),
            f"{r.found:,}",
            human_bytes(r.found_bytes),
            "error" if r.error else f"{done:,}",
            f"{r.kept:,}",
            f"{r.seconds:.2f} s",
            f"{r.longest_tx_ms:.0f} ms",
        )
    show(grid)
    for r in report.results:
        _notes(r)
    total = sum(r.found for r in report.results)
    size = human_bytes(sum(r.found_bytes for r in report.results))
    if report.dry_run:
        line(f"dry run: {total:,} items ({size}) would be deleted; nothing was changed")
    else:
        deleted = sum(r.deleted for r in report.results)
        line(f"deleted {deleted:,} of {total:,} items found ({size}) in {report.seconds:.1f} s")


def _notes(result: CategoryResult) -> None:
    if result.error:
        line(f"{result.category.value}: error: {result.error}")
    for note in result.notes[:10]:
        line(f"{result.category.value}: {note}")
    if len(result.notes) > 10:
        line(f"{result.category.value}: ... and {len(result.notes) - 10} more notes (--json)")
