"""Report renderers: rows in, bytes out. Every format streams: memory stays flat however many rows there are.

* CSV: a header row with the column names, then one line per row (RFC 4180 quoting, ``\\r\\n``). Cells that a
  spreadsheet would run as a formula (``=``, ``@``, a leading ``+``/``-`` not followed by a digit, tab, CR)
  get a leading ``'``; phone numbers like ``+4989…`` stay as they are.
* JSON: one array of objects (keys = column names), written element by element.
* PDF: title, generation time and parameters, then the rows as a table, written page by page
  (:mod:`certmgr.reports.pdfstream`); a report with a chart (the expiry forecast) gets a bar chart per week on
  the first page.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from enum import StrEnum

from certmgr.errors import InputError
from certmgr.reports.pdfstream import ByteSink, iter_pdf, write_pdf_streaming
from certmgr.reports.queries import Cell, ReportSpec, Row

CHUNK_ROWS = 500


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


def write_pdf(spec: ReportSpec, rows: Iterable[Row], out: ByteSink) -> None:
    """The report as a PDF (A4 landscape) written to ``out`` page by page (:mod:`certmgr.reports.pdfstream`).

    Raises:
        OSError: if ``out`` cannot be written.
    """
    write_pdf_streaming(spec, rows, out)


def iter_report(spec: ReportSpec, rows: Iterable[Row], fmt: ReportFormat) -> Iterator[bytes]:
    """The report rendered as ``fmt``, piece by piece (every format streams; memory stays flat)."""
    if fmt is ReportFormat.PDF:
        return iter_pdf(spec, rows)
    return iter_csv(spec, rows) if fmt is ReportFormat.CSV else iter_json(spec, rows)


def write_report(spec: ReportSpec, rows: Iterable[Row], fmt: ReportFormat, out: ByteSink) -> None:
    """Render ``rows`` of ``spec`` as ``fmt`` into ``out``.

    Raises:
        OSError: if ``out`` cannot be written.
    """
    for chunk in iter_report(spec, rows, fmt):
        out.write(chunk)


__all__ = [
    "ByteSink",
    "ReportFormat",
    "iter_csv",
    "iter_json",
    "iter_pdf",
    "iter_report",
    "parse_format",
    "write_pdf",
    "write_report",
]
