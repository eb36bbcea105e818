"""SQL tables of the maintenance domain (beside :mod:`acmeq.storage.models`).

A backup is recorded twice: here (so `acmeq backup list` can join what the database knows) and in
a JSON sidecar beside the file (so a backup can be listed, verified and restored when the
database it came from is gone). The sidecar is the authority; this table is the audit trail.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from acmeq.storage.models import JSONType, UTCDateTime, utcnow


class BackupKind(StrEnum):
    DATABASE = "database"
    REDIS = "redis"


class Backup(SQLModel, table=True):
    """One backup file written by `acmeq backup create` (or the backup_database job)."""

    __tablename__ = "backups"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)  # a BackupKind value
    name: str = Field(max_length=255, unique=True)  # file name inside the backup directory
    path: str = Field(default="", sa_type=sa.Text)
    format: str = Field(max_length=32)  # sqlite.gz, pg_dump, rdb.gz, aof.tar.gz
    size_bytes: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    sha256: str = Field(max_length=64)
    source: str = Field(default="", max_length=500)  # masked URL of the database / Redis
    tables: dict[str, Any] | None = Field(default=None, sa_type=JSONType, nullable=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True
    )
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


__all__ = ["Backup", "BackupKind"]
