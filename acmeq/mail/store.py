"""The SQL side of mail: per-recipient send claims (idempotency) and failed-email records.

A claim is a ``mail_sent`` row (message key, recipient), inserted as ``sending`` and committed
*before* the message is handed to the server, set to ``sent`` once the server accepted it:

- a retried job finds ``sent`` and skips that recipient (never twice);
- it finds ``sending`` when an earlier attempt died between the claim and the server's answer:
  the message may or may not have been delivered. acmeq does **not** resend it (at most once in
  that window); it records a failed e-mail with status ``uncertain``, and an operator can send it
  again deliberately with ``acmeq mail retry ID`` (docs/mail.md, "Exactly once").
- a send the server refused (or that never reached it) deletes its claim, so the next try sends.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from acmeq.config.settings import Settings
from acmeq.storage.models import FailedEmail, utcnow
from acmeq.storage.models_mail import FailedEmailStatus, SendState, SentEmail

_ENGINES: dict[str, Engine] = {}


def mail_engine(settings: Settings) -> Engine:
    """The engine mail keeps its claims with.

    On SQLite it is an engine of its own with ``synchronous=NORMAL``: in WAL mode a commit then
    survives a crash of the process (the failure the claims are about: a worker killed mid-send)
    without an fsync per commit, which took ~10 ms a message and made bulk mail crawl. A power
    loss may forget the last claims (a resend after such a crash can duplicate a message); every
    other table keeps the shared engine's default. Elsewhere it is the shared engine.
    """
    from acmeq.storage.sql import engine_for, make_engine

    url = settings.effective_database_url
    if not url.startswith("sqlite"):
        return engine_for(settings)
    engine = _ENGINES.get(url)
    if engine is None:
        engine = make_engine(url)
        sa.event.listen(engine, "connect", _sqlite_normal_sync)
        _ENGINES[url] = engine
    return engine


def _forget_after_fork() -> None:
    # A forked work horse must not share the parent's SQLite handles (as acmeq.storage.sql).
    for engine in _ENGINES.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_after_fork)


def _sqlite_normal_sync(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


SENT = SentEmail.__table__  # type: ignore[attr-defined]
FAILED = FailedEmail.__table__  # type: ignore[attr-defined]


@dataclass
class Claim:
    """What to do with each recipient of one message."""

    to_send: list[str] = field(default_factory=list)
    already_sent: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)


def claim(
    engine: Engine,
    key: str,
    recipients: Sequence[str],
    message_id: str,
    job_id: str | None,
    mark_sent: Sequence[tuple[str, list[str]]] = (),
) -> Claim:
    """Claim the recipients not yet claimed for ``key`` (one transaction); report the others.

    ``mark_sent``: (key, recipients) of earlier messages the server accepted, marked ``sent`` in
    the same transaction (a batch commits once per message instead of twice).
    """
    result = Claim()
    wanted = list(dict.fromkeys(recipients))
    with engine.begin() as conn:
        for done_key, done in mark_sent:
            _mark(conn, done_key, done)
        existing = {
            row.recipient: row.state
            for row in conn.execute(
                sa.select(SENT.c.recipient, SENT.c.state).where(
                    SENT.c.message_key == key, SENT.c.recipient.in_(wanted)
                )
            )
        }
        fresh = [r for r in wanted if r not in existing]
        if fresh:
            now = utcnow()
            conn.execute(
                SENT.insert(),
                [
                    {
                        "message_key": key,
                        "recipient": r,
                        "state": SendState.SENDING.value,
                        "message_id": message_id[:255],
                        "job_id": job_id,
                        "created_at": now,
                    }
                    for r in fresh
                ],
            )
    # A concurrent claimer makes the INSERT fail with IntegrityError: the caller's job fails and
    # is retried, and the retry sees the other claim (rare: RQ runs one execution at a time).
    for r in wanted:
        state = existing.get(r)
        if state is None:
            result.to_send.append(r)
        elif state == SendState.SENT.value:
            result.already_sent.append(r)
        else:
            result.uncertain.append(r)
    return result


def mark_sent(engine: Engine, key: str, recipients: Sequence[str]) -> None:
    if not recipients:
        return
    with engine.begin() as conn:
        _mark(conn, key, recipients)


def _mark(conn: Any, key: str, recipients: Sequence[str]) -> None:
    if recipients:
        conn.execute(
            SENT.update()
            .where(SENT.c.message_key == key, SENT.c.recipient.in_(list(recipients)))
            .values(state=SendState.SENT.value, sent_at=utcnow())
        )


def release(engine: Engine, key: str, recipients: Sequence[str]) -> None:
    """Forget unfinished claims: the next attempt may send to these recipients."""
    if not recipients:
        return
    with engine.begin() as conn:
        conn.execute(
            SENT.delete().where(
                SENT.c.message_key == key,
                SENT.c.recipient.in_(list(recipients)),
                SENT.c.state == SendState.SENDING.value,
            )
        )


def sent_count(engine: Engine, key_prefix: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(SENT)
                .where(SENT.c.message_key.startswith(key_prefix), SENT.c.state == "sent")
            ).scalar_one()
        )


# -- failed e-mails -------------------------------------------------------------------------------


def record_failure(
    engine: Engine,
    *,
    recipients: Sequence[str],
    subject: str,
    template: str,
    locale: str,
    error: str,
    attempts: int,
    payload: dict[str, Any],
    message_key: str,
    job_id: str | None,
    status: FailedEmailStatus = FailedEmailStatus.FAILED,
) -> int | None:
    """Record a failed send; an uncertain one only once per (key, recipients). Return its id."""
    to_address = ", ".join(recipients)[:320]
    now = utcnow()
    with engine.begin() as conn:
        if status is FailedEmailStatus.UNCERTAIN:
            known = conn.execute(
                sa.select(FAILED.c.id).where(
                    FAILED.c.message_key == message_key,
                    FAILED.c.to_address == to_address,
                    FAILED.c.status == status.value,
                )
            ).first()
            if known is not None:
                return None
        row = conn.execute(
            FAILED.insert().values(
                to_address=to_address,
                subject=subject[:500],
                template=template[:200],
                locale=locale[:16],
                error=error,
                attempts=attempts,
                payload=payload,
                created_at=now,
                last_attempt_at=now,
                message_key=message_key[:200],
                job_id=job_id,
                status=status.value,
            )
        )
        pk = row.inserted_primary_key
        return int(pk[0]) if pk else None


def list_failed(
    engine: Engine, since: datetime | None = None, include_retried: bool = False
) -> list[dict[str, Any]]:
    stmt = sa.select(FAILED).order_by(FAILED.c.id)
    if since is not None:
        stmt = stmt.where(FAILED.c.last_attempt_at >= since)
    if not include_retried:
        stmt = stmt.where(FAILED.c.status != FailedEmailStatus.RETRIED.value)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


def get_failed(engine: Engine, ids: Sequence[int]) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(FAILED).where(FAILED.c.id.in_(list(ids))))
        return [dict(row._mapping) for row in rows]


def mark_retried(engine: Engine, failed_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            FAILED.update()
            .where(FAILED.c.id == failed_id)
            .values(status=FailedEmailStatus.RETRIED.value, retried_at=utcnow())
        )
