"""`acmeq backup create|list|verify|restore`: database (and Redis) backups."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import emit_json, line, show, table

if TYPE_CHECKING:
    from acmeq.maintenance.backup import BackupInfo

app = typer.Typer(
    help="Database and Redis backups: create, list, verify, restore.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _size(size: int) -> str:
    from acmeq.maintenance.report import human_bytes

    return human_bytes(size)


def _rows(info: BackupInfo) -> str:
    if info.kind == "redis":
        keys = sum(info.tables.values())
        return f"{keys:,} keys"
    return f"{sum(info.tables.values()):,} rows in {len(info.tables)} tables"


@app.command("create")
def create(
    redis_data: Annotated[
        bool,
        typer.Option("--redis", help="Also back up Redis (BGSAVE; local Redis only)."),
    ] = False,
    no_database: Annotated[
        bool, typer.Option("--no-database", help="Skip the database (with --redis).")
    ] = False,
    no_prune: Annotated[
        bool, typer.Option("--no-prune", help="Keep every old backup this time.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up the database (SQLite online backup / pg_dump) and apply retention."""
    from acmeq.maintenance.backup import create_backup

    result = create_backup(
        settings(), database=not no_database, redis_data=redis_data, prune=not no_prune
    )
    if as_json:
        emit_json(result.as_dict())
        return
    for info in result.created:
        line(
            f"created {info.kind} backup {info.path} ({_size(info.size_bytes)}, {_rows(info)}, "
            f"sha256 {info.sha256[:16]}…)"
        )
    for note in result.notes:
        line(note)
    if result.pruned and result.pruned.deleted:
        line(
            f"retention: deleted {result.pruned.deleted} old backup(s) "
            f"({_size(result.pruned.deleted_bytes)})"
        )


@app.command("list")
def list_(
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only 'database' or 'redis' backups.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Backups in the backup directory, newest first (read from their sidecar files)."""
    from acmeq.errors import UsageError
    from acmeq.maintenance.backup import backup_dir, list_backups

    if kind not in (None, "database", "redis"):
        raise UsageError(f"--kind: unknown kind {kind!r}; use database or redis")
    backups = list_backups(settings(), kind)
    if as_json:
        emit_json(
            {"directory": str(backup_dir(settings())), "backups": [b.as_dict() for b in backups]}
        )
        return
    if not backups:
        line(f"no backups in {backup_dir(settings())}")
        return
    grid = table(
        "name",
        "kind",
        "format",
        "created (UTC)",
        "size",
        "contents",
        "verified",
        ids=("name",),
        right=("size",),
    )
    for b in backups:
        grid.add_row(
            b.name,
            b.kind,
            b.format,
            _when(b.created_at),
            _size(b.size_bytes),
            _rows(b),
            _when(b.verified_at),
        )
    show(grid)
    line(f"{len(backups)} backup(s) in {backup_dir(settings())}")


@app.command("verify")
def verify(
    name: Annotated[
        str | None,
        typer.Argument(
            help="Backup file name (or a unique prefix); default: the newest database backup."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the checksum, restore into a scratch database, compare row counts per table."""
    from acmeq.maintenance.backup import verify_backup

    result = verify_backup(settings(), name)
    if as_json:
        emit_json(result.as_dict())
    else:
        if result.tables:
            grid = table("table", "expected", "restored", "", right=("expected", "restored"))
            for tbl, expected, restored in result.tables:
                same = expected == restored or not result.counts_must_match
                grid.add_row(
                    tbl,
                    "-" if expected is None else f"{expected:,}",
                    "-" if restored is None else f"{restored:,}",
                    ("ok" if expected == restored else "changed") if same else "MISMATCH",
                )
            show(grid)
        state = "OK" if result.ok else "FAILED"
        line(
            f"verify {result.backup.name}: {state} "
            f"(sha256 {'ok' if result.sha256_ok else 'BAD'}; {result.detail})"
        )
    if not result.ok:
        raise typer.Exit(1)


@app.command("restore")
def restore(
    name: Annotated[str, typer.Argument(help="Backup file name (or a unique prefix).")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a database that already holds data."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a database backup into the configured database (which must be empty)."""
    from acmeq.maintenance.backup import restore_backup

    result = restore_backup(settings(), name, force=force)
    if as_json:
        emit_json(result.as_dict())
        return
    replaced = (
        f"; replaced {len(result.replaced_tables)} table(s) holding data"
        if result.replaced_tables
        else ""
    )
    line(
        f"restored {result.backup.name} into {result.target} "
        f"(schema revision {result.revision or 'none'}){replaced}"
    )
