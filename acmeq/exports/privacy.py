"""Who may export personal data: the privacy rule of exports, checked before and in the job.

Donor names, e-mail addresses and postal addresses (and organizers' names and e-mails in
campaign exports) are only exported when ``--include-pii`` is given *and* the requester's role
permits it:

* ``admin``: any export;
* ``organizer``: only exports limited (``--campaign``) to campaigns they organize;
* ``employee``, or no identity at all: never.

The identity is the operator identity of the CLI (``--as USER`` / ``ACMEQ_USER``, as for
``acmeq progress``); without one the CLI acts as the anonymous operator, and personal data needs
someone to be accountable for it. Anonymous donations never expose the donor, whoever asks.
Every export with personal data is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.errors import PiiRefusedError
from acmeq.storage.models import AuditLog, Campaign, User, UserRole

USERS: sa.Table = User.__table__  # type: ignore[attr-defined]
CAMPAIGNS: sa.Table = Campaign.__table__  # type: ignore[attr-defined]
AUDIT: sa.Table = AuditLog.__table__  # type: ignore[attr-defined]
NO_IDENTITY = (
    "--include-pii: personal data needs an accountable requester: give --as USER (or set "
    "ACMEQ_USER) of an admin, or of the organizer of the exported campaigns"
)


@dataclass(frozen=True)
class Requester:
    user_id: int | None
    role: UserRole | None
    email: str | None

    @property
    def label(self) -> str:
        return self.email or "the operator"


def requester(engine: Engine, ident: str | None) -> Requester:
    """The requester named by ``--as`` / ``ACMEQ_USER`` (id or e-mail); None: the operator."""
    from acmeq.tracking.store import find_user

    if ident is None or not ident.strip():
        return Requester(None, None, None)
    user_id, role, email = find_user(engine, ident)
    return Requester(user_id, role, email)


def requester_by_id(engine: Engine, user_id: int | None) -> Requester:
    if user_id is None:
        return Requester(None, None, None)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(USERS.c.role, USERS.c.email).where(USERS.c.id == user_id)
        ).first()
    if row is None:
        return Requester(user_id, None, None)
    return Requester(user_id, UserRole(row.role), str(row.email))


def check_pii(engine: Engine, who: Requester, campaign_ids: Sequence[int]) -> None:
    """Raise :class:`PiiRefusedError` (exit 2, one line) unless ``who`` may export PII."""
    if who.user_id is None:
        raise PiiRefusedError(NO_IDENTITY)
    if who.role is UserRole.ADMIN:
        return
    if who.role is UserRole.ORGANIZER:
        if not campaign_ids:
            raise PiiRefusedError(
                f"--include-pii: {who.label} is an organizer and may only export personal data "
                "of campaigns they organize; name them with --campaign"
            )
        with engine.connect() as conn:
            owners = dict(
                conn.execute(
                    sa.select(CAMPAIGNS.c.id, CAMPAIGNS.c.organizer_id).where(
                        CAMPAIGNS.c.id.in_(list(campaign_ids))
                    )
                ).all()
            )
        foreign = [i for i in campaign_ids if owners.get(i) != who.user_id]
        if foreign:
            raise PiiRefusedError(
                f"--include-pii: {who.label} does not organize campaign {foreign[0]}; an "
                "organizer may only export personal data of their own campaigns"
            )
        return
    role = who.role.value if who.role is not None else "unknown"
    raise PiiRefusedError(
        f"--include-pii: {who.label} (role {role}) may not export personal data; an admin, or "
        "the organizer of the campaign, may"
    )


def audit_pii_export(engine: Engine, who: Requester, export_id: int, rows: int) -> None:
    """Record that personal data left the system, by whom and how much."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(AUDIT),
            {
                "at": datetime.now(UTC),
                "actor": f"user:{who.user_id}",
                "action": "export.personal_data",
                "entity_type": "export_file",
                "entity_id": str(export_id),
                "data": {"rows": rows, "email": who.email},
            },
        )
