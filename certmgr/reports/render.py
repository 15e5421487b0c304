"""Report renderers: rows in, bytes out. CSV and JSON stream chunk by chunk; PDF is laid out by reportlab.

* CSV: a header row with the column names, then one line per row (RFC 4180 quoting, ``\\r\\n``). Cells that a
  spreadsheet would run as a formula (``=``, ``@``, a leading ``+``/``-`` not followed by a digit, tab, CR)
  get a leading ``'``; phone numbers like ``+4989…`` stay as they are.
* JSON: one array of objects (keys = column names), written element by element.
* PDF: title, generation time and parameters, then the rows as tables of :data:`PDF_TABLE_ROWS` rows; a report
  with a chart (the expiry forecast) gets a bar chart per week first. reportlab keeps the document's flowables
  in memory, so PDF is meant for summaries and filtered extracts; use CSV/JSON for full fleets.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import BinaryIO

from certmgr.errors import InputError
from certmgr.reports.queries import Cell, ReportSpec, Row

CHUNK_ROWS = 500
PDF_TABLE_ROWS = 200
PDF_CELL_CHARS = 48


class ReportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"
    PDF = "pdf"

    @property
    def media_type(self) -> str:
        return {"csv": "text/csv; charset=utf-8", "json": "application/json", "pdf": "application/pdf"}[self.value]


def parse_format(value: str) -> ReportFormat:
    """The format called ``value``.

    Raises:
        InputError: for anything but csv, json, pdf.
    """
    try:
        return ReportFormat(value.lower())
    except ValueError:
        raise InputError(f"unknown report format {value!r}: use csv, json or pdf") from None


def _csv_safe(value: Cell) -> Cell:
    if not isinstance(value, str) or not value:
        return value
    first = value[0]
    if first in "=@\t\r" or (first in "+-" and not (len(value) > 1 and value[1].isdigit())):
        return "'" + value
    return value


def iter_csv(spec: ReportSpec, rows: Iterable[Row]) -> Iterator[bytes]:
    """The report as CSV, in chunks of :data:`CHUNK_ROWS` rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(spec.columns)
    for count, row in enumerate(rows, 1):
        writer.writerow(["" if v is None else _csv_safe(v) for v in row])
        if count % CHUNK_ROWS == 0:
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode("utf-8")


def iter_json(spec: ReportSpec, rows: Iterable[Row]) -> Iterator[bytes]:
    """The report as a JSON array of objects, one element at a time (buffered per :data:`CHUNK_ROWS`)."""
    parts: list[str] = ["["]
    for count, row in enumerate(rows, 1):
        parts.append(("," if count > 1 else "") + "\n" + json.dumps(dict(zip(spec.columns, row, strict=True))))
        if count % CHUNK_ROWS == 0:
            yield "".join(parts).encode("utf-8")
            parts = []
    parts.append("\n]\n")
    yield "".join(parts).encode("utf-8")


def _clip(value: Cell) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= PDF_CELL_CHARS else text[: PDF_CELL_CHARS - 1] + "…"


def write_pdf(spec: ReportSpec, rows: Iterable[Row], out: BinaryIO) -> None:
    """The report as a PDF (A4 landscape) written to ``out``."""
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.shapes import Drawing, String
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    doc = SimpleDocTemplate(
        out,
        pagesize=landscape(A4),
        leftMargin=10 * mm,
        rightMargin=10 * mm,
        topMargin=10 * mm,
        bottomMargin=10 * mm,
        title=spec.title,
        author="certmgr",
    )
    params = ", ".join(f"{k}={v}" for k, v in spec.params.as_dict(spec.kind).items() if v is not None)
    story: list[object] = [
        Paragraph(spec.title, styles["Title"]),
        Paragraph(f"Report kind: {spec.kind.value}. Generated at {spec.generated_at.isoformat()}.", styles["Normal"]),
    ]
    if params:
        story.append(Paragraph(f"Parameters: {params}", styles["Normal"]))
    story.append(Spacer(1, 4 * mm))
    materialised: Iterable[Row] = rows
    if spec.chart is not None:
        data = list(rows)  # the forecast has one row per week: small
        materialised = data
        weeks = [r for r in data if str(r[0]).startswith("W")]
        drawing = Drawing(260 * mm, 80 * mm)
        chart = VerticalBarChart()
        chart.x, chart.y, chart.width, chart.height = 15 * mm, 12 * mm, 235 * mm, 55 * mm
        chart.data = [[int(r[-1] or 0) for r in weeks]]  # label first, count last
        chart.categoryAxis.categoryNames = [str(r[0]) for r in weeks]
        chart.categoryAxis.labels.fontSize = 7
        chart.valueAxis.valueMin = 0
        chart.bars[0].fillColor = colors.HexColor("#4472c4")
        drawing.add(chart)
        drawing.add(String(15 * mm, 72 * mm, spec.chart, fontSize=11))
        story += [drawing, Spacer(1, 4 * mm)]
    style = TableStyle(
        [
            ("FONTSIZE", (0, 0), (-1, -1), 6),
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#d9e1f2")),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ]
    )
    header = list(spec.columns)
    chunk: list[list[str]] = []
    total = 0
    for row in materialised:
        chunk.append([_clip(v) for v in row])
        total += 1
        if len(chunk) == PDF_TABLE_ROWS:
            story.append(Table([header, *chunk], repeatRows=1, style=style))
            chunk = []
    if chunk or total == 0:
        story.append(Table([header, *chunk], repeatRows=1, style=style))
    story.append(Spacer(1, 3 * mm))
    story.append(Paragraph(f"{total} rows.", styles["Normal"]))
    doc.build(story)


def write_report(spec: ReportSpec, rows: Iterable[Row], fmt: ReportFormat, out: BinaryIO) -> None:
    """Render ``rows`` of ``spec`` as ``fmt`` into ``out``."""
    if fmt is ReportFormat.PDF:
        write_pdf(spec, rows, out)
        return
    chunks = iter_csv(spec, rows) if fmt is ReportFormat.CSV else iter_json(spec, rows)
    for chunk in chunks:
        out.write(chunk)


__all__ = ["ReportFormat", "iter_csv", "iter_json", "parse_format", "write_pdf", "write_report"]
