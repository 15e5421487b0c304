"""Report renderers and pure report rules, without a database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pypdf import PdfReader
from pypdf.generic import ContentStream
from sqlmodel import Session

from certmgr.errors import InputError
from certmgr.reports.pdfstream import BAR_RGB, FLUSH_BYTES, iter_pdf
from certmgr.reports.queries import ReportKind, ReportParams, ReportSpec, Row, compliance_issues, parse_kind
from certmgr.reports.render import CHUNK_ROWS, ReportFormat, iter_csv, iter_json, parse_format, write_pdf
from tests.conftest import T0


def _spec(rows: list[Row], chart: str | None = None) -> ReportSpec:
    def produce(_session: Session) -> Iterator[Row]:
        yield from rows

    return ReportSpec(ReportKind.INVENTORY, "Test report", ("a", "b", "c"), ReportParams(), T0, produce, chart)


def test_csv_round_trip_and_formula_guard() -> None:
    rows: list[Row] = [("+4989123", "=cmd|' /C calc'!A0", None), ("-x", "@SUM(1)", 7), ("plain, with comma", '"q"', 0)]
    text = b"".join(iter_csv(_spec(rows), rows)).decode()
    back = list(csv.reader(io.StringIO(text)))
    assert back[0] == ["a", "b", "c"]
    assert back[1] == ["+4989123", "'=cmd|' /C calc'!A0", ""]
    assert back[2] == ["'-x", "'@SUM(1)", "7"]
    assert back[3] == ["plain, with comma", '"q"', "0"]


def test_csv_and_json_stream_in_chunks() -> None:
    rows: list[Row] = [(str(i), i, None) for i in range(CHUNK_ROWS * 2 + 3)]
    chunks = list(iter_csv(_spec(rows), rows))
    assert len(chunks) == 3
    json_chunks = list(iter_json(_spec(rows), iter(rows)))
    assert len(json_chunks) == 3
    data = json.loads(b"".join(json_chunks))
    assert data[5] == {"a": "5", "b": 5, "c": None}
    assert len(data) == len(rows)


def test_empty_json_is_an_empty_array() -> None:
    assert json.loads(b"".join(iter_json(_spec([]), []))) == []


def bar_heights(reader: PdfReader) -> list[float]:
    """Heights of the bars drawn on the first page: the ``re`` operators filled in :data:`BAR_RGB`."""
    ops = ContentStream(reader.pages[0].get_contents(), reader).operations
    heights: list[float] = []
    in_bars = False
    for operands, operator in ops:
        if operator == b"rg":
            in_bars = tuple(round(float(v), 3) for v in operands) == BAR_RGB
        elif operator == b"re" and in_bars:
            heights.append(float(operands[3]))
        elif operator == b"Q":
            in_bars = False
    return heights


def test_pdf_with_chart_and_many_rows() -> None:
    rows: list[Row] = []
    rows.extend((f"W{i}", "s", i) for i in range(1, 9))
    rows.append(("W9", "s", 0))  # an empty week: labelled, no bar
    rows.extend((f"row{i}", "x" * 100, i) for i in range(450))
    out = io.BytesIO()
    write_pdf(_spec(rows, chart="Bars per week"), iter(rows), out)
    reader = PdfReader(io.BytesIO(out.getvalue()), strict=True)
    text = "\n".join(p.extract_text() or "" for p in reader.pages)
    assert "Test report" in text
    assert "Bars per week" in text
    assert "W9" in reader.pages[0].extract_text()
    assert "row449" in text
    assert "459 rows." in text
    assert len(reader.pages) > 3
    heights = bar_heights(reader)
    assert len(heights) == 8  # one filled rectangle per non-empty week
    assert heights == sorted(heights)
    assert heights[-1] == pytest.approx(8 * heights[0], rel=1e-3)  # proportional to the counts


def test_pdf_without_chart_draws_no_bars() -> None:
    rows: list[Row] = [(f"W{i}", "s", i) for i in range(1, 5)]
    out = io.BytesIO()
    write_pdf(_spec(rows), rows, out)
    reader = PdfReader(io.BytesIO(out.getvalue()), strict=True)
    assert bar_heights(reader) == []
    assert "4 rows." in reader.pages[0].extract_text()


def test_iter_pdf_streams_page_by_page() -> None:
    rows: list[Row] = [(f"row{i}", "y" * 40, i) for i in range(20_000)]
    chunks = list(iter_pdf(_spec(rows), iter(rows)))
    assert len(chunks) > 3  # written while the rows arrive, not at the end
    assert max(len(c) for c in chunks) < 2 * FLUSH_BYTES
    assert "20000 rows." in PdfReader(io.BytesIO(b"".join(chunks))).pages[-1].extract_text()


def test_compliance_rules() -> None:
    ok = {
        "has_certificate": True,
        "certificate_status": "active",
        "verified": True,
        "not_after": T0 + timedelta(days=30),
        "device_status": "verified",
        "drift": False,
        "now": T0,
    }
    assert compliance_issues(**ok) == []  # type: ignore[arg-type]
    assert compliance_issues(**{**ok, "has_certificate": False, "certificate_status": None, "not_after": None}) == [  # type: ignore[arg-type]
        "factory-or-unknown-certificate"
    ]
    assert compliance_issues(**{**ok, "verified": False}) == ["factory-or-unknown-certificate"]  # type: ignore[arg-type]
    assert compliance_issues(**{**ok, "not_after": T0}) == ["expired"]  # type: ignore[arg-type]
    assert compliance_issues(**{**ok, "device_status": "failed"}) == ["failing"]  # type: ignore[arg-type]
    assert compliance_issues(**{**ok, "drift": True}) == ["drift"]  # type: ignore[arg-type]


def test_parameters_and_names_are_validated() -> None:
    with pytest.raises(InputError):
        ReportParams(weeks=0)
    with pytest.raises(InputError):
        ReportParams(since=T0.replace(tzinfo=None))
    with pytest.raises(InputError):
        parse_kind("secrets")
    with pytest.raises(InputError):
        parse_format("xlsx")
    assert parse_format("PDF") is ReportFormat.PDF
    assert ReportParams(weeks=4).as_dict(ReportKind.EXPIRY) == {"weeks": 4}
