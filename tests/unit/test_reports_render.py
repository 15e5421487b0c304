"""Report renderers, the PDF writer and pure report rules, without a database."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader
from pypdf.generic import ContentStream

from certmgr.errors import ConfigError, InputError
from certmgr.reports.evidence import CheckpointRef, Evidence
from certmgr.reports.fonts import FontChain, default_font_set, font_set, visual_order
from certmgr.reports.pdfstream import (
    BAR_RGB,
    FLUSH_BYTES,
    MARGIN,
    PAD,
    PAGE_W,
    _Fonts,
    column_widths,
    fit_lines,
    header_width,
)
from certmgr.reports.queries import (
    INVENTORY_COLUMNS,
    TIME_COLUMNS,
    ReportKind,
    ReportParams,
    ReportSpec,
    Row,
    compliance_issues,
    parse_kind,
)
from certmgr.reports.render import (
    CHUNK_ROWS,
    RenderContext,
    ReportFormat,
    iter_csv,
    iter_json,
    iter_report,
    parse_format,
)
from certmgr.reports.summary import AuditTally, ExpiryTally, FleetTally, Summary
from tests.conftest import T0

CJK = "会議室-東京-3階"
HEBREW = "טלפון-קבלה"
GREEK = "Ωμέγα-Телефон"


class _Tally:
    def __init__(self) -> None:
        self.rows = 0

    def summary(self, tz: Any) -> Summary:
        return FleetTally().summary(tz)


def _spec(rows: list[Row], columns: tuple[str, ...] = ("a", "b", "c")) -> ReportSpec:
    def produce(_session: object, tally: Any) -> Iterator[Row]:
        yield from rows

    return ReportSpec(ReportKind.INVENTORY, "Test report", columns, ReportParams(), T0, produce, _Tally)


def _bytes(spec: ReportSpec, ctx: RenderContext | None = None) -> bytes:
    run = spec.open(None)  # type: ignore[arg-type] # the producers here ignore the session
    return b"".join(iter_report(spec, run, ReportFormat.PDF, ctx or RenderContext()))


def _pdf(spec: ReportSpec, ctx: RenderContext | None = None) -> PdfReader:
    return PdfReader(io.BytesIO(_bytes(spec, ctx)), strict=True)


def pdftotext(data: bytes) -> list[str]:
    """The text of each page as poppler lays it out (form XObjects in place)."""
    done = subprocess.run(["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, timeout=60, check=True)
    return done.stdout.decode("utf-8").split("\f")


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


def bars(reader: PdfReader, page: int = 0) -> list[tuple[float, float]]:
    """(width, height) of the bars drawn on a page: the ``re`` operators filled in :data:`BAR_RGB`."""
    ops = ContentStream(reader.pages[page].get_contents(), reader).operations
    found: list[tuple[float, float]] = []
    in_bars = False
    for operands, operator in ops:
        if operator == b"rg":
            in_bars = tuple(round(float(v), 3) for v in operands) == BAR_RGB
        elif operator == b"re" and in_bars:
            found.append((float(operands[2]), float(operands[3])))
        elif operator == b"Q":
            in_bars = False
    return found


def test_pdf_page_one_sums_up_and_the_table_follows() -> None:
    rows: list[Row] = [(f"row{i}", "x" * 400, i) for i in range(450)]
    data = _bytes(_spec(rows))
    reader = PdfReader(io.BytesIO(data), strict=True)
    pages = [p.extract_text() for p in reader.pages]
    total = len(pages)
    assert total > 3
    assert "Summary" in pages[0]
    assert "Evidence" in pages[0]
    assert "Rows: 450" in pages[0]
    assert "Audit log: not consulted" in pages[0]
    laid_out = pdftotext(data)
    for number, text in enumerate(laid_out[:total], 1):
        assert f"page {number} of {total}" in text  # the total is a form XObject written at the end
        assert "Test report" in text
    assert "row449" in pages[-1]
    assert "450 rows." in pages[-1]
    assert "x" * 400 not in "".join(pages)  # too long for its column: wrapped and abbreviated
    assert reader.metadata is not None
    assert reader.metadata.title == "Test report"


def test_empty_report_says_none() -> None:
    reader = _pdf(_spec([]))
    assert len(reader.pages) == 2
    first, table = (p.extract_text() for p in reader.pages)
    assert "Phones in service: none" in first
    assert "Earliest expiry: none" in first
    assert "none: this report has no rows" in table
    assert "0 rows." in table


def test_times_in_the_report_time_zone_to_the_second() -> None:
    columns = ("mac", "not_after")
    spec = ReportSpec(
        ReportKind.INVENTORY,
        "Times",
        columns,
        ReportParams(),
        T0,
        lambda _s, _t: iter([("m1", "2026-11-29T15:28:41.699598+00:00")]),
        _Tally,
        TIME_COLUMNS & frozenset(columns),
    )
    text = "\n".join(p.extract_text() for p in _pdf(spec, RenderContext(ZoneInfo("Europe/Berlin"))).pages)
    assert "2026-11-29 16:28:41" in text
    assert "699598" not in text
    assert "times in Europe/Berlin" in text
    assert "Generated 2026-11-26 10:00:00 CET" in text


def test_any_script_is_embedded_and_extractable() -> None:
    rows: list[Row] = [(CJK, GREEK, 1), (HEBREW, "plain", 2)]
    reader = _pdf(_spec(rows))
    table = reader.pages[1].extract_text()
    assert CJK in table
    assert GREEK in table
    assert HEBREW in table  # drawn in visual order; pypdf reads right-to-left runs back into logical order
    assert "?" not in table
    fonts = set()
    for page in reader.pages:
        resources: Any = page["/Resources"]
        for ref in resources["/Font"].values():
            font = ref.get_object()
            descendant = font["/DescendantFonts"][0].get_object()
            assert "/FontFile2" in descendant["/FontDescriptor"]  # embedded TrueType
            fonts.add(str(font["/BaseFont"]).split("+", 1)[1])
    assert {"DejaVuSansCondensed", "DroidSansFallback"} <= fonts or {"DejaVuSans", "DroidSansFallback"} <= fonts


def test_a_character_no_font_has_is_marked_and_counted() -> None:
    rows: list[Row] = [("a\U000f0000b", "x", 1)]  # a private-use character: in no font
    reader = _pdf(_spec(rows))
    assert "a\ufffdb" in reader.pages[1].extract_text()
    assert "1 character could not be drawn" in reader.pages[0].extract_text()


def test_iter_pdf_streams_page_by_page() -> None:
    rows: list[Row] = [(f"row{i}", "y" * 40, i) for i in range(20_000)]
    spec = _spec(rows)
    chunks = list(iter_report(spec, spec.open(None), ReportFormat.PDF, RenderContext()))  # type: ignore[arg-type]
    assert len(chunks) > 3  # written while the rows arrive, not at the end
    assert max(len(c) for c in chunks[:-1]) < 2 * FLUSH_BYTES
    assert "20,000 rows." in PdfReader(io.BytesIO(b"".join(chunks))).pages[-1].extract_text()


def test_subsets_keep_the_pdf_small() -> None:
    rows: list[Row] = [(CJK, f"value {i}", i) for i in range(50)]
    spec = _spec(rows)
    data = b"".join(iter_report(spec, spec.open(None), ReportFormat.PDF, RenderContext()))  # type: ignore[arg-type]
    assert len(data) < 200_000  # the fallback font alone is 4 MB; only the glyphs drawn are embedded


def test_fit_lines_wraps_at_separators_and_abbreviates() -> None:
    chain = FontChain(default_font_set().chain)
    assert fit_lines(chain, "short", 100.0) == ["short"]
    lines = fit_lines(chain, "alpha beta gamma delta epsilon zeta eta theta", 60.0)
    assert len(lines) > 1
    assert lines[0].startswith("alpha")
    assert " " not in lines[0].strip() or lines[0].endswith(("beta", "alpha"))
    host = "h" * 255
    wrapped = fit_lines(chain, host, 80.0, max_lines=3)
    assert len(wrapped) == 3
    assert wrapped[-1].endswith("…")
    assert all(chain.width(line) * 8 / 1000 <= 81.0 for line in wrapped)


def test_visual_order() -> None:
    assert visual_order("plain\ttext\n") == "plain text "
    assert visual_order(HEBREW) == HEBREW[::-1]
    assert visual_order("שלום.example.net") == "םולש.example.net"  # a left-to-right paragraph
    arabic = visual_order("هاتف")
    assert arabic != "هاتف"
    assert all(0xFE70 <= ord(c) <= 0xFEFF for c in arabic)  # joined presentation forms


def test_configured_fonts_must_exist(tmp_path: Any) -> None:
    with pytest.raises(ConfigError):
        font_set([tmp_path / "missing.ttf"])
    chain = default_font_set().chain
    assert font_set(list(chain)).chain == chain


def test_evidence_is_stated_on_page_one() -> None:
    evidence = Evidence(
        generated_at=T0,
        generated_by="token:alice",
        via="api",
        chain_ok=False,
        events_verified=41,
        checkpoints_verified=2,
        first_bad_seq=42,
        bad_reason="content does not match its hash (modified)",
        last_event=(57, "ab" * 32),
        checkpoint=CheckpointRef(3, 40, "cd" * 32, T0, b"sig"),
        audit_key_sha256="ef" * 32,
    )
    first = _pdf(_spec([("a", "b", 1)]), RenderContext(UTC, (), evidence)).pages[0].extract_text()
    assert "by token:alice (via api)" in first
    assert "BROKEN at event 42" in first
    assert "#57" in first
    assert "#3 over event #40" in first


def test_summaries_say_none_where_there_is_nothing() -> None:
    empty = [t.summary(UTC) for t in (FleetTally(), ExpiryTally(), AuditTally())]
    text = "\n".join(line for s in empty for line in s.lines())
    assert "Compliant: none" in text
    assert "Busiest months: none" in text
    assert "Events by action: none" in text
    fleet = FleetTally()
    fleet.add(status="verified", issues=[], not_after=T0 + timedelta(days=3), name="m1, h1")
    fleet.add(status="failed", issues=["failing", "expired"], not_after=T0 - timedelta(days=1), name="m2")
    fleet.add(status="decommissioned", issues=[], not_after=None, name="m3")
    summary = fleet.summary(UTC)
    assert summary.figure("compliance_percent").value == 50.0
    assert summary.figure("failing").value == 1
    assert summary.figure("earliest_expiry").text == "2026-11-25 09:00:00 UTC (m2)"
    assert summary.as_dict()["breakdowns"]["by_status"]["items"][0] == ["decommissioned", 1]


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
    for bad in ({"weeks": 0}, {"months": 61}, {"weeks": 4, "months": 4}, {"since": T0.replace(tzinfo=None)}):
        with pytest.raises(InputError):
            ReportParams(**bad)
    with pytest.raises(InputError):
        ReportParams(since=T0, until=T0 - timedelta(days=1))
    with pytest.raises(InputError):
        parse_kind("secrets")
    with pytest.raises(InputError):
        parse_format("xlsx")
    assert parse_format("PDF") is ReportFormat.PDF
    assert ReportParams(weeks=4).as_dict(ReportKind.EXPIRY) == {"weeks": 4}
    assert ReportParams().as_dict(ReportKind.EXPIRY) == {"months": "auto"}


def test_inventory_columns_name_the_host() -> None:
    assert INVENTORY_COLUMNS[:2] == ("mac", "hostname")
    assert datetime.fromisoformat(T0.isoformat()) == T0


def _forecast_spec(buckets: list[tuple[str, int]]) -> ReportSpec:
    """A weekly expiry forecast of ``buckets`` ("expired", W1…, "later")."""

    def produce(_session: object, tally: ExpiryTally) -> Iterator[Row]:
        tally.unit = "week"
        tally.buckets = buckets
        for label, n in buckets:
            yield (label, None, None, n)

    return ReportSpec(
        ReportKind.EXPIRY,
        "Forecast",
        ("period", "start", "end", "certificates"),
        ReportParams(weeks=len(buckets) - 2),
        T0,
        produce,
        ExpiryTally,
    )


def chart_labels(data: bytes) -> list[tuple[float, float, str]]:
    """(left, right, word) of the labels under the bars of page one's chart, left to right: the lowest line of
    words above the footer, as poppler (``pdftotext -bbox``) places them."""
    done = subprocess.run(
        ["pdftotext", "-bbox", "-f", "1", "-l", "1", "-", "-"], input=data, capture_output=True, timeout=60, check=True
    )
    pattern = r'<word xMin="([0-9.]+)" yMin="([0-9.]+)" xMax="([0-9.]+)" yMax="([0-9.]+)">([^<]*)</word>'
    found = re.findall(pattern, done.stdout.decode())
    words = [(float(x0), float(y0), float(x1), float(y1), word) for x0, y0, x1, y1, word in found]
    footer = max(y0 for _, y0, _, _, _ in words)
    lowest = max(y0 for _, y0, _, y1, _ in words if y1 < footer)
    return sorted((x0, x1, word) for x0, y0, x1, _, word in words if abs(y0 - lowest) < 0.5)


def test_a_chart_of_many_periods_thins_its_labels() -> None:
    """104 weekly bars: one rectangle per non-empty week, proportional; every n-th label and a scale instead of
    a count above each bar."""
    buckets = [("expired", 0)] + [(f"W{i + 1}", i % 7) for i in range(104)] + [("later", 12)]
    data = _bytes(_forecast_spec(buckets))
    reader = PdfReader(io.BytesIO(data), strict=True)
    drawn = bars(reader)
    assert len(drawn) == sum(1 for _, n in buckets if n)
    assert max(h for _, h in drawn) == pytest.approx(12 * min(h for _, h in drawn), rel=1e-3)
    first = reader.pages[0].extract_text()
    assert "W5" in first
    assert "W2 " not in first.replace("\n", " ")
    assert "12" in first  # the scale's maximum
    assert chart_labels(data)[-1][2] == "later"


def test_the_last_bar_of_a_thinned_chart_is_always_labelled() -> None:
    """26 weeks (28 bars, every second one labelled): "later", the 28th, is labelled too, and the label before
    it that would crowd it (W26) is left out."""
    buckets = [("expired", 1)] + [(f"W{i + 1}", i % 3) for i in range(26)] + [("later", 40)]
    labels = chart_labels(_bytes(_forecast_spec(buckets)))
    texts = [text for _, _, text in labels]
    assert texts[0] == "expired"
    assert "W2" in texts
    assert "W3" not in texts  # thinned: every second label
    assert texts[-1] == "later"
    assert "W26" not in texts
    for (_, right, _), (left, _, _) in itertools.pairwise(labels):
        assert left - right > 4.0  # no label crowds another


def test_a_short_or_empty_column_keeps_its_whole_name() -> None:
    """The inventory with nothing in "last verified at" and "last seen at": their names are drawn whole (on two
    lines), not cut to "last verifi…" / "last se…", and the table still fits the page."""
    rows: list[Row] = [
        (
            f"00:1A:E8:00:00:{i:02X}",
            f"phone-{i}.floor{i % 7}.example.com",
            f"+49891000{i:02d}",
            f"10.0.0.{i}",
            "OpenStage 60",
            "V3 R5.1",
            "default",
            "verified",
            f"a{i:x}0",
            (T0 + timedelta(days=i)).isoformat(),
            i,
            "active",
            None,
            None,
        )
        for i in range(40)
    ]
    spec = replace(_spec(rows, INVENTORY_COLUMNS), time_columns=TIME_COLUMNS & frozenset(INVENTORY_COLUMNS))
    data = _bytes(spec)
    table = PdfReader(io.BytesIO(data)).pages[1].extract_text()
    assert "…" not in table
    header = pdftotext(data)[1].splitlines()[3:5]  # the two lines of column names under the page header
    words = " ".join(header).split()
    for column in INVENTORY_COLUMNS:
        for word in column.split("_"):
            assert word in words, (column, header)
    assert "verified at" in header[1]
    assert "seen at" in header[1]
    fonts = _Fonts(default_font_set())
    texts = [["" if v is None else str(v) for v in row] for row in rows]
    widths = column_widths(fonts, INVENTORY_COLUMNS, texts, PAGE_W - 2 * MARGIN)
    assert sum(widths) == pytest.approx(PAGE_W - 2 * MARGIN)
    for column, width in zip(INVENTORY_COLUMNS, widths, strict=True):
        name = column.replace("_", " ")
        lines = fit_lines(fonts.bold, name, width - 2 * PAD, 8.0, 2)
        assert " ".join(lines) == name, (column, lines)


def test_header_width_is_the_narrowest_two_line_fit() -> None:
    fonts = _Fonts(default_font_set())
    for column in ("last_verified_at", "last_seen_at", "certificate_status", "mac", "days_left"):
        width = header_width(fonts, column)
        name = column.replace("_", " ")
        assert " ".join(fit_lines(fonts.bold, name, width, 8.0, 2)) == name
        assert " ".join(fit_lines(fonts.bold, name, width - 1.0, 8.0, 2)) != name  # the narrowest


def test_no_text_is_set_below_8_points() -> None:
    """The first reports set their tables in 6 pt; every piece of text is now 8 pt or larger (the body size)."""
    rows: list[Row] = [(f"row{i}", "x" * 120, i) for i in range(120)]
    reader = PdfReader(io.BytesIO(_bytes(_spec(rows))), strict=True)
    sizes: set[float] = set()

    def visit(text: str, _cm: object, _tm: object, _font: object, size: float) -> None:
        if text.strip():
            sizes.add(round(float(size), 2))

    for page in reader.pages:
        page.extract_text(visitor_text=visit)
    assert sizes, "no text found"
    assert min(sizes) >= 8.0, sorted(sizes)
