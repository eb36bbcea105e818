"""Maintenance: data retention (`acmeq cleanup`) and backups (`acmeq backup`).

Public API::

    from acmeq.maintenance import run_cleanup, create_backup, list_backups, verify_backup
    report = run_cleanup(settings, only=["job_progress"], dry_run=True)

The modules import the database and Redis layers lazily where they can, so importing this
package stays cheap for the CLI.
"""

from __future__ import annotations

from acmeq.maintenance.backup import (
    BackupInfo,
    backup_dir,
    create_backup,
    find_backup,
    list_backups,
    prune_backups,
    restore_backup,
    verify_backup,
)
from acmeq.maintenance.cleanup import parse_categories, parse_older_than, run_cleanup
from acmeq.maintenance.report import Category, CategoryResult, CleanupReport

__all__ = [
    "BackupInfo",
    "Category",
    "CategoryResult",
    "CleanupReport",
    "backup_dir",
    "create_backup",
    "find_backup",
    "list_backups",
    "parse_categories",
    "parse_older_than",
    "prune_backups",
    "restore_backup",
    "run_cleanup",
    "verify_backup",
]
