"""The CRL end to end: revocations through the API, ``GET /api/v1/ca/crl`` checked by openssl and cryptography,
monotonic CRL numbers, lazy re-signing, ``GET /api/v1/ca/status`` and ``certmgr crl``."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from certmgr.clock import ManualClock
from certmgr.db.models import AuditEvent, Certificate
from certmgr.deploy.reconcile import Reconciler
from certmgr.runtime import Runtime
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    auth,
    ca_template,
    client,
    rt,
    tokens,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def _leaf(rt: Runtime, client: TestClient, token: str, mac: str, ip: str) -> Certificate:
    r = client.post("/api/v1/devices", json={"mac": mac, "ip": ip}, headers=auth(token))
    assert r.status_code == 201, r.text
    Reconciler(rt).run(rt.clock.now())
    with Session(rt.engine) as s:
        return s.exec(select(Certificate).where(col(Certificate.device_id) == r.json()["id"])).one()


def _crl(client: TestClient) -> x509.CertificateRevocationList:
    r = client.get("/api/v1/ca/crl")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(r.content)


def _number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30, check=False)


@needs_openssl
def test_crl_verifies_with_openssl(rt: Runtime, client: TestClient, tokens: dict[str, str], tmp_path: Path) -> None:
    good = _leaf(rt, client, tokens["operator"], "00:1A:E8:00:01:01", "10.0.1.1")
    bad = _leaf(rt, client, tokens["operator"], "00:1A:E8:00:01:02", "10.0.1.2")
    r = client.post(
        f"/api/v1/certificates/{bad.id}/revoke", json={"reason": "keyCompromise"}, headers=auth(tokens["admin"])
    )
    assert r.status_code == 200, r.text
    der = client.get("/api/v1/ca/crl").content
    info = rt.ca_store.load_public()
    assert info.root_cert is not None
    files = {
        "crl.der": der,
        "crl.pem": x509.load_der_x509_crl(der).public_bytes(Encoding.PEM),
        "root.pem": info.root_cert.public_bytes(Encoding.PEM),
        "issuing.pem": info.issuing_cert.public_bytes(Encoding.PEM),
        "chain.pem": info.issuing_cert.public_bytes(Encoding.PEM) + info.root_cert.public_bytes(Encoding.PEM),
        "good.pem": good.cert_pem.encode(),
        "bad.pem": bad.cert_pem.encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    p = {name: str(tmp_path / name) for name in files}
    checked = _openssl("crl", "-inform", "DER", "-in", p["crl.der"], "-CAfile", p["chain.pem"], "-noout")
    assert checked.returncode == 0, checked.stderr
    assert "verify OK" in checked.stderr + checked.stdout
    at = str(int((rt.clock.now() + timedelta(hours=1)).timestamp()))
    base = ["verify", "-attime", at, "-crl_check", "-CAfile", p["root.pem"], "-untrusted", p["issuing.pem"]]
    accepted = _openssl(*base, "-CRLfile", p["crl.pem"], p["good.pem"])
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    rejected = _openssl(*base, "-CRLfile", p["crl.pem"], p["bad.pem"])
    assert rejected.returncode != 0
    assert "revoked" in (rejected.stdout + rejected.stderr).lower()
    text = _openssl("crl", "-inform", "DER", "-in", p["crl.der"], "-noout", "-text").stdout
    assert "Key Compromise" in text
    assert "X509v3 CRL Number" in text
    assert "X509v3 Authority Key Identifier" in text
    assert "sha256WithRSAEncryption" in text


def test_crl_numbers_grow_and_lazy_refresh(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    first = _crl(client)  # no CRL yet: signed on the way
    assert len(first) == 0
    assert _number(_crl(client)) == _number(first)  # unchanged: not re-signed
    assert first.next_update_utc is not None
    assert first.next_update_utc - first.last_update_utc == timedelta(days=7)
    leaf = _leaf(rt, client, tokens["operator"], "00:1A:E8:00:01:03", "10.0.1.3")
    r = client.post(
        f"/api/v1/certificates/{leaf.id}/revoke", json={"reason": "superseded"}, headers=auth(tokens["admin"])
    )
    assert r.json()["crl_number"] == _number(first) + 1
    second = _crl(client)
    assert _number(second) == _number(first) + 1
    entry = second.get_revoked_certificate_by_serial_number(int(leaf.serial, 16))
    assert entry is not None
    assert entry.revocation_date_utc == rt.clock.now()
    assert isinstance(rt.clock, ManualClock)
    rt.clock.advance(timedelta(days=4))  # 3 days left: still fresh (refresh 48 h before nextUpdate)
    assert _number(_crl(client)) == _number(second)
    rt.clock.advance(timedelta(days=1, hours=1))  # less than 48 h left: re-signed on request
    third = _crl(client)
    assert _number(third) == _number(second) + 1
    assert third.last_update_utc == rt.clock.now()
    assert [r.serial_number for r in third] == [int(leaf.serial, 16)]
    with Session(rt.engine) as s:
        published = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "crl.published")).all()
    assert [e.details["number"] for e in published] == [1, 2, 3]


def test_crl_is_public_and_status_is_viewer(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    assert client.get("/api/v1/ca/status").status_code == 401
    before = client.get("/api/v1/ca/status", headers=auth(tokens["viewer"]))
    assert before.status_code == 200
    body = before.json()
    assert body["crl"] is None
    roles = [c["role"] for c in body["chain"]]
    assert roles == ["issuing", "root"]
    info = rt.ca_store.load_public()
    issuing = body["chain"][0]
    assert issuing["fingerprint_sha256"] == info.issuing_fingerprint_sha256
    assert issuing["subject"] == info.issuing_subject
    assert issuing["days_left"] == (info.not_after - rt.clock.now()).days
    assert "PRIVATE" not in before.text
    crl = _crl(client)
    after = client.get("/api/v1/ca/status", headers=auth(tokens["admin"])).json()
    assert after["crl"]["number"] == _number(crl)
    assert after["crl"]["entries"] == 0
    assert after["crl"]["stale"] is False
    assert crl.next_update_utc is not None
    assert after["crl"]["next_update"].startswith(crl.next_update_utc.strftime("%Y-%m-%dT%H:%M:%S"))


def test_crl_cli(rt: Runtime, client: TestClient, tmp_path: Path) -> None:
    from certmgr.cli.main import app

    runner = CliRunner()
    out = tmp_path / "issuing.crl"
    result = runner.invoke(app, ["crl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "CRL number 1" in result.output
    crl = x509.load_der_x509_crl(out.read_bytes())
    assert _number(crl) == 1
    forced = runner.invoke(app, ["crl", "--out", str(tmp_path / "issuing.pem"), "--pem", "--force"])
    assert forced.exit_code == 0, forced.output
    assert _number(x509.load_pem_x509_crl((tmp_path / "issuing.pem").read_bytes())) == 2
    assert _number(_crl(client)) == 2  # the API serves the same store
