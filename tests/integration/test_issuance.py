"""issue_to_files on SQLite and PostgreSQL: files and database row appear together or not at all."""

from __future__ import annotations

import ipaddress
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlmodel import Session, col, select

from certmgr.audit.log import verify_log
from certmgr.clock import ManualClock
from certmgr.db.models import AuditEvent, Certificate, CertificateStatus, Device
from certmgr.errors import CAPassphraseError, InputError, StorageError
from certmgr.issuance.service import IssueResult, issue_to_files, load_key
from certmgr.pki.ca import load_ca_definition
from certmgr.pki.keys import fingerprint_sha256, public_keys_match
from certmgr.pki.store import CAStore
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from tests.conftest import REPO, T0

MAC = "00:1A:E8:12:34:56"


@pytest.fixture(scope="module")
def template_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA per module (RSA-4096 is slow), copied into each test's data dir."""
    ca_dir = tmp_path_factory.mktemp("template") / "ca"
    definition = load_ca_definition(REPO / "ca" / "ca.toml")
    CAStore(ca_dir).initialise(definition, b"test-passphrase-not-secret", T0)
    return ca_dir


@pytest.fixture
def runtime(settings: Settings, db_url: str, template_ca: Path, clock: ManualClock) -> Iterator[Runtime]:
    shutil.copytree(template_ca, settings.data_dir / "ca")
    rt = open_runtime(settings.model_copy(update={"database_url": db_url}), clock)
    try:
        yield rt
    finally:
        rt.close()


def _issue(runtime: Runtime, out_dir: Path, **kw: object) -> IssueResult:
    args: dict[str, object] = {
        "mac": MAC,
        "ips": ["10.1.2.3"],
        "dns_names": [],
        "out_dir": out_dir,
        "actor": "cli",
    } | kw
    return issue_to_files(runtime, **args)  # type: ignore[arg-type]


def _counts(runtime: Runtime) -> tuple[int, int]:
    with Session(runtime.engine) as s:
        certs = len(list(s.exec(select(Certificate))))
        issued = len(list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == "certificate.issued"))))
    return certs, issued


def test_issue_writes_files_records_row_and_audit_event(runtime: Runtime, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = issue_to_files(
        runtime, mac="00-1a-e8-12-34-56", ips=["10.1.2.3"], dns_names=["phone1.example.net"], out_dir=out, actor="cli"
    )
    token = "001ae8123456"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{token}.pem", f"{token}.p12", "chain.pem"])
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate((out / f"{token}.pem").read_bytes())
    issuer = runtime.issuer()
    leaf.verify_directly_issued_by(issuer.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert "phone1.example.net" in san.get_values_for_type(x509.DNSName)
    key, cert, _extra = pkcs12.load_key_and_certificates((out / f"{token}.p12").read_bytes(), None)
    assert cert == leaf
    assert key is not None
    assert public_keys_match(key, leaf)  # type: ignore[arg-type]
    assert x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())[0] == issuer.cert
    assert result.serial == format(leaf.serial_number, "x")

    with Session(runtime.engine) as s:
        row = s.exec(select(Certificate)).one()
        device = s.exec(select(Device)).one()
        assert device.mac == MAC
        assert device.current_certificate_id == row.id
        assert row.status is CertificateStatus.ACTIVE
        assert row.fingerprint_sha256 == fingerprint_sha256(leaf)
        assert row.issuer_fingerprint == fingerprint_sha256(issuer.cert)
        assert row.policy_name == "default"
        assert b"PRIVATE KEY" not in row.key_blob
        assert public_keys_match(load_key(runtime.vault, row), leaf)
        event = s.exec(select(AuditEvent).where(col(AuditEvent.action) == "certificate.issued")).one()
        assert event.subject_id == row.serial
        assert event.details["mac"] == MAC
        assert event.details["sha256"] == row.fingerprint_sha256
        assert verify_log(s).ok


def test_unwritable_out_dir_rolls_back_the_row(runtime: Runtime, tmp_path: Path) -> None:
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    with pytest.raises(StorageError):
        _issue(runtime, blocker / "out")
    assert _counts(runtime) == (0, 0)
    with Session(runtime.engine) as s:
        assert list(s.exec(select(Device))) == []
        assert verify_log(s).ok
    # The chain continues without a gap after the rolled-back transaction.
    _issue(runtime, tmp_path / "ok")
    assert _counts(runtime) == (1, 1)
    with Session(runtime.engine) as s:
        assert verify_log(s).ok


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"mac": "00:1A:E8:12:34"}, "invalid MAC"),
        ({"ips": ["10.1.2.300"]}, "invalid IP"),
        ({"ips": []}, "at least one --ip"),
        ({"dns_names": ["bad_name"]}, "invalid DNS"),
        ({"policy_name": "no-such-policy"}, "unknown policy"),
    ],
)
def test_bad_input_writes_nothing(runtime: Runtime, tmp_path: Path, kw: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        _issue(runtime, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()
    assert _counts(runtime) == (0, 0)


def test_issue_with_root_key_offline(runtime: Runtime, tmp_path: Path) -> None:
    (runtime.ca_store.ca_dir / "root.key").unlink()
    _issue(runtime, tmp_path / "out")
    leaf = x509.load_pem_x509_certificate((tmp_path / "out" / "001ae8123456.pem").read_bytes())
    leaf.verify_directly_issued_by(runtime.issuer().cert)
    assert _counts(runtime) == (1, 1)


def test_wrong_passphrase_is_clear_and_writes_nothing(runtime: Runtime, tmp_path: Path, clock: ManualClock) -> None:
    from pydantic import SecretStr

    s = runtime.settings.model_copy(update={"ca_passphrase": SecretStr("wrong")})
    rt = open_runtime(s, clock)
    try:
        with pytest.raises(CAPassphraseError, match="cannot decrypt the CA key: wrong passphrase"):
            _issue(rt, tmp_path / "out")
        assert not (tmp_path / "out").exists()
        assert _counts(rt) == (0, 0)
    finally:
        rt.close()


def test_reissue_links_previous_certificate(runtime: Runtime, tmp_path: Path) -> None:
    _issue(runtime, tmp_path / "a")
    _issue(runtime, tmp_path / "b")
    with Session(runtime.engine) as s:
        first, second = s.exec(select(Certificate).order_by(col(Certificate.id))).all()
        device = s.exec(select(Device)).one()
        assert second.previous_certificate_id == first.id
        assert device.current_certificate_id == second.id
        assert first.serial != second.serial
        assert verify_log(s).ok
