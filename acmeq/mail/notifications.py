"""Donation mail: the donor's confirmation and the organizer's copy.

The confirmation number is derived from the donation alone (``ACME-2026-0000123-45``: the year
the donation was made, its id and two mod-97 check digits), so it is stable across retries and
re-sends, unique, and a typo in it is caught when someone reads it out on the phone.
The organizer's copy of an anonymous donation never contains the donor's name or address.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from acmeq.config.settings import process_settings
from acmeq.mail.sending import compose, current_attempt, deliver
from acmeq.mail.transport import transport_for


def confirmation_number(donation_id: int, created_at: datetime) -> str:
    """``ACME-<year>-<id, 7 digits>-<check>``; the check digits follow ISO 7064 mod 97-10."""
    body = f"{created_at.year}{donation_id:07d}"
    check = 98 - (int(body) * 100) % 97
    return f"ACME-{created_at.year}-{donation_id:07d}-{check:02d}"


def valid_confirmation_number(number: str) -> bool:
    parts = number.split("-")
    if len(parts) != 4 or parts[0] != "ACME" or not all(p.isdigit() for p in parts[1:]):
        return False
    return int(parts[1] + parts[2] + parts[3]) % 97 == 1


def donation_context(donation_id: int) -> dict[str, Any] | None:
    """Everything both messages show, read in one query; None for an unknown donation."""
    from acmeq.storage.models import Campaign, Company, Donation, User
    from acmeq.storage.sql import engine_for

    d = Donation.__table__  # type: ignore[attr-defined]
    c = Campaign.__table__  # type: ignore[attr-defined]
    u = User.__table__  # type: ignore[attr-defined]
    org = User.__table__.alias("organizer")  # type: ignore[attr-defined]
    co = Company.__table__  # type: ignore[attr-defined]
    stmt = (
        sa.select(
            d.c.id,
            d.c.amount_minor,
            d.c.currency,
            d.c.matched_minor,
            d.c.anonymous,
            d.c.donor_locale,
            d.c.created_at,
            d.c.completed_at,
            c.c.title.label("campaign_title"),
            c.c.raised_minor,
            c.c.goal_minor,
            c.c.donation_count,
            u.c.email.label("donor_email"),
            u.c.name.label("donor_name"),
            org.c.email.label("organizer_email"),
            org.c.name.label("organizer_name"),
            org.c.locale.label("organizer_locale"),
            co.c.name.label("company_name"),
        )
        .select_from(
            d.join(c, c.c.id == d.c.campaign_id)
            .outerjoin(u, u.c.id == d.c.donor_id)
            .join(org, org.c.id == c.c.organizer_id)
            .outerjoin(co, co.c.id == u.c.company_id)
        )
        .where(d.c.id == donation_id)
    )
    with engine_for(process_settings()).connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    data = dict(row._mapping)
    data["confirmation_number"] = confirmation_number(int(data["id"]), data["created_at"])
    data["donated_at"] = (data["completed_at"] or data["created_at"]).isoformat()
    for key in ("created_at", "completed_at"):
        data.pop(key)
    data["company_name"] = data["company_name"] or "Your employer"
    return data


def _send(template: str, to: str, locale: str, context: dict[str, Any], key: str) -> dict[str, Any]:
    from acmeq.mail.store import mail_engine

    settings = process_settings()
    out = compose(settings, to=[to], template=template, context=context, locale=locale)
    attempt = current_attempt()
    payload = {
        "to": [to],
        "subject": out.subject,
        "text": out.text,
        "html": out.html,
        "locale": out.locale,
        "message_key": key,
    }
    result = deliver(mail_engine(settings), transport_for(settings), out, key, attempt, payload)
    return {
        "message_key": key,
        "sent": len(result["sent"]),
        "already_sent": len(result["already_sent"]),
        "uncertain": len(result["uncertain"]),
    }


def payment_confirmation(donation_id: int) -> dict[str, Any]:
    """``send_payment_confirmation``: the donor's confirmation, in the donor's locale."""
    data = donation_context(donation_id)
    if data is None:
        return {"donation_id": donation_id, "skipped": "no such donation"}
    if not data["donor_email"]:
        return {"donation_id": donation_id, "skipped": "no donor address (guest or erased)"}
    context = {k: data[k] for k in _DONOR_FIELDS}
    result = _send(
        "payment_confirmation",
        data["donor_email"],
        data["donor_locale"],
        context,
        f"confirmation:{donation_id}",
    )
    return {
        "donation_id": donation_id,
        "confirmation_number": data["confirmation_number"],
        **result,
    }


def organizer_notification(donation_id: int) -> dict[str, Any]:
    """``send_organizer_notification``: the organizer's copy; anonymous donors stay unnamed."""
    data = donation_context(donation_id)
    if data is None:
        return {"donation_id": donation_id, "skipped": "no such donation"}
    context = {k: data[k] for k in _ORGANIZER_FIELDS}
    # The template only names the donor when not anonymous; the name is not even handed to it.
    context["donor_name"] = None if data["anonymous"] else (data["donor_name"] or "—")
    result = _send(
        "organizer_notification",
        data["organizer_email"],
        data["organizer_locale"],
        context,
        f"organizer:{donation_id}",
    )
    return {"donation_id": donation_id, **result}


_DONOR_FIELDS = (
    "donor_name",
    "campaign_title",
    "amount_minor",
    "currency",
    "matched_minor",
    "company_name",
    "anonymous",
    "confirmation_number",
    "donated_at",
)
_ORGANIZER_FIELDS = (
    "organizer_name",
    "campaign_title",
    "amount_minor",
    "currency",
    "anonymous",
    "raised_minor",
    "goal_minor",
    "donation_count",
    "confirmation_number",
    "donated_at",
)
