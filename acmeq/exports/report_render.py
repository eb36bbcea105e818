"""Drawing a :class:`~acmeq.exports.reports.Report`: PDF (fpdf2) or XLSX with native charts.

The PDF has the totals, then the charts drawn with fpdf2 primitives (bars are rectangles), then
the other tables, A4 landscape with page numbers. The XLSX has a "Report" sheet with the tables,
a "Charts" sheet with native Excel bar charts and the "Chart data" sheet they are drawn from, so
the charts stay live if someone edits the numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from acmeq.exports.pdf import draw_bar_chart, new_document, write_sections
from acmeq.exports.reports import Report
from acmeq.exports.writers import formats_for
from acmeq.exports.writers import write_sections as write_xlsx_sections

CHART_ROWS = 22  # rows of the Charts sheet each chart takes


def subtitle(report: Report) -> str:
    return f"period {report.period.label} · generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def render_pdf(report: Report, path: Path) -> None:
    pdf = new_document(f"{report.title} — {report.period.label}", subtitle(report))
    pdf.add_page()
    write_sections(pdf, report.sections[:1])
    for chart in report.charts:
        draw_bar_chart(pdf, chart)
        pdf.ln(4)
    write_sections(pdf, report.sections[1:])
    pdf.output(str(path))


def render_xlsx(report: Report, path: Path) -> None:
    import xlsxwriter  # type: ignore[import-untyped]

    book = xlsxwriter.Workbook(str(path), {"remove_timezone": True, "strings_to_formulas": False})
    formats = formats_for(book)
    sheet = book.add_worksheet("Report")
    sheet.write_string(0, 0, f"{report.title} — {report.period.label}", formats["title"])
    sheet.write_string(1, 0, subtitle(report))
    write_xlsx_sections(sheet, formats, report.sections, 3)
    charts = book.add_worksheet("Charts")
    data = book.add_worksheet("Chart data")
    for i, chart in enumerate(report.charts):
        label_col, value_col = 2 * i, 2 * i + 1
        data.write_string(0, label_col, chart.title, formats["header"])
        data.write_string(0, value_col, chart.value_title, formats["header"])
        for r, (label, value) in enumerate(zip(chart.labels, chart.values, strict=True), 1):
            data.write_string(r, label_col, label)
            data.write_number(r, value_col, value, formats["money"])
        data.set_column(label_col, label_col, 40)
        n = len(chart.labels)
        bars = book.add_chart({"type": "bar"})
        bars.add_series(
            {
                "name": chart.value_title,
                "categories": ["Chart data", 1, label_col, max(n, 1), label_col],
                "values": ["Chart data", 1, value_col, max(n, 1), value_col],
                "data_labels": {"value": True, "num_format": "#,##0"},
                "fill": {"color": "#466EAA"},
            }
        )
        bars.set_title({"name": chart.title})
        bars.set_legend({"none": True})
        bars.set_x_axis({"reverse": True})  # the category axis of a bar chart: biggest on top
        bars.set_size({"width": 900, "height": 420})
        charts.insert_chart(i * CHART_ROWS, 0, bars)
    book.close()
