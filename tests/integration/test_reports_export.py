"""Report exports end to end: CLI and API, every kind and format read back, signed manifests verified by
certmgr and by the openssl CLI (with jq), tampering detected."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import update
from sqlmodel import Session, col

from certmgr.audit.checkpoint import key_paths, runtime_signer
from certmgr.cli.main import main
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate
from certmgr.reports.manifest import MANIFEST_SUFFIX, manifest_bytes, manifest_path, openssl_commands, signed_part
from certmgr.reports.queries import (
    AUDIT_COLUMNS,
    COMPLIANCE_COLUMNS,
    DEPLOYMENT_COLUMNS,
    EXPIRY_COLUMNS,
    INVENTORY_COLUMNS,
    MAX_MONTHS,
    ReportKind,
    ReportParams,
    build_report,
)
from certmgr.reports.summary import Summary
from certmgr.runtime import Runtime
from tests.conftest import T0
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    auth,
    ca_template,
    client,
    fleet,
    rt,
    tokens,
)
from tests.unit.test_reports_render import bars

COLUMNS = {
    "inventory": INVENTORY_COLUMNS,
    "expiry": EXPIRY_COLUMNS,
    "deployments": DEPLOYMENT_COLUMNS,
    "audit": AUDIT_COLUMNS,
    "compliance": COMPLIANCE_COLUMNS,
}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    captured = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), captured.out + captured.err


def key_fingerprint(rt: Runtime) -> str:
    """The audit key's fingerprint, as the auditor pinned it."""
    return runtime_signer(rt).fingerprint


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader)


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


def rows_note(n: int) -> str:
    """What the last page of a PDF report says after its last row."""
    return "1 row." if n == 1 else f"{n:,} rows."


@pytest.mark.parametrize("kind", list(COLUMNS))
def test_cli_exports_every_kind_in_every_format(
    kind: str, rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fmt in ("csv", "json", "pdf"):
        out = tmp_path / f"{kind}.{fmt}"
        code, output = _run(capsys, "report", kind, "--format", fmt, "--out", str(out))
        assert code == 0, output
        manifest = json.loads(manifest_path(out).read_text())
        assert manifest["kind"] == kind
        assert manifest["format"] == fmt
        assert manifest["size"] == out.stat().st_size
        code, output = _run(capsys, "report", "verify", str(out))
        assert code == 0, output
        if fmt == "csv":
            rows = _read_csv(out)
            assert tuple(rows[0].keys()) == COLUMNS[kind] if rows else True
            assert len(rows) == manifest["rows"]
        elif fmt == "json":
            data = json.loads(out.read_text())
            assert isinstance(data, list)
            assert len(data) == manifest["rows"]
            assert all(tuple(item) == COLUMNS[kind] for item in data)
        else:
            text = _pdf_text(out.read_bytes())
            assert kind in text
            assert rows_note(manifest["rows"]) in text
            assert "Summary" in text
            assert "Evidence" in text


def test_inventory_and_compliance_content(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inv.csv"
    soon_not_after = T0 + timedelta(days=5)  # the fixture's "soon" certificate; the CLI reads the real clock
    before = (soon_not_after - datetime.now(UTC)).days
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    after = (soon_not_after - datetime.now(UTC)).days
    rows = {r["mac"]: r for r in _read_csv(out)}
    assert len(rows) == 4
    soon = rows["00:1A:E8:00:00:02"]
    assert soon["e164"] == "+4989100002"  # a phone number is not a formula: left alone
    assert soon["days_left"] in {str(before), str(after)}
    assert soon["status"] == "verified"
    assert soon["certificate_serial"]
    assert rows["00:1A:E8:00:00:04"]["certificate_serial"] == ""
    out = tmp_path / "comp.json"
    assert _run(capsys, "report", "compliance", "--format", "json", "--out", str(out))[0] == 0
    issues = {r["mac"][-2:]: r["issues"] for r in json.loads(out.read_text())}
    assert issues == {
        "03": "factory-or-unknown-certificate;expired;failing",
        "04": "factory-or-unknown-certificate",
    }


def test_expiry_pdf_has_a_chart(rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "expiry.pdf"
    assert _run(capsys, "report", "expiry", "--format", "pdf", "--weeks", "8", "--out", str(out))[0] == 0
    reader = PdfReader(out, strict=True)
    first = reader.pages[0].extract_text()
    assert "Certificates expiring per week" in first  # the chart's title and its week labels
    for week in ("W1", "W8"):
        assert week in first
    # three filled bars of one certificate each: "expired", W1 (the "soon" certificate) and "later" (the "ok" one)
    drawn = bars(reader)
    assert len(drawn) == 3
    assert len({height for _, height in drawn}) == 1
    out_csv = tmp_path / "expiry.csv"
    assert _run(capsys, "report", "expiry", "--weeks", "8", "--out", str(out_csv))[0] == 0
    counts = {r["period"]: int(r["certificates"]) for r in _read_csv(out_csv)}
    assert counts["expired"] == 1
    assert counts["W1"] == 1
    assert counts["later"] == 1
    assert sum(counts.values()) == 3


def _forecast(rt: Runtime) -> tuple[dict[str, int], Summary]:
    """The default (monthly) expiry forecast as of ``T0`` in UTC: {period: certificates}, and its summary."""
    spec = build_report(ReportKind.EXPIRY, ReportParams(), T0)
    with Session(rt.engine) as s:
        run = spec.open(s)
        counts = {str(row[0]): int(row[3] or 0) for row in run}
    return counts, run.summary(UTC)


def test_expiry_forecast_by_default_shows_a_397_day_fleet_month_by_month(rt: Runtime, fleet: Fleet) -> None:
    """Certificates 14 and 15 months out (397-day certificates, as CAs issue them) get months of their own,
    however far past the 13 months shown at least; nothing lands in "later" while months up to the maximum
    are available. A certificate beyond the maximum makes the forecast MAX_MONTHS long, with it in "later"."""
    with session_scope(rt.engine) as s:
        for key, days in (("ok", 397), ("soon", 460)):  # T0 = 2026-11-26: 2027-12-28 and 2028-02-29
            s.execute(
                update(Certificate)
                .where(col(Certificate.id) == fleet.certificates[key])
                .values(not_after=T0 + timedelta(days=days))
            )
    counts, summary = _forecast(rt)
    periods = list(counts)
    months = periods[1:-1]
    assert (periods[0], periods[-1]) == ("expired", "later")
    assert months[0] == "2026-11"
    assert months[-1] == "2028-02"  # 16 months: through the month of the furthest certificate
    assert len(months) == 16
    assert counts["2027-12"] == 1
    assert counts["2028-02"] == 1
    assert counts["later"] == 0
    assert counts["expired"] == 1
    assert dict(summary.chart.bars if summary.chart else ())["2027-12"] == 1

    with session_scope(rt.engine) as s:  # beyond the maximum: MAX_MONTHS months, the rest "later"
        s.execute(
            update(Certificate)
            .where(col(Certificate.id) == fleet.certificates["soon"])
            .values(not_after=T0 + timedelta(days=31 * (MAX_MONTHS + 2)))
        )
    counts, _summary = _forecast(rt)
    assert len(counts) == MAX_MONTHS + 2
    assert counts["2027-12"] == 1
    assert counts["later"] == 1


def test_tampering_with_export_or_manifest_is_detected(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    original = out.read_bytes()
    out.write_bytes(original.replace(b"OpenStage 40", b"OpenStage 41"))
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 1
    assert "sha256" in output
    out.write_bytes(original)
    manifest = json.loads(manifest_path(out).read_text())
    manifest["kind"] = "compliance"
    manifest_path(out).write_text(json.dumps(manifest))
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 1
    assert "manifest signature" in output


def test_manifest_signed_by_another_key_fails_against_the_pinned_key(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    pinned = tmp_path / "pinned.pem"
    shutil.copy(key_paths(rt.settings.data_dir)[1], pinned)
    # a forger with a fresh data dir re-signs a modified file
    for path in key_paths(rt.settings.data_dir):
        path.unlink()
    out.write_bytes(out.read_bytes() + b"forged,row\r\n")
    code, _ = _run(capsys, "report", "inventory", "--out", str(tmp_path / "other.csv"))  # creates a new key
    assert code == 0
    from certmgr.reports.manifest import Rendered, build_manifest
    from certmgr.reports.queries import ReportKind, ReportParams, build_report
    from certmgr.reports.render import RenderContext, ReportFormat
    from certmgr.reports.summary import FleetTally

    spec = build_report(ReportKind.INVENTORY, ReportParams(), rt.clock.now())
    rendered = Rendered(5, FleetTally().summary(UTC), RenderContext())
    doc = build_manifest(out, spec, ReportFormat.CSV, rendered, runtime_signer(rt))
    manifest_path(out).write_bytes(manifest_bytes(doc))
    code, output = _run(capsys, "report", "verify", str(out), "--public-key", str(pinned))
    assert code == 1
    assert "not the pinned audit key" in output
    assert "does not verify" not in output  # the forger's signatures are fine: only the key gives it away


OPENSSL = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("jq") is None or shutil.which("grep") is None,
    reason="needs openssl, jq and grep",
)


def _documented_openssl_commands() -> list[str]:
    """The block of "Verifying with openssl (no certmgr needed)" in docs/reports.md, as written (for
    ``inventory.csv``)."""
    section = DOCS.read_text().split("## Verifying with openssl (no certmgr needed)", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _run_all(commands: list[str], cwd: Path) -> list[str]:
    outputs = []
    for command in commands:
        done = _sh(command, cwd)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    return outputs


@OPENSSL
def test_openssl_verifies_the_documented_commands(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The block of docs/reports.md as written, on a standalone CSV and its manifest, and the manifest's own
    ``verify_with_openssl`` on a JSON export: the file, the key and the manifest's own signature check out with
    openssl, and the signed bytes grep leaves are exactly the manifest without its signature."""
    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    manifest = json.loads(manifest_path(out).read_text())
    commands = _documented_openssl_commands()
    assert [c.split("   #")[0] for c in openssl_commands(out.name)] == commands
    assert manifest["verify_with_openssl"] == openssl_commands(out.name)
    results = _run_all(commands, tmp_path)
    assert results[2].split()[-1] == key_fingerprint(rt)  # the pin
    assert [results[i].strip() for i in (4, 6, 7)] == ["Verified OK", "Verified OK", "true"]
    signed = json.loads((tmp_path / "inventory.csv.manifest.signed.json").read_text())
    assert signed == {k: v for k, v in manifest.items() if k != "manifest_signature"}
    assert signed["summary"]["figures"]["compliance_percent"] == 50.0  # a float: jq -cS would write 50

    out = tmp_path / "audit.json"
    assert _run(capsys, "report", "audit", "--format", "json", "--out", str(out))[0] == 0
    results = _run_all(openssl_commands(out.name), tmp_path)
    assert [results[i].strip() for i in (4, 6, 7)] == ["Verified OK", "Verified OK", "true"]
    (tmp_path / out.name).write_bytes(out.read_bytes() + b" ")
    done = _sh(openssl_commands(out.name)[6], tmp_path)
    assert done.returncode != 0
    assert "Verification failure" in done.stdout + done.stderr
    assert _sh(openssl_commands(out.name)[7], tmp_path).stdout.strip() == "false"


def _figure_changed(text: str) -> str:
    return text.replace('"compliance_percent": 50.0', '"compliance_percent": 100.0', 1)


def _reformatted(text: str) -> str:
    """The same fields, written again as jq writes them (0.0 becomes 0)."""
    done = subprocess.run(["jq", "-S", "."], input=text, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


@OPENSSL
@pytest.mark.parametrize(
    "change",
    [_figure_changed, _reformatted],
    ids=["summary-figure", "reformatted-by-jq"],
)
def test_a_changed_manifest_fails_the_documented_check(
    change: Callable[[str], str], rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    original = manifest_path(out).read_text()
    changed = change(original)
    assert changed != original
    manifest_path(out).write_text(changed)
    commands = _documented_openssl_commands()
    _run_all(commands[:4], tmp_path)
    done = _sh(commands[4], tmp_path)  # the manifest signature
    assert done.returncode != 0
    assert "Verification failure" in done.stdout + done.stderr
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 1
    assert "the manifest signature does not verify" in output


@OPENSSL
def test_a_field_hidden_on_a_signature_line_is_caught_by_certmgr_and_not_read_by_the_auditor(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """grep drops every line that starts like the signature line, so a forger may add one that carries a field:
    the signed bytes stay intact (openssl says Verified OK) and the auditor, reading the signed file as the docs
    say, sees the true value; a reader of the whole file would see the forged one (the last duplicate wins),
    so ``certmgr report verify`` refuses a key given twice."""
    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    text = manifest_path(out).read_text()
    signature_line = text.split("\n")[1]
    assert signature_line.startswith('  "manifest_signature": "')
    forged = text.replace('  "rows": 4,\n', '  "rows": 4,\n' + signature_line[:-1] + ', "rows": 999,\n', 1)
    assert json.loads(forged)["rows"] == 999
    manifest_path(out).write_text(forged)
    results = _run_all(_documented_openssl_commands(), tmp_path)
    assert [results[i].strip() for i in (4, 6, 7)] == ["Verified OK", "Verified OK", "true"]
    assert json.loads((tmp_path / "inventory.csv.manifest.signed.json").read_text())["rows"] == 4
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 4, output
    assert "appears twice in one object" in output


def _forge_with_another_export(out: Path, other: Path) -> dict[str, object]:
    """The attack on a recipe that reads fields from the raw manifest: grep drops every line that starts like the
    signature line and jq keeps the last of duplicate keys, so one such line — carrying the genuine
    ``manifest_signature`` and, after it, ``signature``, ``sha256`` and ``size`` of ``other`` (another genuine
    export by the same key) — leaves the signed bytes intact while a reader of the raw manifest sees ``other``'s
    values; then ``other`` replaces ``out``. Returns the genuine manifest."""
    text = manifest_path(out).read_text()
    genuine: dict[str, object] = json.loads(text)
    theirs = json.loads(manifest_path(other).read_text())
    assert theirs["sha256"] != genuine["sha256"]
    line = (
        f'  "manifest_signature": {json.dumps(genuine["manifest_signature"])}, '
        f'"signature": {json.dumps(theirs["signature"])}, "sha256": "{theirs["sha256"]}", "size": {theirs["size"]},\n'
    )
    anchor = '\n  "public_key_pem": '  # after the genuine signature, sha256 and size: the forged ones come last
    assert text.count(anchor) == 1
    forged = text.replace(anchor, "\n" + line + anchor[1:], 1)
    raw = json.loads(forged)  # as jq reads it: the last duplicate wins
    fields = ("signature", "sha256", "size")
    assert raw["manifest_signature"] == genuine["manifest_signature"]
    assert [raw[k] for k in fields] == [theirs[k] for k in fields]
    assert signed_part(forged.encode()) == signed_part(text.encode())  # the manifest signature still holds
    manifest_path(out).write_text(forged)
    shutil.copyfile(other, out)
    return genuine


@OPENSSL
def test_signature_lines_overriding_the_file_fields_fail_the_documented_check(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another genuine export swapped in, with extra signature lines in the manifest that name its signature,
    SHA-256 and size: the documented commands, run as written, do not all succeed (they read those fields only
    from the signed file), and ``certmgr report verify`` refuses the manifest's duplicate keys."""
    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "inventory.csv"
    assert _run(capsys, "report", "compliance", "--out", str(other))[0] == 0
    _forge_with_another_export(out, other)
    commands = _documented_openssl_commands()
    failed = []
    for command in commands:
        done = _sh(command, tmp_path)
        if done.returncode != 0:
            failed.append((command, done.stdout + done.stderr))
    assert failed, "every documented command succeeded on a swapped export"
    # the manifest signature still verifies; the file signature and the SHA-256, read from the signed part, do not
    assert [command for command, _ in failed] == [commands[6], commands[7]]
    assert "Verification failure" in failed[0][1]
    assert failed[1][1].strip() == "false"
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 4, output
    assert "appears twice in one object" in output
    assert "Traceback" not in output


def _deeply_nested(text: str) -> str:
    return text.replace('  "rows": 4,\n', '  "rows": 4,\n  "deep": ' + "[" * 20_000 + "]" * 20_000 + ",\n", 1)


def _long_integer(text: str) -> str:
    return text.replace('  "rows": 4,\n', '  "rows": 4' + "0" * 5_000 + ",\n", 1)


def _duplicate_key(text: str) -> str:
    return text.replace('  "rows": 4,\n', '  "rows": 4,\n  "rows": 4,\n', 1)


def _nested_duplicate_key(text: str) -> str:
    return text.replace('"intact": true,', '"intact": true, "intact": true,', 1)


def _signed_part_not_json(text: str) -> str:
    """Valid JSON as a whole (the second line opens an object the last closes), but not without its signature
    line."""
    first, second, rest = text.split("\n", 2)
    return "\n".join([first, second + ' "wrap": {', rest.rstrip("\n"), "}"]) + "\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_deeply_nested, "is nested too deeply"),
        (_long_integer, "is not valid JSON"),
        (_duplicate_key, "the key 'rows' appears twice in one object"),
        (_nested_duplicate_key, "the key 'intact' appears twice in one object"),
        (_signed_part_not_json, "the signed part of manifest"),
    ],
    ids=["deeply-nested", "long-integer", "duplicate-key", "nested-duplicate-key", "signed-part-not-json"],
)
def test_a_hostile_manifest_is_an_input_error(
    change: Callable[[str], str],
    message: str,
    rt: Runtime,
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A manifest under the size limit that Python's json cannot turn into a manifest (RecursionError,
    ValueError of int()), or one that gives a key twice: exit 4 with a one-line reason, never a traceback."""
    from certmgr.reports.manifest import MAX_MANIFEST_BYTES

    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    text = manifest_path(out).read_text()
    changed = change(text)
    assert changed != text
    assert len(changed.encode()) <= MAX_MANIFEST_BYTES
    manifest_path(out).write_text(changed)
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 4, output
    assert message in output
    assert "Traceback" not in output


def test_a_line_like_the_signature_line_with_a_new_field_is_caught(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field no signature covers, on an added line that grep drops (no duplicate: a key the signed part lacks,
    here inside the evidence): certmgr reads none of it (the verdict's manifest is the signed part) and says the
    manifest was modified."""
    from certmgr.reports.manifest import verify_export

    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    text = manifest_path(out).read_text()
    verdict = verify_export(out)
    assert verdict.ok, verdict.problems
    assert verdict.manifest == json.loads(signed_part(text.encode()))  # no manifest_signature in it
    anchor = '    "audit_chain": {\n'
    assert text.count(anchor) == 1
    forged = text.replace(anchor, anchor + '  "manifest_signature": "", "forged": true,\n', 1)
    assert json.loads(forged)["evidence"]["audit_chain"]["forged"] is True
    manifest_path(out).write_text(forged)
    verdict = verify_export(out)
    assert "forged" not in verdict.manifest["evidence"]["audit_chain"]
    assert verdict.problems == ("the manifest holds lines its signature does not cover (manifest modified)",)
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 1
    assert "lines its signature does not cover" in output


def test_a_version_2_manifest_still_verifies(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Manifests written before version 3 signed the canonical JSON of their fields: certmgr still checks them."""
    from certmgr.audit.checkpoint import encode_signature

    out = tmp_path / "inventory.csv"
    assert _run(capsys, "report", "inventory", "--out", str(out))[0] == 0
    doc = json.loads(manifest_path(out).read_text())
    del doc["manifest_signature"]
    doc["manifest_version"] = 2
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    doc["manifest_signature"] = encode_signature(runtime_signer(rt).sign(canonical))
    manifest_path(out).write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 0, output
    doc["rows"] = 5
    manifest_path(out).write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    code, output = _run(capsys, "report", "verify", str(out))
    assert code == 1
    assert "the manifest signature does not verify" in output


def test_documented_commands_match_docs() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "reports.md").read_text()
    for command in openssl_commands("inventory.csv"):
        assert command.split("   #")[0] in docs, command


@pytest.mark.parametrize("fmt", ["csv", "json", "pdf"])
def test_api_streams_reports(rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet, fmt: str) -> None:
    r = client.get("/api/v1/reports/inventory", params={"format": fmt}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200
    assert "attachment" in r.headers["content-disposition"]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == 4
    elif fmt == "json":
        assert len(r.json()) == 4
    else:
        assert "Phone inventory" in _pdf_text(r.content)
    r = client.get(
        "/api/v1/reports/audit",
        params={"format": "json", "action": "report.exported"},
        headers=auth(tokens["viewer"]),
    )
    exported = r.json()
    assert exported
    assert exported[0]["actor"] == "token:viewer-1"
    assert client.get("/api/v1/reports/secrets", headers=auth(tokens["viewer"])).status_code == 422
    assert client.get("/api/v1/reports/expiry", params={"weeks": 0}, headers=auth(tokens["viewer"])).status_code == 422


# --- API bundles: the report with its signed manifest --------------------------------------------------------
DOCS = Path(__file__).resolve().parents[2] / "docs" / "reports.md"
BUNDLE_CASES = [("inventory", "csv"), ("expiry", "pdf"), ("audit", "json")]


def _documented_bundle_commands() -> list[str]:
    """The curl, unzip and certmgr lines of the "Downloading a signed export from the API" block."""
    section = DOCS.read_text().split("## Downloading a signed export from the API", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == ["curl", "unzip", "certmgr"], lines
    return lines


def _for(command: str, kind: str, fmt: str) -> str:
    return (
        command.replace("inventory.csv", f"{kind}.{fmt}")
        .replace("inventory", kind)
        .replace("format=csv", f"format={fmt}")
    )


def _sh(command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _audited_sha256(client: TestClient, token: str, kind: str) -> list[str]:
    r = client.get("/api/v1/audit/events", params={"action": "report.exported", "limit": 500}, headers=auth(token))
    assert r.status_code == 200, r.text
    return [e["details"].get("sha256") for e in r.json()["items"] if e["subject_id"] == kind]


@pytest.mark.parametrize(("kind", "fmt"), BUNDLE_CASES)
def test_api_bundle_holds_the_report_and_its_signed_manifest(
    kind: str,
    fmt: str,
    rt: Runtime,
    client: TestClient,
    tokens: dict[str, str],
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = client.get(f"/api/v1/reports/{kind}/bundle", params={"format": fmt}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert f'filename="{kind}-20261126T090000Z.{fmt}.zip"' in r.headers["content-disposition"]
    name = f"{kind}.{fmt}"
    with zipfile.ZipFile(io.BytesIO(r.content)) as bundle:
        assert bundle.namelist() == [name, name + MANIFEST_SUFFIX]
        assert bundle.testzip() is None
        bundle.extractall(tmp_path)
    manifest = json.loads(manifest_path(tmp_path / name).read_text())
    assert (manifest["file"], manifest["kind"], manifest["format"]) == (name, kind, fmt)
    assert manifest["generated_at"] == T0.isoformat()
    pinned = key_paths(rt.settings.data_dir)[1]
    code, output = _run(capsys, "report", "verify", str(tmp_path / name), "--public-key", str(pinned))
    assert code == 0, output
    data = (tmp_path / name).read_bytes()
    if fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(data.decode())))) == manifest["rows"] == 4
    elif fmt == "json":
        assert len(json.loads(data)) == manifest["rows"]
    else:
        text = _pdf_text(data)
        assert "Certificates expiring per month" in text
        assert rows_note(manifest["rows"]) in text
    assert manifest["sha256"] in _audited_sha256(client, tokens["viewer"], kind)
    assert list((rt.settings.data_dir / "tmp").iterdir()) == []  # the spooled file is gone
    # the same download, tampered with after unzipping, fails
    (tmp_path / name).write_bytes(data + b"\n")
    code, output = _run(capsys, "report", "verify", str(tmp_path / name), "--public-key", str(pinned))
    assert code == 1
    assert "sha256" in output


def test_api_bundle_needs_a_token_and_valid_parameters(client: TestClient, tokens: dict[str, str]) -> None:
    assert client.get("/api/v1/reports/inventory/bundle").status_code == 401
    h = auth(tokens["viewer"])
    assert client.get("/api/v1/reports/inventory/bundle", params={"format": "xlsx"}, headers=h).status_code == 422
    assert client.get("/api/v1/reports/expiry/bundle", params={"weeks": 105}, headers=h).status_code == 422
    r = client.get("/api/v1/reports/audit/bundle", params={"since": "2026-11-01T00:00:00"}, headers=h)
    assert r.status_code == 422
    assert "time zone" in r.json()["detail"]


@pytest.fixture
def live_api(rt: Runtime) -> Iterator[str]:
    """The API served by uvicorn on a loopback port (in a thread), for curl; yields its base URL."""
    import socket
    import threading

    import uvicorn

    from certmgr.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(rt), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("curl", "unzip", "openssl", "jq")),
    reason="needs curl, unzip, openssl and jq",
)
@pytest.mark.parametrize(("kind", "fmt"), [("inventory", "csv"), ("expiry", "pdf")])
def test_api_bundle_verifies_with_the_documented_commands(
    kind: str, fmt: str, rt: Runtime, live_api: str, tokens: dict[str, str], fleet: Fleet, tmp_path: Path
) -> None:
    """docs/reports.md verbatim: curl downloads the bundle from a real listener, unzip unpacks it, then
    ``certmgr report verify`` (the installed entry point) and the openssl commands check it (the manifest's own
    signature too)."""
    work = tmp_path / "download"  # tmp_path also holds the database and the data dir
    work.mkdir()
    env = {**os.environ, "CERTMGR_URL": live_api, "CERTMGR_TOKEN": tokens["viewer"]}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    curl, unzip, verify = (_for(c, kind, fmt) for c in _documented_bundle_commands())
    for command in (curl, unzip):
        done = _sh(command, work, env)
        assert done.returncode == 0, (command, done.stderr)
    name = f"{kind}.{fmt}"
    assert sorted(p.name for p in work.iterdir()) == sorted([f"{kind}.zip", name, name + MANIFEST_SUFFIX])
    assert ((work / name).stat().st_mode & 0o777) == 0o600
    shutil.copy(key_paths(rt.settings.data_dir)[1], work / "audit-key.pinned.pem")
    done = _sh(verify, work, env)
    assert done.returncode == 0, (verify, done.stdout, done.stderr)
    assert f"{name}: OK" in done.stdout
    manifest = json.loads(manifest_path(work / name).read_text())
    results = []
    for command in openssl_commands(name):
        done = _sh(command, work)
        assert done.returncode == 0, (command, done.stderr)
        results.append(done.stdout)
    assert results[2].split()[-1] == manifest["public_key_sha256"] == key_fingerprint(rt)
    assert [results[i].strip() for i in (4, 6, 7)] == ["Verified OK", "Verified OK", "true"]
    # a token is required: curl -f fails on the 401
    done = _sh(curl, work, {**env, "CERTMGR_TOKEN": "cmt_not-a-token"})
    assert done.returncode != 0


@OPENSSL
def test_an_older_genuine_export_renamed_fails_the_documented_check(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An older genuine export and its untouched manifest, renamed to the name of the report the auditor was
    promised: every signature verifies (both files are as certmgr signed them), so only the name the signed
    manifest gives its file tells them apart — the last documented command compares it, and so does ``certmgr
    report verify``. Fails with the name left out of that command."""
    (tmp_path / "old").mkdir()
    old = tmp_path / "old" / "compliance.csv"
    assert _run(capsys, "report", "compliance", "--out", str(old))[0] == 0
    out = tmp_path / "inventory.csv"
    old.rename(out)
    manifest_path(old).rename(manifest_path(out))
    commands = _documented_openssl_commands()
    results = [_sh(command, tmp_path) for command in commands]
    assert [r.stdout.strip() for r in (results[4], results[6])] == ["Verified OK", "Verified OK"]
    assert results[7].returncode != 0
    assert results[7].stdout.strip() == "false"
    code, output = _run(capsys, "report", "verify", str(out))
    assert code != 0, output
