"""What an export is: its request (kind, format, filters, options) and the shape of its tables.

Everything here is plain data with a JSON form, because a request travels from the CLI to a
worker as job arguments and is kept in ``export_files.spec``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from acmeq.errors import UsageError
from acmeq.storage.models import ExportFormat, ExportKind

TABLE_KINDS = (ExportKind.CAMPAIGNS, ExportKind.DONATIONS)

CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


class Kind(StrEnum):
    """How a column's values are written: numbers stay numbers, dates stay dates."""

    TEXT = "text"  # free text from users: neutralised against formula injection
    CODE = "code"  # values acmeq controls (status, currency, receipt number): written as is
    INT = "int"
    MONEY = "money"  # integer minor units in the rows, written as major units (12.50)
    PERCENT = "percent"  # a fraction (0.125 -> 12.5 %)
    DATE = "date"
    DATETIME = "datetime"  # aware UTC
    BOOL = "bool"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: Kind
    width: int = 12  # characters, for XLSX column widths and PDF proportions


@dataclass(frozen=True)
class Section:
    """A small table of a summary sheet/page/file: totals per currency, per campaign ..."""

    title: str
    columns: Sequence[Column]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class BarChart:
    """Bars of one series (e.g. the top campaigns by raised amount), drawn in PDF and XLSX."""

    title: str
    labels: Sequence[str]
    values: Sequence[float]  # major units
    value_title: str = "raised"


@dataclass(frozen=True)
class ExportFilters:
    campaign_ids: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    date_from: date | None = None  # inclusive, UTC days
    date_to: date | None = None  # inclusive
    currency: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign_ids": list(self.campaign_ids),
            "statuses": list(self.statuses),
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "currency": self.currency,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportFilters:
        return cls(
            campaign_ids=tuple(int(i) for i in data.get("campaign_ids") or ()),
            statuses=tuple(str(s) for s in data.get("statuses") or ()),
            date_from=parse_day(data["date_from"], "date_from") if data.get("date_from") else None,
            date_to=parse_day(data["date_to"], "date_to") if data.get("date_to") else None,
            currency=data.get("currency") or None,
        )

    @property
    def start(self) -> datetime | None:
        if self.date_from is None:
            return None
        return datetime(self.date_from.year, self.date_from.month, self.date_from.day, tzinfo=UTC)

    @property
    def end(self) -> datetime | None:
        """The first instant after the period (``--to`` is inclusive)."""
        if self.date_to is None:
            return None
        day = self.date_to + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)


class CsvDialect(StrEnum):
    STANDARD = "standard"  # UTF-8, comma, decimal point
    EXCEL = "excel"  # UTF-8 with BOM, semicolon, decimal comma: opens right in European Excel


@dataclass(frozen=True)
class ExportRequest:
    kind: ExportKind
    format: ExportFormat
    filters: ExportFilters = field(default_factory=ExportFilters)
    include_pii: bool = False
    user_id: int | None = None
    output: str | None = None  # final path; None: <exports dir>/<kind>-<time>-<id>.<ext>
    email: str | None = None
    dialect: CsvDialect = CsvDialect.STANDARD

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "format": self.format.value,
            "filters": self.filters.as_json(),
            "include_pii": self.include_pii,
            "user_id": self.user_id,
            "output": self.output,
            "email": self.email,
            "dialect": self.dialect.value,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportRequest:
        return cls(
            kind=table_kind(data.get("kind")),
            format=choice(ExportFormat, data.get("format"), "format"),
            filters=ExportFilters.from_json(data.get("filters") or {}),
            include_pii=bool(data.get("include_pii")),
            user_id=data.get("user_id"),
            output=data.get("output"),
            email=data.get("email"),
            dialect=choice(CsvDialect, data.get("dialect") or "standard", "dialect"),
        )

    def with_output(self, output: str) -> ExportRequest:
        return replace(self, output=output)


def choice(enum: type[Any], value: Any, option: str) -> Any:
    """``enum(value)``, or a UsageError naming the option, the bad value and the valid ones."""
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(m.value for m in enum)
        raise UsageError(f"{option}: unknown value {value!r}; valid: {valid}") from None


def table_kind(value: Any) -> ExportKind:
    kind = choice(ExportKind, value, "kind")
    if kind not in TABLE_KINDS:
        raise UsageError(f"kind: {value!r} is not a table export; valid: campaigns, donations")
    return kind  # type: ignore[no-any-return]


def parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError:
        raise UsageError(f"{option}: invalid date {text!r}; use YYYY-MM-DD") from None


def check_currency(text: str | None) -> str | None:
    if text is None:
        return None
    code = text.strip().upper()
    if not CURRENCY_RE.match(code):
        raise UsageError(f"--currency: invalid currency {text!r}; use an ISO 4217 code like EUR")
    return code
