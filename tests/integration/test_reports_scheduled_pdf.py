"""The streaming PDF writer (:mod:`certmgr.reports.pdfstream`) that renders every PDF report (CLI, API, scheduled):
a valid PDF that pypdf reads, every row present, column names on every page."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime

from pypdf import PdfReader

from certmgr.reports.pdfstream import write_pdf_streaming
from certmgr.reports.queries import INVENTORY_COLUMNS, ReportKind, ReportParams, ReportSpec, Row

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _spec(rows: list[Row]) -> ReportSpec:
    def produce(_session: object) -> Iterator[Row]:
        return iter(rows)

    return ReportSpec(ReportKind.INVENTORY, "Phone inventory", INVENTORY_COLUMNS, ReportParams(), T0, produce)


def _row(i: int) -> Row:
    return (
        f"00:1A:E8:00:{i >> 8:02X}:{i & 0xFF:02X}",
        f"+4989{i:06d}",
        f"10.0.{i >> 8}.{i & 0xFF}",
        "OS (a) \\ ü",
        None,
        "default",
        "verified",
        f"{i:x}",
        "2027-01-01T00:00:00+00:00",
        30,
        "active",
        None,
        "a very long value that does not fit into its column at all, so it is clipped",
    )


def test_streaming_pdf_is_valid_and_complete() -> None:
    rows = [_row(i) for i in range(300)]
    out = io.BytesIO()
    assert write_pdf_streaming(_spec(rows), iter(rows), out) == 300
    reader = PdfReader(io.BytesIO(out.getvalue()), strict=True)
    assert len(reader.pages) >= 5
    texts = [page.extract_text() for page in reader.pages]
    assert "Phone inventory" in texts[0]
    assert "Generated at 2026-11-26T09:00:00+00:00" in texts[0]
    assert all("certificate_serial" in t for t in texts)  # header repeated on every page
    everything = "\n".join(texts)
    for i in (0, 150, 299):
        assert f"00:1A:E8:00:{i >> 8:02X}:{i & 0xFF:02X}" in everything
    assert "300 rows." in texts[-1]
    assert "OS (a) \\ ü" in everything  # escaped and encoded, not dropped
    assert reader.metadata is not None
    assert reader.metadata.title == "Phone inventory"


def test_empty_report_is_one_page() -> None:
    out = io.BytesIO()
    assert write_pdf_streaming(_spec([]), iter([]), out) == 0
    reader = PdfReader(io.BytesIO(out.getvalue()), strict=True)
    assert len(reader.pages) == 1
    assert "0 rows." in reader.pages[0].extract_text()
