"""PDF reports looked at, not only parsed: every kind rendered to PNG with poppler's ``pdftoppm`` (page one must
have ink), its summary figures and non-Latin host names read back from the text; and the bad inputs of issue 12
(no events in the period, an empty fleet, a 255-character host name, right-to-left and CJK text).

Set ``SAVE_REPORT_PNGS=docs/img`` to write page one of each kind there (the pictures in
``docs/reports.md`` come from this test).
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader
from sqlalchemy import update
from sqlmodel import col

from certmgr.audit.log import append_event
from certmgr.db.engine import session_scope
from certmgr.db.models import Deployment, DeploymentState, Device
from certmgr.reports.manifest import manifest_path
from certmgr.runtime import Runtime
from tests.conftest import REPO, T0
from tests.integration.test_api_support import Fleet, ca_template, fleet, rt  # noqa: F401 - fixtures
from tests.integration.test_reports_export import _run

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs pdftoppm (poppler-utils)")

HOSTS = {
    "ok": "会議室-東京-3階.phones.example.jp",
    "soon": "טלפון-קבלה.example.co.il",
    "expired": "هاتف-الاستقبال.example.sa",
    "new": "h" * 255,
}
KINDS = ["inventory", "compliance", "expiry", "deployments", "audit"]


def png_of_page_one(pdf: Path, out: Path, dpi: int = 60) -> Image.Image:
    """Page one of ``pdf`` rendered by pdftoppm into ``out`` (PNG)."""
    subprocess.run(
        ["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", str(pdf), str(out.with_suffix(""))],
        check=True,
        timeout=120,
        capture_output=True,
    )
    return Image.open(out)


def ink(image: Image.Image) -> float:
    """Share of pixels that are not (near) white."""
    gray = image.convert("L")
    histogram = gray.histogram()
    dark = sum(histogram[:200])
    return dark / (gray.width * gray.height)


def _showcase(rt: Runtime, fleet: Fleet) -> None:
    """Host names in four scripts (one of 255 characters), a few audit events by two actors."""
    with session_scope(rt.engine) as s:
        for key, host in HOSTS.items():
            s.execute(update(Device).where(col(Device.id) == fleet.devices[key]).values(hostname=host))
        s.execute(
            update(Deployment)
            .where(col(Deployment.state) == DeploymentState.FAILED)
            .values(last_error="phone refused the PKCS#12 (profile legacy)")
        )
        for actor, action in (("token:security-team", "report.exported"), ("token:ops", "device.renewed")):
            append_event(s, at=T0 - timedelta(hours=1), actor=actor, action=action, subject_type="device")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_a_page_one_with_content(
    kind: str, rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _showcase(rt, fleet)
    out = tmp_path / f"{kind}.pdf"
    code, output = _run(capsys, "report", kind, "--format", "pdf", "--out", str(out))
    assert code == 0, output
    image = png_of_page_one(out, tmp_path / f"report-{kind}.png")
    assert ink(image) > 0.01  # text and a chart, not a blank page
    manifest = json.loads(manifest_path(out).read_text())
    reader = PdfReader(out)
    first = reader.pages[0].extract_text()
    for line in manifest["summary"]["text"][:4]:  # the summary figures, as the manifest states them
        label, _, value = line.strip().partition(": ")
        assert label.rstrip(":") in first
        assert value.split(" ")[0] in first
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert "?" not in text.replace("?format", "")
    if kind in ("inventory", "compliance"):
        listed = ("ok", "soon", "expired") if kind == "inventory" else ("expired",)  # compliance: exceptions only
        for host in listed:  # CJK, Hebrew, Arabic: embedded and extractable (maybe wrapped)
            assert HOSTS[host].split(".")[0] in text
        assert "h" * 15 in text
        assert "h…" in text
        assert "h" * 255 not in text  # wrapped and abbreviated in the PDF ...
        csv_out = tmp_path / f"{kind}.csv"
        assert _run(capsys, "report", kind, "--out", str(csv_out))[0] == 0
        assert "h" * 255 in csv_out.read_text(encoding="utf-8")  # ... the full value is in the CSV
    save = os.environ.get("SAVE_REPORT_PNGS")
    if save:
        target = REPO / save / f"report-{kind}.png"
        png_of_page_one(out, target, dpi=75)
        Image.open(target).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(target, optimize=True)
        assert target.stat().st_size < 200_000


def test_inventory_summary_figures(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _showcase(rt, fleet)
    out = tmp_path / "inventory.pdf"
    assert _run(capsys, "report", "inventory", "--format", "pdf", "--out", str(out))[0] == 0
    first = PdfReader(out).pages[0].extract_text()
    # ok and soon are compliant; expired is expired + failing (and not verified); new has no certificate
    assert "Phones in service: 4" in first
    assert "Compliant: 50.0 % (2 of 4)" in first
    assert "On a factory or unknown certificate: 2" in first
    assert "Certificate expired: 1" in first
    assert "Failing (last deployment failed): 1" in first
    assert "Drifting (serves another certificate): none" in first
    assert "Earliest expiry: 2026-11-23 09:00:00 UTC (00:1A:E8:00:00:03, " in first
    assert "هاتف-الاستقبال" in first  # right to left: pypdf reads the run back, the dot may move


def test_deployment_and_audit_summaries(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _showcase(rt, fleet)
    out = tmp_path / "deployments.pdf"
    assert _run(capsys, "report", "deployments", "--format", "pdf", "--out", str(out))[0] == 0
    first = PdfReader(out).pages[0].extract_text()
    assert "Success rate (of those verified or failed): 50.0 % (1 verified, 1 failed)" in first
    assert "phone refused the PKCS#12 (profile legacy): 1" in first
    out = tmp_path / "audit.json"
    assert _run(capsys, "report", "audit", "--format", "json", "--out", str(out))[0] == 0
    summary = json.loads(manifest_path(out).read_text())["summary"]
    by_actor = dict(summary["breakdowns"]["by_actor"]["items"])
    assert by_actor["token:security-team"] == 1
    assert by_actor["token:ops"] == 1
    assert summary["figures"]["events"] == len(json.loads(out.read_text()))


def test_non_latin_actor_names_in_the_audit_report(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Actor names in Japanese, Cyrillic and Arabic: drawn with the embedded fonts on page one (events by actor)
    and in the table, read back by text extraction, never replaced by '?' or U+FFFD."""
    actors = ("token:監査チーム", "token:аудитор", "token:مدقق")
    with session_scope(rt.engine) as s:
        for actor in actors:
            append_event(s, at=T0 - timedelta(hours=1), actor=actor, action="report.exported", subject_type="report")
    out = tmp_path / "audit.pdf"
    code, output = _run(capsys, "report", "audit", "--format", "pdf", "--out", str(out))
    assert code == 0, output
    reader = PdfReader(out)
    first = reader.pages[0].extract_text()
    table = "\n".join(p.extract_text() for p in reader.pages[1:])
    for actor in actors:
        name = actor.split(":", 1)[1]
        assert name in first, (name, first)
        assert name in table, (name, table)
    assert "?" not in first + table
    assert "\ufffd" not in first + table
    assert "could not be drawn" not in first


def test_a_period_without_events_and_an_empty_fleet_say_none(
    rt: Runtime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since, until = "2020-01-01T00:00:00Z", "2020-02-01T00:00:00Z"
    for kind, extra in (
        ("audit", ["--since", since, "--until", until]),
        ("deployments", ["--since", since, "--until", until]),
        ("inventory", []),
        ("compliance", []),
        ("expiry", []),
    ):
        out = tmp_path / f"{kind}.pdf"
        code, output = _run(capsys, "report", kind, "--format", "pdf", "--out", str(out), *extra)
        assert code == 0, output
        reader = PdfReader(out)
        first = reader.pages[0].extract_text()
        assert ": none" in first
        assert "none: this report has no rows" in reader.pages[1].extract_text() or kind == "expiry"
        assert ink(png_of_page_one(out, tmp_path / f"{kind}.png")) > 0.005
    first = PdfReader(tmp_path / "audit.pdf").pages[0].extract_text()
    assert "Events listed: none" in first
    assert "Events by action: none" in first
    first = PdfReader(tmp_path / "inventory.pdf").pages[0].extract_text()
    assert "Phones in service: none" in first
    assert "Earliest expiry: none" in first


def test_expiry_forecast_covers_the_fleets_horizon_by_month(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "expiry.csv"
    assert _run(capsys, "report", "expiry", "--out", str(out))[0] == 0
    lines = out.read_text().splitlines()
    periods = [line.split(",")[0] for line in lines[1:]]
    # the CLI reads the real clock: 13 calendar months from the current one, then "later" (empty)
    assert periods[0] == "expired"
    assert periods[-1] == "later"
    assert len(periods) == 13 + 2
    assert lines[-1].endswith(",0")
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["params"] == {"months": "auto"}
    assert manifest["summary"]["chart"]["title"] == "Certificates expiring per month"


def test_png_helper_sees_a_blank_page(tmp_path: Path) -> None:
    """The non-blank check can fail: a white page has no ink."""
    blank = Image.new("RGB", (100, 100), "white")
    assert ink(blank) == 0.0
    buffer = io.BytesIO()
    blank.save(buffer, "PNG")
    assert ink(Image.open(buffer)) == 0.0
