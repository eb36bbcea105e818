"""Exports and reports: what an export was asked for, its error, the donor's postal address.

Revision ID: 0004
Revises: 0003

``export_files`` (0001) gets the request (``spec``: filters, options, report name), whether it
carried personal data (``include_pii``) and the error of a failed export. ``users.address`` is the
postal address tax receipts need; it is personal data and only exported with ``--include-pii``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("export_files", sa.Column("spec", JSON, nullable=True))
    op.add_column(
        "export_files",
        sa.Column("include_pii", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("export_files", sa.Column("error", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("address", sa.Text(), nullable=True))


def downgrade() -> None:
    # batch mode: SQLite cannot drop a column in place on older versions.
    with op.batch_alter_table("users") as batch:
        batch.drop_column("address")
    with op.batch_alter_table("export_files") as batch:
        batch.drop_column("error")
        batch.drop_column("include_pii")
        batch.drop_column("spec")
