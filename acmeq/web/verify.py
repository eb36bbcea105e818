"""What every provider's verifier returns or raises."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from acmeq.errors import UnavailableError as UnavailableError
from acmeq.errors import VerificationError as VerificationError


@dataclass(frozen=True)
class VerifiedEvent:
    """A provider event whose origin was verified; ``event_id`` is the provider's own id."""

    provider: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    # Mollie's classic webhooks name a payment, not an event: the same id arrives again on every
    # status change, so a recorded, already processed one is processed again (see intake).
    rearm: bool = False


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a body, or :class:`VerificationError` ('malformed body')."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("malformed body: not JSON") from None
    if not isinstance(data, dict):
        raise VerificationError("malformed body: not a JSON object")
    return data


def required_str(data: dict[str, Any], key: str, limit: int = 255) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise VerificationError(f"malformed body: no {key!r}")
    return value
