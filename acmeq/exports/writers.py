"""Streaming table writers: CSV (csv module) and XLSX (xlsxwriter, constant memory).

A writer is opened on a (temporary) path with the table's columns, takes rows page by page
(:meth:`write_rows`) and is finished with the summary (:meth:`finish`); nothing but the current
page is held in memory. The PDF writer is in :mod:`acmeq.exports.pdf`.

Formula injection: a spreadsheet evaluates a CSV cell that starts with ``=``, ``+``, ``-`` or
``@`` (and, in some, a tab or carriage return) as a formula, so text typed by users (campaign
titles, donor names ...) that starts with one gets a leading ``'`` in CSV. Numeric columns are
numbers, never text, so ``-12.50`` stays a negative number. In XLSX every text cell is written as
a string cell, which Excel never evaluates, so text is kept exactly as it is.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from acmeq.exports.spec import Column, CsvDialect, Kind, Section

Row = Sequence[Any]
FORMULA_START = frozenset("=+-@\t\r")


class TableWriter(Protocol):
    def write_rows(self, rows: Sequence[Row]) -> None: ...
    def finish(self, summary: Sequence[Section]) -> None: ...
    def abort(self) -> None: ...


def neutralise(text: str) -> str:
    """``'`` before text a spreadsheet would take for a formula; other text unchanged."""
    if text and text[0] in FORMULA_START:
        return "'" + text
    return text


# ---------------------------------------------------------------------------------------------
# CSV


def _money_text(decimal_comma: bool) -> Callable[[int], str]:
    if decimal_comma:
        return lambda v: f"{v / 100:.2f}".replace(".", ",")
    return lambda v: f"{v / 100:.2f}"


def _percent_text(decimal_comma: bool) -> Callable[[float], str]:
    if decimal_comma:
        return lambda v: f"{v * 100:.2f}".replace(".", ",")
    return lambda v: f"{v * 100:.2f}"


def _iso_seconds(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def _iso_day(value: date) -> str:
    return value.isoformat()


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def csv_converter(kind: Kind, dialect: CsvDialect) -> Callable[[Any], Any] | None:
    """How a CSV cell of ``kind`` is written; None: as it is (ints, codes)."""
    comma = dialect is CsvDialect.EXCEL
    table: dict[Kind, Callable[[Any], Any] | None] = {
        Kind.TEXT: neutralise,
        Kind.CODE: None,
        Kind.INT: None,
        Kind.MONEY: _money_text(comma),
        Kind.PERCENT: _percent_text(comma),
        Kind.DATE: _iso_day,
        Kind.DATETIME: _iso_seconds,
        Kind.BOOL: _bool_text,
    }
    return table[kind]


def csv_row_function(columns: Sequence[Column], dialect: CsvDialect) -> Callable[[Row], Row]:
    """One function that turns a row into its CSV cells, compiled for these columns.

    The per-column expressions of :func:`csv_converter`, inlined into a single lambda: a generic
    loop over the cells with a call per conversion costs about as much again as the csv module's
    own writing. The source is built from acmeq's column kinds only, never from data.
    """
    comma = ".replace('.', ',')" if dialect is CsvDialect.EXCEL else ""
    parts = []
    for i, column in enumerate(columns):
        v = f"r[{i}]"
        kind = column.kind
        if kind in (Kind.INT, Kind.CODE):
            parts.append(v)
        elif kind is Kind.TEXT:
            parts.append(f"(_n({v}) if {v} else {v})")
        elif kind is Kind.MONEY:
            parts.append(f"(None if {v} is None else _m[{v}])")
        elif kind is Kind.PERCENT:
            parts.append(f"(None if {v} is None else f'{{{v} * 100:.2f}}'{comma})")
        elif kind is Kind.DATETIME:  # a datetime, or SQLite's stored UTC text (see queries)
            parts.append(
                f"(None if {v} is None else {v}[:10] + 'T' + {v}[11:19] + '+00:00' "
                f"if {v}.__class__ is str else {v}.isoformat(timespec='seconds'))"
            )
        elif kind is Kind.DATE:
            parts.append(f"(None if {v} is None else {v}.isoformat())")
        else:  # BOOL
            parts.append(f"(None if {v} is None else ('true' if {v} else 'false'))")
    source = "lambda r: (" + ", ".join(parts) + ",)"
    function: Callable[[Row], Row] = eval(source, {"_n": neutralise, "_m": _MoneyCache(comma)})
    return function


class _MoneyCache(dict[int, str]):
    """Amounts as text, memoised: donations repeat a few dozen amounts (form presets, zero
    refunds), and a dict hit is ~10x cheaper than formatting a float."""

    def __init__(self, comma: str) -> None:
        super().__init__()
        self.comma = bool(comma)

    def __missing__(self, value: int) -> str:
        text = f"{value / 100:.2f}"
        if self.comma:
            text = text.replace(".", ",")
        if len(self) < 100_000:  # bounded: free amounts are not worth unlimited memory
            self[value] = text
        return text


def csv_header(column: Column) -> str:
    return column.title + (" %" if column.kind is Kind.PERCENT else "")


class CsvWriter:
    """UTF-8 CSV with a header row; ``excel`` dialect: BOM, ``;`` and decimal comma.

    The summary goes to its own CSV file beside the data (``<name>.summary.csv``), so the data
    file stays one uniform table any CSV reader can load.
    """

    def __init__(
        self,
        path: Path,
        columns: Sequence[Column],
        dialect: CsvDialect = CsvDialect.STANDARD,
        summary_path: Path | None = None,
    ) -> None:
        self.path = path
        self.summary_path = summary_path
        self.dialect = dialect
        self._columns = columns
        self._convert = csv_row_function(columns, dialect)
        self._file = path.open("w", newline="", encoding=self._encoding)
        self._csv = csv.writer(self._file, **self._format)
        self._csv.writerow([csv_header(c) for c in columns])

    @property
    def _encoding(self) -> str:
        return "utf-8-sig" if self.dialect is CsvDialect.EXCEL else "utf-8"

    @property
    def _format(self) -> dict[str, Any]:
        if self.dialect is CsvDialect.EXCEL:
            return {"delimiter": ";", "lineterminator": "\r\n"}
        return {"lineterminator": "\n"}

    def write_rows(self, rows: Sequence[Row]) -> None:
        self._csv.writerows(map(self._convert, rows))

    def finish(self, summary: Sequence[Section]) -> None:
        self._file.flush()
        self._file.close()
        if self.summary_path is None:
            return
        with self.summary_path.open("w", newline="", encoding=self._encoding) as f:
            out = csv.writer(f, **self._format)
            out.writerow(["section", *(f"c{i}" for i in range(_widest(summary)))])
            for section in summary:
                plan = [csv_converter(c.kind, self.dialect) for c in section.columns]
                out.writerow([section.title, *(csv_header(c) for c in section.columns)])
                for row in section.rows:
                    cells = [
                        v if v is None or conv is None else conv(v)
                        for v, conv in zip(row, plan, strict=True)
                    ]
                    out.writerow([section.title, *cells])

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()


def _widest(sections: Sequence[Section]) -> int:
    return max((len(s.columns) for s in sections), default=0)


# ---------------------------------------------------------------------------------------------
# XLSX


EXCEL_EPOCH = datetime(1899, 12, 30, tzinfo=UTC)  # day 0 of Excel's 1900 date system
MONEY_FORMAT = "#,##0.00"
DATE_FORMAT = "yyyy-mm-dd"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
PERCENT_FORMAT = "0.0%"


class XlsxWriter:
    """An XLSX workbook written row by row in xlsxwriter's constant-memory mode.

    Numbers are numbers, money has a ``#,##0.00`` format, dates and times are Excel dates (UTC),
    the header row is bold, frozen and filtered, columns have widths, and a "Summary" sheet holds
    the totals. xlsxwriter rather than openpyxl's write-only mode: it is the faster of the two
    by a wide margin at the same flat memory (docs/exports.md has the figures).
    """

    def __init__(self, path: Path, sheet: str, columns: Sequence[Column]) -> None:
        import xlsxwriter  # type: ignore[import-untyped]

        self.path = path
        self.book = xlsxwriter.Workbook(
            str(path),
            {
                "constant_memory": True,
                "remove_timezone": True,  # Excel has no time zones: times are UTC
                "strings_to_numbers": False,
                "strings_to_formulas": False,
                "strings_to_urls": False,
            },
        )
        self.formats = formats_for(self.book)
        self.sheet = self.book.add_worksheet(sheet[:31])
        self.columns = columns
        self.row = 1
        for c, column in enumerate(columns):
            self.sheet.set_column(c, c, max(column.width, len(column.title)) + 2)
        for c, column in enumerate(columns):
            self.sheet.write_string(0, c, column.title, self.formats["header"])
        self.sheet.freeze_panes(1, 0)
        self._write_row = self._row_function()

    def _row_function(self) -> Callable[[int, Row], None]:
        """One function writing a row's cells, compiled for these columns (as for CSV).

        It calls xlsxwriter's undecorated ``_write_number`` / ``_write_string`` ... where they
        exist: the public methods first test whether the cell was given in A1 notation, which
        for a million rows of sixteen cells costs more than the rest of this writer.
        """
        ws, fmt = self.sheet, self.formats

        def method(name: str) -> Any:
            return getattr(ws, "_" + name, None) or getattr(ws, name)

        env = {
            "num": method("write_number"),
            "text": method("write_string"),
            "stamp": method("write_datetime"),
            "flag": method("write_boolean"),
            "money": fmt["money"],
            "pct": fmt["percent"],
            "fdt": fmt["datetime"],
            "fday": fmt["date"],
            "EPOCH": EXCEL_EPOCH,
            "EPOCH_DAY": EXCEL_EPOCH.date(),
            "DAY": timedelta(days=1),
        }
        calls = {
            Kind.MONEY: "num(r, {c}, v / 100, money)",
            Kind.PERCENT: "num(r, {c}, v, pct)",
            Kind.INT: "num(r, {c}, v)",
            # Excel serial days computed here: one subtraction instead of xlsxwriter's general
            # conversion (~6x the cost). Exact for every date after 1900-03-01.
            Kind.DATETIME: "num(r, {c}, (v - EPOCH) / DAY, fdt)",
            Kind.DATE: "num(r, {c}, (v - EPOCH_DAY).days, fday)",
            Kind.BOOL: "flag(r, {c}, v)",
            Kind.TEXT: "text(r, {c}, v)",
            Kind.CODE: "text(r, {c}, v)",
        }
        lines = ["def write_row(r, row):"]
        for c, column in enumerate(self.columns):
            lines.append(f"    v = row[{c}]")
            lines.append(f"    if v is not None: {calls[column.kind].format(c=c)}")
        exec("\n".join(lines), env)  # source built from column kinds only, never from data
        function: Callable[[int, Row], None] = env["write_row"]
        return function

    def write_rows(self, rows: Sequence[Row]) -> None:
        write_row = self._write_row
        r = self.row
        for row in rows:
            write_row(r, row)
            r += 1
        self.row = r

    def finish(self, summary: Sequence[Section]) -> None:
        if self.row > 1:
            self.sheet.autofilter(0, 0, self.row - 1, len(self.columns) - 1)
        write_summary_sheet(self.book, self.formats, summary)
        self.book.close()

    def abort(self) -> None:
        # Nothing was written to the final path; remove xlsxwriter's per-sheet row files.
        for sheet in self.book.worksheets():
            handle = getattr(sheet, "row_data_fh", None)
            name = getattr(sheet, "row_data_filename", None)
            if handle is not None and not handle.closed:
                handle.close()
            if name:
                Path(name).unlink(missing_ok=True)


def formats_for(book: Any) -> dict[str, Any]:
    return {
        "header": book.add_format({"bold": True, "bg_color": "#DDE4EE", "bottom": 1}),
        "title": book.add_format({"bold": True, "font_size": 12}),
        "money": book.add_format({"num_format": MONEY_FORMAT}),
        "percent": book.add_format({"num_format": PERCENT_FORMAT}),
        "date": book.add_format({"num_format": DATE_FORMAT}),
        "datetime": book.add_format({"num_format": DATETIME_FORMAT}),
    }


def write_summary_sheet(
    book: Any, formats: dict[str, Any], sections: Sequence[Section], name: str = "Summary"
) -> Any:
    """A sheet with each section as a titled table; returns the sheet."""
    ws = book.add_worksheet(name)
    write_sections(ws, formats, sections, 0)
    return ws


def write_sections(ws: Any, formats: dict[str, Any], sections: Sequence[Section], row: int) -> int:
    """Each section as a titled table from ``row`` down; returns the next free row."""
    widths: dict[int, int] = {}
    r = row
    for section in sections:
        ws.write_string(r, 0, section.title, formats["title"])
        r += 1
        for c, column in enumerate(section.columns):
            ws.write_string(r, c, column.title, formats["header"])
            widths[c] = max(widths.get(c, 0), column.width, len(column.title))
        r += 1
        for values in section.rows:
            write_typed_row(ws, formats, r, section.columns, values)
            r += 1
        r += 1
    for c, width in widths.items():
        ws.set_column(c, c, width + 2)
    return r


def write_typed_row(
    ws: Any, formats: dict[str, Any], r: int, columns: Sequence[Column], row: Row
) -> None:
    for c, (column, value) in enumerate(zip(columns, row, strict=True)):
        if value is None:
            continue
        kind = column.kind
        if kind is Kind.MONEY:
            ws.write_number(r, c, value / 100, formats["money"])
        elif kind is Kind.PERCENT:
            ws.write_number(r, c, value, formats["percent"])
        elif kind is Kind.INT:
            ws.write_number(r, c, value)
        elif kind in (Kind.DATE, Kind.DATETIME):
            ws.write_datetime(r, c, value, formats[kind.value])
        elif kind is Kind.BOOL:
            ws.write_boolean(r, c, value)
        else:
            ws.write_string(r, c, str(value))
