"""What the `acmeq mail` commands do: a test message, the failed e-mails, resending them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from acmeq.config.settings import Settings
from acmeq.errors import UsageError
from acmeq.mail import job_name_for, store
from acmeq.mail.sending import build_message, compose, message_id
from acmeq.mail.transport import OutboxTransport, transport_for


def _engine(settings: Settings) -> Any:
    from acmeq.storage.sql import engine_for, require_schema

    engine = engine_for(settings)
    require_schema(engine)
    return engine


def send_test(settings: Settings, to: str, locale: str | None = None) -> dict[str, Any]:
    """Send the ``test`` template to ``to`` now, through the configured transport."""
    transport = transport_for(settings)
    out = compose(
        settings,
        to=[to],
        template="test",
        context={"sent_at": datetime.now(UTC).isoformat(), "transport": transport.description},
        locale=locale,
    )
    msg_id = message_id(f"test:{datetime.now(UTC).isoformat()}:{to}", out.from_address)
    refused = transport.send(build_message(out, msg_id), out.from_address, out.recipients)
    if refused:
        raise UsageError(f"{transport.description}: refused {to}: {refused[to.lower()]}")
    path = transport.last_path if isinstance(transport, OutboxTransport) else None
    return {"to": to, "via": transport.description, "path": str(path) if path else None}


def failed(
    settings: Settings, since: datetime | None, include_retried: bool = False
) -> list[dict[str, Any]]:
    return store.list_failed(_engine(settings), since, include_retried)


def retry(
    settings: Settings, connection: redis.Redis, ids: list[int] | None
) -> list[dict[str, Any]]:
    """Enqueue failed e-mails again (``ids``, or every one not yet retried).

    The resend keeps the original message key, so recipients who got the message meanwhile are
    skipped. An ``uncertain`` one is released first: the operator sends it again knowing it may
    already have arrived (docs/mail.md, "Exactly once").
    """
    from acmeq.queues import Enqueuer

    engine = _engine(settings)
    rows = store.get_failed(engine, ids) if ids is not None else store.list_failed(engine)
    if ids is not None:
        missing = sorted(set(ids) - {int(r["id"]) for r in rows})
        if missing:
            raise UsageError(f"no failed e-mail with id {missing[0]}")
    enqueuer = Enqueuer(settings, connection)
    done = []
    for row in rows:
        if row["status"] == "retried":
            done.append({"id": row["id"], "job_id": None, "note": "already retried"})
            continue
        payload = {k: v for k, v in dict(row["payload"] or {}).items() if v is not None}
        recipients = payload.pop("recipients", [])
        key = row["message_key"] or payload.get("message_key")
        if key:
            store.release(engine, key, recipients)
            payload["message_key"] = key
        payload.setdefault("to", recipients)
        job = enqueuer.enqueue(job_name_for(payload.get("priority", "normal")), **payload)
        store.mark_retried(engine, int(row["id"]))
        done.append({"id": row["id"], "job_id": job.id, "note": "to " + ", ".join(recipients)})
    return done
