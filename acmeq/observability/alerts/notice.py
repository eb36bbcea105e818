"""What one alert notice says (:class:`Notice`), and how times read in it; no I/O.

Kept apart from the channels (SMTP, webhook) so the rules and `acmeq status` import no network
code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class NoticeKind(StrEnum):
    """Why a notice is sent: an alert started, is still on (after the cooldown), or cleared."""

    FIRING = "firing"
    REMINDER = "reminder"
    RESOLVED = "resolved"
    TEST = "test"


class Severity(StrEnum):
    CRITICAL = "critical"  # a critical queue (payments by default)
    WARNING = "warning"


LABELS = {
    NoticeKind.FIRING: "FIRING",
    NoticeKind.REMINDER: "STILL FIRING",
    NoticeKind.RESOLVED: "RESOLVED",
    NoticeKind.TEST: "TEST",
}


@dataclass(frozen=True)
class Notice:
    """One message about one alert: firing, reminder, resolved (or a test)."""

    kind: NoticeKind
    alert_id: str  # "<rule>:<queue>", e.g. "wait:payments"
    rule: str
    queue: str
    severity: Severity
    message: str
    value: float
    threshold: float
    since: float  # epoch seconds the condition started
    at: float  # epoch seconds this notice was made
    evaluator: str = ""  # the master (or CLI) that evaluated
    details: tuple[str, ...] = field(default=())  # e.g. one line per failed job

    @property
    def title(self) -> str:
        return f"{LABELS[self.kind]} {self.alert_id} — {self.message}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["severity"] = str(self.severity)
        data["details"] = list(self.details)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Notice:
        return cls(
            kind=NoticeKind(data["kind"]),
            alert_id=data["alert_id"],
            rule=data["rule"],
            queue=data["queue"],
            severity=Severity(data["severity"]),
            message=data["message"],
            value=float(data["value"]),
            threshold=float(data["threshold"]),
            since=float(data["since"]),
            at=float(data["at"]),
            evaluator=data.get("evaluator", ""),
            details=tuple(data.get("details", ())),
        )


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 5 min``."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
