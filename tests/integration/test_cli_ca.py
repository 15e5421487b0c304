"""``certmgr ca init | show | import`` through the real console script."""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certmgr.pki.keys import ENCRYPTED_KEY_PEM_HEADER, PLAINTEXT_KEY_PEM_HEADERS, fingerprint_sha256
from tests.integration.test_cli_support import (
    assert_one_line_error,
    copy_data_dir,
    count_rows,
    init_template,
    ok,
    run_cli,
    snapshot,
)

ENTERPRISE_PASSWORD = "enterprise-test-password"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_template(tmp_path_factory.mktemp("cli-ca"))


def _certs(data_dir: Path) -> dict[str, x509.Certificate]:
    ca = data_dir / "ca"
    return {n: x509.load_pem_x509_certificate((ca / f"{n}.pem").read_bytes()) for n in ("root", "issuing")}


# --- ca init ------------------------------------------------------------------------------------------------
def test_ca_init_creates_root_and_issuing_with_encrypted_private_keys(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    result = ok(run_cli(data_dir, "ca", "init"))
    ca = data_dir / "ca"
    for name in ("root.pem", "root.key", "issuing.pem", "issuing.key", "chain.pem"):
        assert stat.S_IMODE((ca / name).stat().st_mode) == 0o600, name
    for key in ("root.key", "issuing.key"):
        pem = (ca / key).read_bytes()
        assert pem.startswith(ENCRYPTED_KEY_PEM_HEADER)
        assert not any(header in pem for header in PLAINTEXT_KEY_PEM_HEADERS)
        with pytest.raises(TypeError):  # needs a password
            serialization.load_pem_private_key(pem, None)
    certs = _certs(data_dir)
    certs["issuing"].verify_directly_issued_by(certs["root"])
    assert certs["root"].subject.rfc4514_string() in result.stdout
    # First start: the generated passphrase (0600, in the data dir) is announced, and it opens the key.
    pp_file = data_dir / "ca-passphrase"
    assert stat.S_IMODE(pp_file.stat().st_mode) == 0o600
    assert str(pp_file) in result.stderr
    serialization.load_pem_private_key((ca / "issuing.key").read_bytes(), pp_file.read_text().strip().encode())
    assert count_rows(data_dir, "ca") == 2
    assert count_rows(data_dir, "audit_event", "WHERE action = 'ca.registered'") == 2


def test_ca_init_twice_is_refused_without_force(template: Path, tmp_path: Path) -> None:
    data_dir = copy_data_dir(template, tmp_path / "var")
    before = snapshot(data_dir)
    result = run_cli(data_dir, "ca", "init")
    assert_one_line_error(result, 9, "a CA already exists", "force")
    assert snapshot(data_dir) == before
    assert count_rows(data_dir, "ca") == 2


def test_ca_init_force_replaces_the_ca(template: Path, tmp_path: Path) -> None:
    data_dir = copy_data_dir(template, tmp_path / "var")
    old = _certs(data_dir)
    ok(run_cli(data_dir, "ca", "init", "--force"))
    new = _certs(data_dir)
    assert fingerprint_sha256(new["issuing"]) != fingerprint_sha256(old["issuing"])
    assert fingerprint_sha256(new["root"]) != fingerprint_sha256(old["root"])
    new["issuing"].verify_directly_issued_by(new["root"])
    assert count_rows(data_dir, "ca", "WHERE active") == 2
    assert count_rows(data_dir, "ca", "WHERE NOT active") == 2


# --- ca show ------------------------------------------------------------------------------------------------
def test_ca_show_prints_subjects_fingerprints_validity_and_days_left(template: Path, tmp_path: Path) -> None:
    data_dir = copy_data_dir(template, tmp_path / "var")
    result = ok(run_cli(data_dir, "ca", "show"))
    now = datetime.now(UTC)
    for cert in _certs(data_dir).values():
        assert cert.subject.rfc4514_string() in result.stdout
        assert fingerprint_sha256(cert) in result.stdout
        assert cert.not_valid_before_utc.isoformat() in result.stdout
        assert cert.not_valid_after_utc.isoformat() in result.stdout
    days = [int(d) for d in re.findall(r"days left:\s+(\d+)", result.stdout)]
    expected = sorted((c.not_valid_after_utc - now).days for c in _certs(data_dir).values())
    assert len(days) == 2
    for got, want in zip(sorted(days), expected, strict=True):
        assert abs(got - want) <= 1  # the day may roll over between the run and this check


def test_ca_show_without_ca_is_a_clear_error(tmp_path: Path) -> None:
    assert_one_line_error(run_cli(tmp_path / "var", "ca", "show"), 5, "no CA")


# --- ca import ----------------------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enterprise Test"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    path_length: int,
) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def enterprise(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | x509.Certificate]:
    """An enterprise root and issuing CA built here, exported as PKCS#12 and as PEM key + chain."""
    folder = tmp_path_factory.mktemp("enterprise")
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _ca_cert(_name("Enterprise Root"), _name("Enterprise Root"), root_key, root_key, 1)
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    issuing = _ca_cert(_name("Enterprise Phones CA"), root.subject, issuing_key, root_key, 0)
    password = ENTERPRISE_PASSWORD.encode()
    (folder / "pw").write_text(ENTERPRISE_PASSWORD + "\n")
    (folder / "ca.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"issuing", issuing_key, issuing, [root], serialization.BestAvailableEncryption(password)
        )
    )
    (folder / "key.pem").write_bytes(
        issuing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    (folder / "chain.pem").write_bytes(
        issuing.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM)
    )
    return {"dir": folder, "root": root, "issuing": issuing}


def _check_imported_and_issue(data_dir: Path, tmp_path: Path, enterprise: dict[str, Path | x509.Certificate]) -> None:
    issuing = enterprise["issuing"]
    assert isinstance(issuing, x509.Certificate)
    stored = x509.load_pem_x509_certificate((data_dir / "ca" / "issuing.pem").read_bytes())
    assert stored == issuing
    key_pem = (data_dir / "ca" / "issuing.key").read_bytes()
    assert key_pem.startswith(ENCRYPTED_KEY_PEM_HEADER)
    assert not (data_dir / "ca" / "root.key").exists()
    assert count_rows(data_dir, "ca", "WHERE imported AND active") >= 1
    assert count_rows(data_dir, "audit_event", "WHERE action = 'ca.imported'") >= 1
    out = tmp_path / "out"
    ok(run_cli(data_dir, "issue", "--mac", "00:1A:E8:AA:BB:CC", "--ip", "10.9.8.7", "--out", str(out)))
    leaf = x509.load_pem_x509_certificate((out / "001ae8aabbcc.pem").read_bytes())
    assert leaf.issuer == issuing.subject
    leaf.verify_directly_issued_by(issuing)
    chain = x509.load_pem_x509_certificates((out / "chain.pem").read_bytes())
    assert chain[0] == issuing


def test_ca_import_pkcs12_then_issue(tmp_path: Path, enterprise: dict[str, Path | x509.Certificate]) -> None:
    folder = enterprise["dir"]
    assert isinstance(folder, Path)
    data_dir = tmp_path / "var"
    result = ok(
        run_cli(data_dir, "ca", "import", "--p12", str(folder / "ca.p12"), "--password-file", str(folder / "pw"))
    )
    assert "Enterprise Phones CA" in result.stdout
    assert ENTERPRISE_PASSWORD not in result.stdout + result.stderr
    _check_imported_and_issue(data_dir, tmp_path, enterprise)


def test_ca_import_key_and_chain_then_issue(tmp_path: Path, enterprise: dict[str, Path | x509.Certificate]) -> None:
    folder = enterprise["dir"]
    assert isinstance(folder, Path)
    data_dir = tmp_path / "var"
    ok(
        run_cli(
            data_dir,
            "ca",
            "import",
            "--key",
            str(folder / "key.pem"),
            "--chain",
            str(folder / "chain.pem"),
            "--password-file",
            str(folder / "pw"),
        )
    )
    _check_imported_and_issue(data_dir, tmp_path, enterprise)


def test_ca_import_over_existing_ca_needs_force(
    template: Path, tmp_path: Path, enterprise: dict[str, Path | x509.Certificate]
) -> None:
    folder = enterprise["dir"]
    assert isinstance(folder, Path)
    data_dir = copy_data_dir(template, tmp_path / "var")
    args = ["ca", "import", "--p12", str(folder / "ca.p12"), "--password-file", str(folder / "pw")]
    before = snapshot(data_dir)
    assert_one_line_error(run_cli(data_dir, *args), 9, "a CA already exists")
    assert snapshot(data_dir) == before
    ok(run_cli(data_dir, *args, "--force"))
    _check_imported_and_issue(data_dir, tmp_path, enterprise)
    assert count_rows(data_dir, "ca", "WHERE NOT active") == 2  # the replaced root + issuing


def test_ca_import_wrong_password(tmp_path: Path, enterprise: dict[str, Path | x509.Certificate]) -> None:
    folder = enterprise["dir"]
    assert isinstance(folder, Path)
    (tmp_path / "bad-pw").write_text("nope\n")
    data_dir = tmp_path / "var"
    result = run_cli(
        data_dir,
        "ca",
        "import",
        "--p12",
        str(folder / "ca.p12"),
        "--password-file",
        str(tmp_path / "bad-pw"),
        CERTMGR_CA_PASSPHRASE="configured-passphrase",  # nothing to generate: stderr holds only the error
        CERTMGR_MASTER_KEY="configured-master-key-0123456789",
    )
    assert_one_line_error(result, 4, "cannot open the PKCS#12")
    assert not (data_dir / "ca").exists()


def test_ca_import_needs_p12_or_key_and_chain(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "var", "ca", "import", "--key", str(tmp_path / "k.pem"))
    assert_one_line_error(result, 4, "--p12", "--chain")
