"""Report exports end to end: CLI and API, every kind and format read back, signed manifests verified by
certmgr and by the openssl CLI (with jq), tampering detected."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from certmgr.audit.checkpoint import key_paths
from certmgr.cli.main import main
from certmgr.reports.manifest import manifest_path, openssl_commands
from certmgr.reports.queries import (
    AUDIT_COLUMNS,
    COMPLIANCE_COLUMNS,
    DEPLOYMENT_COLUMNS,
    EXPIRY_COLUMNS,
    INVENTORY_COLUMNS,
)
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


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader)


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


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
            assert f"{manifest['rows']} rows." in text


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
    text = _pdf_text(out.read_bytes())
    assert "Certificates expiring per week" in text
    for week in ("W1", "W8"):
        assert week in text
    out_csv = tmp_path / "expiry.csv"
    assert _run(capsys, "report", "expiry", "--weeks", "8", "--out", str(out_csv))[0] == 0
    counts = {r["week"]: int(r["certificates"]) for r in _read_csv(out_csv)}
    assert counts["expired"] == 1
    assert counts["W1"] == 1
    assert counts["later"] == 1
    assert sum(counts.values()) == 3


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
    from certmgr.audit.checkpoint import runtime_signer
    from certmgr.reports.manifest import build_manifest
    from certmgr.reports.queries import ReportKind, ReportParams, build_report
    from certmgr.reports.render import ReportFormat

    spec = build_report(ReportKind.INVENTORY, ReportParams(), rt.clock.now())
    doc = build_manifest(out, spec, ReportFormat.CSV, 5, runtime_signer(rt))
    manifest_path(out).write_text(json.dumps(doc))
    code, output = _run(capsys, "report", "verify", str(out), "--public-key", str(pinned))
    assert code == 1
    assert "not the pinned audit key" in output


@pytest.mark.skipif(shutil.which("openssl") is None or shutil.which("jq") is None, reason="needs openssl and jq")
def test_openssl_verifies_the_documented_commands(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.json"
    assert _run(capsys, "report", "audit", "--format", "json", "--out", str(out))[0] == 0
    manifest = json.loads(manifest_path(out).read_text())
    results = []
    for command in openssl_commands(out.name):
        done = subprocess.run(
            ["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, (command, done.stderr)
        results.append(done.stdout)
    assert results[2].strip() == "Verified OK"
    assert manifest["public_key_sha256"] in results[3]
    assert manifest["sha256"] in results[4]
    (tmp_path / out.name).write_bytes(out.read_bytes() + b" ")
    done = subprocess.run(
        ["/bin/sh", "-c", openssl_commands(out.name)[2]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "Verification failure" in done.stdout + done.stderr


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
