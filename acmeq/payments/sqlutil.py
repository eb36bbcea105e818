"""Small SQL helpers shared by the payments domain (SQLite and PostgreSQL alike)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from acmeq.storage.models import AuditLog, Campaign, Company, Donation, User, WebhookEvent
from acmeq.storage.models_payments import CampaignMilestone, EmployeeMatchTotal, Refund

DONATIONS: sa.Table = Donation.__table__  # type: ignore[attr-defined]
CAMPAIGNS: sa.Table = Campaign.__table__  # type: ignore[attr-defined]
COMPANIES: sa.Table = Company.__table__  # type: ignore[attr-defined]
USERS: sa.Table = User.__table__  # type: ignore[attr-defined]
AUDIT: sa.Table = AuditLog.__table__  # type: ignore[attr-defined]
EVENTS: sa.Table = WebhookEvent.__table__  # type: ignore[attr-defined]
REFUNDS: sa.Table = Refund.__table__  # type: ignore[attr-defined]
MILESTONES: sa.Table = CampaignMilestone.__table__  # type: ignore[attr-defined]
MATCH_TOTALS: sa.Table = EmployeeMatchTotal.__table__  # type: ignore[attr-defined]


def insert_ignore(
    conn: sa.Connection, table: sa.Table, values: Mapping[str, Any], conflict: Sequence[str]
) -> int:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING; return the number of rows inserted (0/1)."""
    insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=list(conflict))
    return int(conn.execute(stmt).rowcount or 0)


def audit(
    conn: sa.Connection,
    at: datetime,
    actor: str,
    entries: Sequence[tuple[str, str, int | str, dict[str, Any]]],
) -> None:
    """Write audit rows (action, entity type, entity id, data) in one statement."""
    if not entries:
        return
    rows = [
        {
            "at": at,
            "actor": actor[:200],
            "action": action,
            "entity_type": entity_type,
            "entity_id": str(entity_id),
            "data": data,
        }
        for action, entity_type, entity_id, data in entries
    ]
    conn.execute(sa.insert(AUDIT), rows)
