"""PDF tables with fpdf2: A4 landscape, the header repeated on every page, page numbers.

Text is set in DejaVu Sans, bundled in ``acmeq/exports/fonts`` (with its licence), so euro
signs, accented and non-Latin (Greek, Cyrillic ...) names render on any machine with nothing but
Python. Rows are drawn as they arrive, page by page, with plain ``cell()`` calls: fpdf2's
``table()`` lays out every row twice and is ~7x slower. fpdf2 keeps the drawn pages in memory
until the file is written, so PDF exports are capped (``[exports] pdf_max_rows``); CSV and XLSX
have no such limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from acmeq.exports.spec import BarChart, Column, Kind, Section

FONT_DIR = Path(__file__).resolve().parent / "fonts"
FONT = "DejaVu"
PAGE_WIDTH_MM = 277.0  # A4 landscape (297 mm) less 10 mm margins
ROW_MM = 4.6
STRIPE = (242, 244, 247)  # every other row's background
CHAR_EM = 0.55  # DejaVu Sans' mean advance, in ems
PT_MM = 0.3528


def _money(value: int) -> str:
    return f"{value / 100:,.2f}"


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def _stamp(value: datetime) -> str:
    return value.isoformat(sep=" ", timespec="minutes")[:16]


def _day(value: date) -> str:
    return value.isoformat()


def _bool(value: bool) -> str:
    return "yes" if value else ""


FORMATTERS: dict[Kind, Callable[[Any], str]] = {
    Kind.TEXT: str,
    Kind.CODE: str,
    Kind.INT: str,
    Kind.MONEY: _money,
    Kind.PERCENT: _percent,
    Kind.DATE: _day,
    Kind.DATETIME: _stamp,
    Kind.BOOL: _bool,
}
RIGHT = frozenset({Kind.INT, Kind.MONEY, Kind.PERCENT})


def new_document(title: str, subtitle: str) -> Any:
    """An A4 landscape fpdf2 document with the bundled fonts, title header and page numbers."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    class Document(FPDF):
        table_header: Callable[[], None] | None = None

        def header(self) -> None:
            self.set_font(FONT, "B", 11)
            self.cell(0, 6, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.set_font(FONT, "", 7)
            self.cell(0, 4, subtitle, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            self.ln(1)
            if self.table_header is not None:
                self.table_header()

        def footer(self) -> None:
            self.set_y(-9)
            self.set_font(FONT, "", 7)
            self.cell(0, 4, f"page {self.page_no()} of {{nb}}", align="R")

    pdf = Document(orientation="L", unit="mm", format="A4")
    pdf.add_font(FONT, "", str(FONT_DIR / "DejaVuSans.ttf"))
    pdf.add_font(FONT, "B", str(FONT_DIR / "DejaVuSans-Bold.ttf"))
    pdf.set_margins(10, 8, 10)
    pdf.set_auto_page_break(True, margin=12)
    pdf.set_title(title)
    pdf.set_creator("acmeq")
    return pdf


def fit(columns: Sequence[Column], width: float = PAGE_WIDTH_MM) -> tuple[float, list[float]]:
    """Font size (pt, at most 8) and column widths (mm) that fit ``columns`` across the page."""
    wanted = [max(c.width, len(c.title) + 1, 4) + 1 for c in columns]
    units = sum(wanted)
    size = max(4.5, min(8.0, width / (units * PT_MM * CHAR_EM)))
    scale = width / units
    return size, [w * scale for w in wanted]


class PdfWriter:
    """A PDF table written page by page; a summary page (and chart) at the end.

    Data rows are placed with ``text()`` at computed positions rather than ``cell()``:
    ``cell()`` re-derives the graphics state and line layout for every cell and costs ~4x as
    much. Right-aligned numbers are measured with a per-character width cache (fpdf2 does not
    kern, so the sum of advances is the exact width).
    """

    def __init__(self, path: Path, title: str, subtitle: str, columns: Sequence[Column]) -> None:
        self.path = path
        self.columns = columns
        self.pdf = new_document(title, subtitle)
        self.size, self.widths = fit(columns)
        char_mm = self.size * PT_MM * CHAR_EM
        self._plan = []
        x = self.pdf.l_margin
        for c, w in zip(columns, self.widths, strict=True):
            right = c.kind in RIGHT
            limit = int(w / char_mm) - 1 if c.kind in (Kind.TEXT, Kind.CODE) else 0
            # left-aligned text starts 1 mm in; right-aligned text ends 1 mm before the edge
            self._plan.append((x + (w - 1.0 if right else 1.0), right, FORMATTERS[c.kind], limit))
            x += w
        self._advances: dict[str, float] = {}
        self._odd = False
        self.pdf.table_header = self._header
        self.pdf.add_page()
        self.pdf.set_font(FONT, "", self.size)

    def _header(self) -> None:
        pdf = self.pdf
        pdf.set_font(FONT, "B", self.size)
        pdf.set_fill_color(221, 228, 238)
        for column, w in zip(self.columns, self.widths, strict=True):
            align = "R" if column.kind in RIGHT else "L"
            limit = int(w / (self.size * PT_MM * CHAR_EM * 1.08))
            pdf.cell(w, ROW_MM + 0.6, column.title[:limit], align=align, fill=True)
        pdf.ln(ROW_MM + 0.8)
        pdf.set_font(FONT, "", self.size)

    def _width(self, text: str) -> float:
        advances = self._advances
        total = 0.0
        for ch in text:
            w = advances.get(ch)
            if w is None:
                w = advances[ch] = self.pdf.get_string_width(ch)
            total += w
        return total

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        pdf = self.pdf
        put = pdf.text
        width = self._width
        plan = self._plan
        bottom = pdf.page_break_trigger
        left, span = pdf.l_margin, sum(self.widths)
        # fpdf2 restores the colours of before add_page() after header(): set the stripes' own.
        pdf.set_fill_color(*STRIPE)
        for row in rows:
            y = pdf.y
            if y + ROW_MM > bottom:
                pdf.add_page()  # header() draws the column titles again
                pdf.set_fill_color(*STRIPE)
                y = pdf.y
            if self._odd:
                pdf.rect(left, y, span, ROW_MM, style="F")
            self._odd = not self._odd
            base = y + ROW_MM * 0.72
            for (x, right, fmt, limit), value in zip(plan, row, strict=True):
                if value is None:
                    continue
                text = fmt(value)
                if limit and len(text) > limit:
                    text = text[: limit - 1] + "…"
                put(x - width(text) if right else x, base, text)
            pdf.y = y + ROW_MM

    def finish(self, summary: Sequence[Section], chart: BarChart | None = None) -> None:
        self.pdf.table_header = None
        self.pdf.add_page()
        write_sections(self.pdf, summary)
        if chart is not None:
            draw_bar_chart(self.pdf, chart)
        self.pdf.output(str(self.path))

    def abort(self) -> None:
        """Nothing to do: fpdf2 writes the file only in :meth:`finish`."""


def write_sections(pdf: Any, sections: Sequence[Section]) -> None:
    """Each section as a titled table (new pages as needed)."""
    for section in sections:
        size, widths = fit(section.columns, min(PAGE_WIDTH_MM, 24.0 * len(section.columns) * 2))
        size = min(size, 8.0)
        if pdf.will_page_break(3 * ROW_MM + 8):
            pdf.add_page()
        pdf.set_font(FONT, "B", 9)
        pdf.cell(0, 6, section.title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, "B", size)
        pdf.set_fill_color(221, 228, 238)
        for column, w in zip(section.columns, widths, strict=True):
            align = "R" if column.kind in RIGHT else "L"
            pdf.cell(w, ROW_MM + 0.6, column.title, align=align, fill=True)
        pdf.ln(ROW_MM + 0.8)
        pdf.set_font(FONT, "", size)
        for row in section.rows:
            for column, w, value in zip(section.columns, widths, row, strict=True):
                text = "" if value is None else FORMATTERS[column.kind](value)
                align = "R" if column.kind in RIGHT else "L"
                limit = int(w / (size * PT_MM * CHAR_EM)) - 1
                if len(text) > limit > 1:
                    text = text[: limit - 1] + "…"
                pdf.cell(w, ROW_MM, text, align=align)
            pdf.ln(ROW_MM)
        pdf.ln(4)


def draw_bar_chart(pdf: Any, chart: BarChart, height: float = 80.0) -> None:
    """Horizontal bars drawn with fpdf2 primitives (rect, cell): one per label."""
    if not chart.values:
        return
    if pdf.will_page_break(height + 12):
        pdf.add_page()
    pdf.set_font(FONT, "B", 9)
    pdf.cell(0, 6, chart.title, new_x="LMARGIN", new_y="NEXT")
    top = pdf.get_y() + 1
    label_w, value_w = 70.0, 30.0
    area = PAGE_WIDTH_MM - label_w - value_w - 4
    bar_h = min(8.0, height / len(chart.values))
    biggest = max(max(chart.values), 1e-9)
    pdf.set_font(FONT, "", 7)
    for i, (label, value) in enumerate(zip(chart.labels, chart.values, strict=True)):
        y = top + i * bar_h
        pdf.set_xy(pdf.l_margin, y)
        pdf.cell(label_w, bar_h * 0.8, label[:48], align="R")
        pdf.set_fill_color(70, 110, 170)
        width = max(0.2, area * max(value, 0.0) / biggest)
        pdf.rect(pdf.l_margin + label_w + 2, y + bar_h * 0.1, width, bar_h * 0.7, style="F")
        pdf.set_xy(pdf.l_margin + label_w + 4 + width, y)
        pdf.cell(value_w, bar_h * 0.8, f"{value:,.2f}")
    pdf.set_draw_color(120, 120, 120)
    x0 = pdf.l_margin + label_w + 2
    pdf.line(x0, top, x0, top + len(chart.values) * bar_h)
    pdf.set_xy(pdf.l_margin, top + len(chart.values) * bar_h + 3)
