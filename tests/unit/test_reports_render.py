"""Report renderers and pure report rules, without a database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pypdf import PdfReader
from sqlmodel import Session

from certmgr.errors import InputError
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


def test_pdf_with_chart_and_many_rows() -> None:
    rows: list[Row] = []
    rows.extend((f"W{i}", "s", i) for i in range(1, 9))
    rows.extend((f"row{i}", "x" * 100, i) for i in range(450))
    out = io.BytesIO()
    write_pdf(_spec(rows, chart="Bars per week"), rows, out)
    reader = PdfReader(io.BytesIO(out.getvalue()))
    text = "\n".join(p.extract_text() or "" for p in reader.pages)
    assert "Test report" in text
    assert "Bars per week" in text
    assert "row449" in text
    assert "458 rows." in text
    assert len(reader.pages) > 3


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
