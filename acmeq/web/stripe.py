"""Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``.

The signed payload is ``"{t}.{raw body}"``, HMAC-SHA256 with the endpoint secret. Any ``v1`` may
match any configured secret (a rotation lists the old and the new one); other schemes (``v0``)
are ignored. A timestamp more than ``tolerance`` seconds away from now is refused (Stripe's own
libraries only refuse old ones; a timestamp from the future is as suspicious). Comparisons are
constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

from acmeq.web.verify import (
    UnavailableError,
    VerificationError,
    VerifiedEvent,
    parse_json,
    required_str,
)

HEADER = "stripe-signature"


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``v1`` signature of ``body`` at ``timestamp`` (tests, demo, benchmark)."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def header_for(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """A complete ``Stripe-Signature`` header value, as Stripe sends it."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={sign(body, secret, t)}"


def parse_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the ``v1`` signatures of a header; VerificationError if unusable."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise VerificationError("bad timestamp in Stripe-Signature") from None
        elif key == "v1":
            signatures.append(value.strip())
    if timestamp is None:
        raise VerificationError("no timestamp in Stripe-Signature")
    if not signatures:
        raise VerificationError("no v1 signature in Stripe-Signature")
    return timestamp, signatures


def verify(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    tolerance: int = 300,
    now: float | None = None,
) -> VerifiedEvent:
    """Check a Stripe delivery; return the event or raise :class:`VerificationError`."""
    if not secrets:
        raise UnavailableError("no Stripe webhook secret configured (STRIPE_WEBHOOK_SECRET)")
    if not header:
        raise VerificationError("missing Stripe-Signature header")
    timestamp, signatures = parse_header(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise VerificationError("timestamp outside the tolerance")
    matched = False
    for secret in secrets:
        expected = sign(body, secret, timestamp)
        for candidate in signatures:
            # No early exit: the time taken does not depend on which pair matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise VerificationError("signature does not match")
    data = parse_json(body)
    return VerifiedEvent("stripe", required_str(data, "id"), required_str(data, "type", 128), data)
