"""``certmgr issue`` through the real console script: files, database row, audit event, independent checks."""

from __future__ import annotations

import ipaddress
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from certmgr.pki.keys import PLAINTEXT_KEY_PEM_HEADERS, fingerprint_sha256, public_keys_match
from tests.integration.test_cli_support import copy_data_dir, count_rows, init_template, ok, run_cli

MAC = "00:1a:e8:12:34:56"
TOKEN = "001ae8123456"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_template(tmp_path_factory.mktemp("cli-issue"))


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    return copy_data_dir(template, tmp_path / "var")


def _issuing(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "ca" / "issuing.pem").read_bytes())


def test_issue_writes_pem_p12_chain_and_records_the_certificate(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ok(
        run_cli(
            data_dir, "issue", "--mac", MAC, "--ip", "10.20.30.40", "--dns", "phone1.example.net", "--out", str(out)
        )
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{TOKEN}.pem", f"{TOKEN}.p12", "chain.pem"])
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert str(p) in result.stdout
    leaf = x509.load_pem_x509_certificate((out / f"{TOKEN}.pem").read_bytes())
    issuing = _issuing(data_dir)
    leaf.verify_directly_issued_by(issuing)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.20.30.40")]
    assert san.get_values_for_type(x509.DNSName) == ["phone1.example.net"]
    assert x509.load_pem_x509_certificates((out / "chain.pem").read_bytes()) == [issuing]
    serial = format(leaf.serial_number, "x")
    assert f"serial {serial}" in result.stdout

    with sqlite3.connect(data_dir / "certmgr.db") as conn:
        rows = conn.execute("SELECT serial, fingerprint_sha256, status, policy_name FROM certificate").fetchall()
        assert rows == [(serial, fingerprint_sha256(leaf), "active", "default")]
        (mac,) = conn.execute(
            "SELECT d.mac FROM device d JOIN certificate c ON c.id = d.current_certificate_id"
        ).fetchone()
        assert mac == "00:1A:E8:12:34:56"
        events = conn.execute("SELECT subject_id FROM audit_event WHERE action = 'certificate.issued'").fetchall()
        assert events == [(serial,)]


def test_p12_opens_with_cryptography_and_openssl(data_dir: Path, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl CLI is required as an independent checker"
    out = tmp_path / "out"
    ok(run_cli(data_dir, "issue", "--mac", MAC, "--ip", "10.20.30.40", "--out", str(out)))
    p12 = out / f"{TOKEN}.p12"
    key, cert, extra = pkcs12.load_key_and_certificates(p12.read_bytes(), None)
    leaf = x509.load_pem_x509_certificate((out / f"{TOKEN}.pem").read_bytes())
    assert cert == leaf
    assert key is not None
    assert public_keys_match(key, leaf)  # type: ignore[arg-type]
    assert extra == [_issuing(data_dir)]
    dumped = subprocess.run(
        [openssl, "pkcs12", "-in", str(p12), "-passin", "pass:", "-nodes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr
    assert PLAINTEXT_KEY_PEM_HEADERS[0].decode() in dumped.stdout
    assert dumped.stdout.count("BEGIN CERTIFICATE") == 2
    pem_certs = x509.load_pem_x509_certificates(dumped.stdout.encode())
    assert leaf in pem_certs


def test_issue_works_with_the_root_key_offline(data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "ca" / "root.key").unlink()
    out = tmp_path / "out"
    ok(run_cli(data_dir, "issue", "--mac", MAC, "--ip", "10.20.30.40", "--out", str(out)))
    leaf = x509.load_pem_x509_certificate((out / f"{TOKEN}.pem").read_bytes())
    leaf.verify_directly_issued_by(_issuing(data_dir))
    assert count_rows(data_dir, "certificate") == 1
    assert "no (kept offline)" in ok(run_cli(data_dir, "ca", "show")).stdout


def test_issue_with_named_policy_and_several_ips(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ok(
        run_cli(
            data_dir,
            "issue",
            "--mac",
            MAC,
            "--ip",
            "10.0.0.1",
            "--ip",
            "2001:db8::1",
            "--policy",
            "default",
            "--out",
            str(out),
        )
    )
    assert "policy default" in result.stdout
    leaf = x509.load_pem_x509_certificate((out / f"{TOKEN}.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("2001:db8::1"),
    }


def test_issue_with_lab_policy_from_a_custom_dir(data_dir: Path, tmp_path: Path) -> None:
    from tests.conftest import REPO

    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(REPO / "policies" / "default.toml", policies / "default.toml")
    (policies / "10-short.toml").write_text(
        (REPO / "policies" / "default.toml")
        .read_text()
        .replace('name = "default"', 'name = "short"')
        .replace('duration = "397d"', 'duration = "30d"')
        .replace('renew_before = "30d"', 'renew_before = "7d"')
        .replace("[key]", '[match]\nmac_prefixes = ["00:1A:E8"]\n\n[key]', 1)
    )
    out = tmp_path / "out"
    result = ok(
        run_cli(
            data_dir,
            "issue",
            "--mac",
            MAC,
            "--ip",
            "10.0.0.1",
            "--out",
            str(out),
            CERTMGR_POLICY_DIR=str(policies),
        )
    )
    assert "policy short" in result.stdout
    leaf = x509.load_pem_x509_certificate((out / f"{TOKEN}.pem").read_bytes())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days in (30, 31)
