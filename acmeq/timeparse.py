"""Parsing of the durations and instants that commands take (`--in 5m`, `--at 2026-12-01T09:00`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from acmeq.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str, option: str = "duration") -> timedelta:
    """'90' (seconds), '30s', '5m', '1h30m', '2d' -> timedelta; anything else is a UsageError."""
    raw = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return timedelta(seconds=float(raw))
    parts = _PART.findall(raw)
    if not raw or not parts or "".join(n + u for n, u in parts) != raw:
        raise UsageError(f"{option}: invalid duration {text!r}; use e.g. 90, 30s, 5m, 1h30m, 2d")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def parse_when(text: str, option: str = "--at", *, local: bool = False) -> datetime:
    """An ISO 8601 instant; one without an offset is in UTC, or with ``local`` in the local
    time zone (``TZ``, else the system's)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: invalid time {text!r}; use ISO 8601, e.g. 2026-12-01T09:00:00+01:00"
        ) from None
    if when.tzinfo:
        return when
    return when.astimezone() if local else when.replace(tzinfo=UTC)


def rq_time(stamp: bytes | str | None) -> datetime | None:
    """An RQ timestamp as stored in a job or worker hash (``2026-05-01T10:00:00.123456Z``);
    None when missing or unreadable (a naive stamp is UTC, as RQ writes)."""
    if not stamp:
        return None
    raw = stamp.decode() if isinstance(stamp, bytes) else stamp
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
