"""Report renderers: rows in, bytes out. Every format streams: memory stays flat however many rows there are.

* CSV: a header row with the column names, then one line per row (RFC 4180 quoting, ``\\r\\n``). Cells that a
  spreadsheet would run as a formula (``=``, ``@``, a leading ``+``/``-`` not followed by a digit, tab, CR)
  get a leading ``'``; phone numbers like ``+4989…`` stay as they are.
* JSON: one array of objects (keys = column names), written element by element.
* PDF: page one states the summary, the evidence and a chart; then the rows as a table, written page by page
  (:mod:`certmgr.reports.pdfstream`).

The summary and the evidence of CSV and JSON reports are in their signed manifests
(:mod:`certmgr.reports.manifest`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from certmgr.errors import InputError
from certmgr.reports.evidence import Evidence
from certmgr.reports.fonts import font_set
from certmgr.reports.pdfstream import ByteSink, Cover, PdfStyle, iter_pdf
from certmgr.reports.queries import Cell, ReportRun, ReportSpec, Row

if TYPE_CHECKING:
    from certmgr.settings import Settings

CHUNK_ROWS = 500


class ReportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"
    PDF = "pdf"

    @property
    def media_type(self) -> str:
        return {"csv": "text/csv; charset=utf-8", "json": "application/json", "pdf": "application/pdf"}[self.value]


@dataclass(frozen=True)
class RenderContext:
    """What rendering needs besides the rows: the time zone of shown times, the configured fonts (empty: the
    default set) and the evidence collected before the rows were read (None: no audit log consulted)."""

    tz: tzinfo = UTC
    fonts: tuple[Path, ...] = ()
    evidence: Evidence | None = None

    @classmethod
    def from_settings(cls, settings: Settings, evidence: Evidence | None) -> RenderContext:
        return cls(ZoneInfo(settings.report_timezone), tuple(settings.report_fonts), evidence)


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


def iter_report(spec: ReportSpec, run: ReportRun, fmt: ReportFormat, ctx: RenderContext) -> Iterator[bytes]:
    """The report rendered as ``fmt``, piece by piece (every format streams; memory stays flat).

    Raises:
        ConfigError: (PDF) if the report fonts cannot be found or read.
    """
    if fmt is ReportFormat.PDF:
        style = PdfStyle(ctx.tz, font_set(ctx.fonts))
        return iter_pdf(spec, run, lambda: Cover(run.summary(ctx.tz), ctx.evidence, run.count), style, ctx.evidence)
    return iter_csv(spec, run) if fmt is ReportFormat.CSV else iter_json(spec, run)


def write_report(spec: ReportSpec, run: ReportRun, fmt: ReportFormat, out: ByteSink, ctx: RenderContext) -> None:
    """Render the rows of ``run`` as ``fmt`` into ``out``.

    Raises:
        OSError: if ``out`` cannot be written.
        ConfigError: (PDF) if the report fonts cannot be found or read.
    """
    for chunk in iter_report(spec, run, fmt, ctx):
        out.write(chunk)


__all__ = [
    "ByteSink",
    "RenderContext",
    "ReportFormat",
    "iter_csv",
    "iter_json",
    "iter_report",
    "parse_format",
    "write_report",
]
