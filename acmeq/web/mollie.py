"""Mollie: classic (unsigned) and signed webhooks.

* Classic: a form body ``id=tr_...`` and no signature. Nothing in it is trusted: the job fetches
  the payment from Mollie's API and acts on the status Mollie reports, so a forged id changes
  nothing. Mollie calls again on every status change with the same id, so the event is re-armed
  when it arrives again after being processed (:attr:`VerifiedEvent.rearm`).
* Signed (next-gen): ``X-Mollie-Signature: [sha256=]<hex>``, HMAC-SHA256 of the raw body with a
  webhook secret; several secrets may be configured. The JSON body names an event (``id``,
  ``type``) and its entity (``entityId``: the payment, fetched from the API as well).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from urllib.parse import parse_qs

from acmeq.web.verify import (
    UnavailableError,
    VerificationError,
    VerifiedEvent,
    parse_json,
    required_str,
)

HEADER = "x-mollie-signature"
PAYMENT_ID = re.compile(r"^tr_[A-Za-z0-9]{1,64}$")
CLASSIC_TYPE = "payment.status_changed"


def sign(body: bytes, secret: str) -> str:
    """The ``X-Mollie-Signature`` value of ``body`` (tests)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secrets: Sequence[str]) -> VerifiedEvent:
    if header is None:
        return _classic(body)
    if not secrets:
        raise UnavailableError("no Mollie webhook secret configured (MOLLIE_WEBHOOK_SECRET)")
    given = header.strip()
    if given.startswith("sha256="):
        given = given[len("sha256=") :]
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(expected, given.lower())
    if not matched:
        raise VerificationError("signature does not match")
    data = parse_json(body)
    return VerifiedEvent("mollie", required_str(data, "id"), required_str(data, "type", 128), data)


def _classic(body: bytes) -> VerifiedEvent:
    try:
        form = parse_qs(body.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise VerificationError("malformed body: expected id=tr_...") from None
    ids = form.get("id", [])
    if len(ids) != 1 or not PAYMENT_ID.match(ids[0]):
        raise VerificationError("malformed body: expected id=tr_...")
    payment_id = ids[0]
    return VerifiedEvent(
        "mollie", payment_id, CLASSIC_TYPE, {"id": payment_id, "classic": True}, rearm=True
    )
