"""The evidence pack (``certmgr report bundle`` and ``GET /api/v1/reports/bundle``): every report kind with its
signed manifest, the CA chain, the CRL, the audit public key and a signed SHA256SUMS, checked the way its README
tells an auditor to (openssl, sha256sum, certmgr report verify)."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from certmgr.db.models import AuditEvent
from certmgr.reports.manifest import MANIFEST_SUFFIX
from certmgr.runtime import Runtime
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    auth,
    ca_template,
    client,
    fleet,
    rt,
    tokens,
)
from tests.integration.test_reports_export import _forge_with_another_export, _run

KINDS = ("inventory", "expiry", "deployments", "audit", "compliance")
EXTRAS = ["README.txt", "ca-chain.pem", "issuing-ca.crl", "audit-key.pub.pem", "SHA256SUMS", "SHA256SUMS.sig"]


def _sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _check_pack(folder: Path, formats: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    names = sorted(p.name for p in folder.iterdir())
    reports = [f"{k}.{f}" for k in KINDS for f in formats]
    assert names == sorted([*reports, *(r + MANIFEST_SUFFIX for r in reports), *EXTRAS])
    readme = (folder / "README.txt").read_text()
    for report in reports:
        assert report in readme
        code, output = _run(
            capsys, "report", "verify", str(folder / report), "--public-key", str(folder / "audit-key.pub.pem")
        )
        assert code == 0, output
    if shutil.which("openssl") and shutil.which("sha256sum"):
        for command in (
            "openssl dgst -sha256 -verify audit-key.pub.pem -signature SHA256SUMS.sig SHA256SUMS",
            "sha256sum -c SHA256SUMS",
            "openssl crl -inform DER -in issuing-ca.crl -CAfile ca-chain.pem -noout",
        ):
            done = _sh(command, folder)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
        key = _sh("openssl pkey -pubin -in audit-key.pub.pem -outform DER | openssl dgst -sha256", folder)
        assert key.stdout.strip().split()[-1] in readme  # the README names the key it was signed with
        # a changed file is caught by the signed list
        changed = folder / reports[0]
        changed.write_bytes(changed.read_bytes() + b"\n")
        assert _sh("sha256sum -c SHA256SUMS", folder).returncode != 0


def test_cli_writes_the_evidence_pack(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pack" / "evidence.zip"
    code, output = _run(capsys, "report", "bundle", "--out", str(out), "--since", "2026-01-01T00:00:00Z")
    assert code == 0, output
    assert (out.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["evidence.zip"]  # no temporary files left
    with zipfile.ZipFile(out) as pack:
        assert pack.testzip() is None
        pack.extractall(tmp_path / "unpacked")
    _check_pack(tmp_path / "unpacked", ("pdf", "csv"), capsys)
    manifest = json.loads((tmp_path / "unpacked" / "audit.csv.manifest.json").read_text())
    assert manifest["params"]["since"] == "2026-01-01T00:00:00+00:00"
    assert manifest["via"] == "bundle"
    import hashlib

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    with Session(rt.engine) as s:
        bundled = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "report.bundled")).one()
        exported = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "report.exported")).all()
    assert bundled.details["sha256"] == digest
    assert len(exported) == 10
    assert sorted(bundled.details["reports"]) == sorted(e.details["sha256"] for e in exported)


def test_api_serves_the_same_pack(
    rt: Runtime,
    client: TestClient,
    tokens: dict[str, str],
    fleet: Fleet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert client.get("/api/v1/reports/bundle").status_code == 401
    r = client.get("/api/v1/reports/bundle", params={"format": ["json"]}, headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert 'filename="evidence-20261126T090000Z.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as pack:
        pack.extractall(tmp_path / "unpacked")  # tmp_path also holds the database and the data dir
    _check_pack(tmp_path / "unpacked", ("json",), capsys)
    manifest = json.loads((tmp_path / "unpacked" / "inventory.json.manifest.json").read_text())
    assert (manifest["generated_by"], manifest["via"]) == ("token:viewer-1", "api")
    assert list((rt.settings.data_dir / "tmp").iterdir()) == []  # the spooled pack is gone
    bad = client.get("/api/v1/reports/bundle", params={"since": "2026-01-01T00:00:00"}, headers=auth(tokens["viewer"]))
    assert bad.status_code == 422


def _readme_report_commands(readme: str, report: str) -> list[str]:
    """The commands of the README's step 2 (each report with its manifest), for ``report``."""
    section = readme.split("\n2. ", 1)[1].split("\n3. ", 1)[0]
    commands = [line.strip() for line in section.splitlines() if line.startswith("     ")]
    assert commands, section
    return [command.replace("REPORT", report) for command in commands]


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("openssl", "jq", "grep")), reason="needs openssl, jq, grep")
def test_readme_checks_each_report_and_a_swapped_one_fails(
    rt: Runtime, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step 2 of the pack's README, as written, verifies a report; with another report of the pack swapped in and
    lines like the signature line added to the manifest that name the other's signature, SHA-256 and size (grep
    drops them, jq would read them), it fails: the README reads those fields only from the signed part."""
    from certmgr.audit.checkpoint import create_checkpoint, runtime_signer
    from certmgr.db.engine import session_scope
    from tests.conftest import T0

    with session_scope(rt.engine) as s:  # so that the manifests record a checkpoint for the README to check
        create_checkpoint(s, runtime_signer(rt), T0)
    out = tmp_path / "evidence.zip"
    assert _run(capsys, "report", "bundle", "--out", str(out), "--format", "csv")[0] == 0
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(out) as pack:
        pack.extractall(folder)
    commands = _readme_report_commands((folder / "README.txt").read_text(), "inventory.csv")
    for command in commands:
        done = _sh(command, folder)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    _forge_with_another_export(folder / "inventory.csv", folder / "compliance.csv")
    failed = [command for command in commands if _sh(command, folder).returncode != 0]
    assert failed, "every README command succeeded on a swapped report"
    assert any("-signature 'inventory.csv.sig' 'inventory.csv'" in command for command in failed), failed
