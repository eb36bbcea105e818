"""`acmeq cleanup` and the ``cleanup_expired_data`` job: data retention (seed:
CleanupExpiredDataJob).

Each category has a retention (``[cleanup.retention]`` in acmeq.toml, or ``--older-than`` for a
run) and a sweeper; :func:`run_cleanup` runs the chosen ones in order and reports per category
what it found and deleted, and how long its longest transaction took::

    report = run_cleanup(settings, only=["job_progress"], dry_run=True)

What is never deleted, whatever its age: progress and failure records of a job RQ still has
queued, scheduled, deferred or running; exports still being written; the audit trail of a
donation still pending or of a webhook event not yet processed; the newest backup of each kind.
The donations and webhook_events tables themselves are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from acmeq.config.settings import Settings
from acmeq.errors import AcmeqError, UsageError
from acmeq.maintenance import cleanup_files, cleanup_redis, cleanup_sql
from acmeq.maintenance.report import Category, CategoryResult, CleanupReport
from acmeq.timeparse import parse_duration


def parse_categories(values: Iterable[str] | None) -> list[Category]:
    """``["job_progress,cache", "audit_log"]`` -> categories; unknown names are a UsageError."""
    if not values:
        return list(Category)
    chosen: list[Category] = []
    for value in values:
        for raw in value.split(","):
            name = raw.strip().replace("-", "_")
            if not name:
                continue
            try:
                category = Category(name)
            except ValueError:
                valid = ", ".join(c.value for c in Category)
                raise UsageError(f"--only: unknown category {raw.strip()!r}; use {valid}") from None
            if category not in chosen:
                chosen.append(category)
    if not chosen:
        raise UsageError("--only: no category given")
    return [c for c in Category if c in chosen]


def parse_older_than(value: str | None) -> int | None:
    """``--older-than 7d`` -> seconds (None: each category's configured retention)."""
    if value is None:
        return None
    return int(parse_duration(value, "--older-than").total_seconds())


@dataclass
class Context:
    settings: Settings
    engine: Engine
    connection: redis.Redis
    now: datetime
    dry_run: bool
    batch_size: int
    older_than: int | None

    def retention(self, category: Category) -> int:
        if self.older_than is not None:
            return self.older_than
        if category is Category.BACKUPS:
            return self.settings.backup.max_age
        return int(self.settings.cleanup.retention[category.value])

    def cutoff(self, category: Category) -> datetime:
        return self.now - timedelta(seconds=self.retention(category))


def run_cleanup(
    settings: Settings,
    *,
    engine: Engine | None = None,
    connection: redis.Redis | None = None,
    only: Iterable[str] | None = None,
    older_than: str | int | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    now: datetime | None = None,
    progress: Callable[[CategoryResult], None] | None = None,
) -> CleanupReport:
    """Run the chosen categories (all by default); return what each found and deleted.

    A category that fails is reported with its error and the others still run. Unreachable
    Redis or database raise before anything is deleted (exit 3).
    """
    from acmeq.storage import sql as db
    from acmeq.storage.redis_client import connect_checked

    categories = parse_categories(only)
    seconds = older_than if isinstance(older_than, int) else parse_older_than(older_than)
    if engine is None:
        engine = db.engine_for(settings)
    db.check_reachable(engine)
    db.require_schema(engine)
    ctx = Context(
        settings=settings,
        engine=engine,
        connection=connection if connection is not None else connect_checked(settings),
        now=now or datetime.now(UTC),
        dry_run=dry_run,
        batch_size=batch_size or settings.cleanup.batch_size,
        older_than=seconds,
    )
    report = CleanupReport(dry_run=dry_run)
    for category in categories:
        result = CategoryResult(category, ctx.retention(category))
        started = time.perf_counter()
        try:
            SWEEPERS[category](ctx, result)
        except (AcmeqError, sa.exc.SQLAlchemyError, redis.RedisError, OSError) as exc:
            result.error = _one_line(exc)
        result.seconds = time.perf_counter() - started
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- the categories ----------------------------------------------------------------------------


def _active_guard(ctx: Context, id_of: Callable[[Any], str | None]) -> cleanup_sql.Guard:
    """Keep rows whose job RQ still has queued, scheduled, deferred or running."""

    def guard(conn: Connection, rows: Sequence[Any]) -> set[Any]:
        del conn
        by_job = {r[0]: id_of(r) for r in rows}
        active = cleanup_redis.active_job_ids(ctx.connection, {j for j in by_job.values() if j})
        return {pk for pk, job_id in by_job.items() if job_id in active}

    return guard


def clean_job_progress(ctx: Context, result: CategoryResult) -> None:
    sweep = cleanup_sql.Sweep(
        cleanup_sql.table("job_progress"),
        "updated_at",
        ctx.cutoff(Category.JOB_PROGRESS),
        guard=_active_guard(ctx, lambda r: str(r[0])),
    )
    cleanup_sql.run_sweep(ctx.engine, sweep, result, batch_size=ctx.batch_size, dry_run=ctx.dry_run)


def clean_failed_jobs(ctx: Context, result: CategoryResult) -> None:
    """RQ's failed registries (every queue), then the permanent SQL records."""
    cutoff = ctx.cutoff(Category.FAILED_JOBS)
    for queue in cleanup_redis.failed_queues(ctx.connection, ctx.settings.queues):
        cleanup_redis.sweep_failed_registry(
            ctx.connection,
            queue,
            cutoff,
            result,
            batch_size=ctx.batch_size,
            dry_run=ctx.dry_run,
        )
    sweep = cleanup_sql.Sweep(
        cleanup_sql.table("failed_jobs"),
        "failed_at",
        cutoff,
        columns=("job_id",),
        guard=_active_guard(ctx, lambda r: r.job_id),
    )
    cleanup_sql.run_sweep(ctx.engine, sweep, result, batch_size=ctx.batch_size, dry_run=ctx.dry_run)


def clean_export_files(ctx: Context, result: CategoryResult) -> None:
    """Export records older than the retention, and their files, unless still in the works."""
    active_guard = _active_guard(ctx, lambda r: r.job_id)

    def guard(conn: Connection, rows: Sequence[Any]) -> set[Any]:
        busy = {r[0] for r in rows if r.status in ("pending", "running")}
        return busy | active_guard(conn, rows)

    sweep = cleanup_sql.Sweep(
        cleanup_sql.table("export_files"),
        "created_at",
        ctx.cutoff(Category.EXPORT_FILES),
        columns=("path", "status", "job_id"),
        guard=guard,
        after_delete=lambda rows: cleanup_files.unlink_export_files(rows, result),
        size_of=lambda r: cleanup_files.export_file_size(r.path),
    )
    cleanup_sql.run_sweep(ctx.engine, sweep, result, batch_size=ctx.batch_size, dry_run=ctx.dry_run)


def clean_temp_files(ctx: Context, result: CategoryResult) -> None:
    from acmeq.maintenance.backup import backup_dir

    files = cleanup_files.temp_files(
        ctx.settings.state_dir, ctx.settings.cleanup.temp_patterns, [backup_dir(ctx.settings)]
    )
    with result.transaction():
        cleanup_files.sweep_temp_files(
            files, ctx.cutoff(Category.TEMP_FILES), result, dry_run=ctx.dry_run
        )


def clean_cache(ctx: Context, result: CategoryResult) -> None:
    cleanup_redis.sweep_cache_keys(
        ctx.connection,
        ctx.settings.cleanup.cache_prefixes,
        ctx.retention(Category.CACHE),
        result,
        batch_size=ctx.batch_size,
        dry_run=ctx.dry_run,
    )


def clean_audit_log(ctx: Context, result: CategoryResult) -> None:
    cleanup_sql.prune_audit_log(
        ctx.engine,
        ctx.cutoff(Category.AUDIT_LOG),
        result,
        batch_size=ctx.batch_size,
        dry_run=ctx.dry_run,
    )


def clean_backups(ctx: Context, result: CategoryResult) -> None:
    from acmeq.maintenance.backup import prune_backups

    with result.transaction():
        prune_backups(
            ctx.settings,
            result,
            dry_run=ctx.dry_run,
            max_age=ctx.retention(Category.BACKUPS),
            now=ctx.now,
            engine=ctx.engine,
        )


SWEEPERS: dict[Category, Callable[[Context, CategoryResult], None]] = {
    Category.JOB_PROGRESS: clean_job_progress,
    Category.FAILED_JOBS: clean_failed_jobs,
    Category.EXPORT_FILES: clean_export_files,
    Category.TEMP_FILES: clean_temp_files,
    Category.CACHE: clean_cache,
    Category.AUDIT_LOG: clean_audit_log,
    Category.BACKUPS: clean_backups,
}
