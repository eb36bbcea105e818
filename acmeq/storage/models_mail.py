"""SQL tables of the mail domain (beside :mod:`acmeq.storage.models`).

``mail_sent`` makes sending idempotent: one row per (message key, recipient), inserted as
``sending`` *before* the message is handed to the server and set to ``sent`` once the server
accepted it (docs/mail.md, "Exactly once"). ``campaign_follows`` are the campaigns an employee
follows (the weekly digest lists them).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from acmeq.storage.models import BigIntId, _at, _enum


class SendState(StrEnum):
    SENDING = "sending"  # claimed; the send started (or the sender died: delivery unknown)
    SENT = "sent"  # the server accepted it


class FailedEmailStatus(StrEnum):
    FAILED = "failed"  # the server refused it or could not be reached, on the last try
    UNCERTAIN = "uncertain"  # the sender died or the connection broke during the send
    RETRIED = "retried"  # `acmeq mail retry` enqueued it again


class SentEmail(SQLModel, table=True):
    __tablename__ = "mail_sent"
    __table_args__ = (sa.UniqueConstraint("message_key", "recipient"),)

    id: int | None = Field(default=None, sa_type=BigIntId, primary_key=True)
    message_key: str = Field(max_length=200)
    recipient: str = Field(max_length=320)
    state: SendState = Field(default=SendState.SENDING, sa_type=_enum(SendState), nullable=False)
    message_id: str = Field(default="", max_length=255)
    job_id: str | None = Field(default=None, max_length=128, nullable=True)
    created_at: datetime = _at(index=True)
    sent_at: datetime | None = _at(nullable=True)


class CampaignFollow(SQLModel, table=True):
    __tablename__ = "campaign_follows"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    campaign_id: int = Field(foreign_key="campaigns.id", primary_key=True)
    created_at: datetime = _at()


__all__ = ["CampaignFollow", "FailedEmailStatus", "SendState", "SentEmail"]
