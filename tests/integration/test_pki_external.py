"""Independent checkers for the PKI: pkilint (RFC 5280), the openssl CLI and Python's ssl module.

Nothing here is skipped: a missing openssl binary or pkilint entry point fails the tests with a clear message.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

from certmgr.pki.ca import CADefinition, CAHierarchyDefinition, load_ca_definition
from certmgr.pki.keys import PrivateKey, encrypt_private_key_pem, generate_private_key
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.pkcs12 import build_pkcs12
from certmgr.pki.store import CAStore, Issuer
from certmgr.pki.types import KeyType, Pkcs12Profile

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
LEAF_TIME = NOW + timedelta(days=1)
TEST_PASSWORD = "test-password-not-secret"
CA_PASSPHRASE = b"ca-test-passphrase"
SHIPPED_DEFINITION = Path(__file__).resolve().parents[2] / "ca" / "ca.toml"
SPEC = LeafSpec(
    subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phone-001ae8123456")]),
    dns_names=("phone-001ae8123456.example.net",),
    ip_addresses=(ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("2001:db8::10")),
    validity=timedelta(days=365),
)


# --- tools --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the openssl CLI is required for these tests but was not found on PATH (install openssl)")
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


_RFC5280_LINTER = certificate.create_pkix_certificate_validator_container(
    certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
    [
        certificate.create_issuer_validator_container([]),
        certificate.create_validity_validator_container(),
        certificate.create_subject_validator_container([]),
        certificate.create_extensions_validator_container([]),
        certificate.create_spki_validator_container([]),
    ],
)


def lint_errors(cert: x509.Certificate) -> list[str]:
    """Findings of severity ERROR or worse from pkilint's RFC 5280 linter (what ``lint_pkix_cert`` runs)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
    results = _RFC5280_LINTER.validate(document.root)
    return [
        f"{finding.finding.code} ({finding.finding.severity.name}) {finding.message or ''}"
        for result in results
        for finding in result.finding_descriptions
        if finding.finding.severity <= ValidationFindingSeverity.ERROR
    ]


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# --- CAs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CA:
    issuer: Issuer
    root: x509.Certificate


def _ec_definition() -> CAHierarchyDefinition:
    def level(cn: str, days: int, path_length: int) -> CADefinition:
        return CADefinition(cn, "Example Corp", "UC", "DE", KeyType.EC_P384, timedelta(days=days), path_length)

    return CAHierarchyDefinition(level("EC Test Root", 7300, 1), level("EC Test Issuing", 1825, 0))


@pytest.fixture(scope="module", params=["shipped-ca-toml", "ec-p384"])
def ca(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CA:
    defn = load_ca_definition(SHIPPED_DEFINITION) if request.param == "shipped-ca-toml" else _ec_definition()
    store = CAStore(tmp_path_factory.mktemp("ca"))
    store.initialise(defn, CA_PASSPHRASE, NOW)
    (store.ca_dir / "root.key").unlink()  # issue with the root offline, as in production
    issuer = store.load_issuer(CA_PASSPHRASE)
    assert issuer.root is not None
    return CA(issuer=issuer, root=issuer.root)


@pytest.fixture(scope="module")
def leaves(ca: CA) -> dict[KeyType, tuple[PrivateKey, x509.Certificate]]:
    return {key_type: issue_key_and_leaf(SPEC, key_type, ca.issuer, LEAF_TIME) for key_type in KeyType}


# --- pkilint ------------------------------------------------------------------------------------------------
def test_pkilint_harness_detects_errors() -> None:
    """The lint helper must be able to fail: an empty subject with a non-critical SAN violates RFC 5280."""
    key = generate_private_key(KeyType.EC_P256)
    bad = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    assert lint_errors(bad)


def test_pkilint_ca_certificates(ca: CA) -> None:
    assert lint_errors(ca.root) == []
    assert lint_errors(ca.issuer.cert) == []


@pytest.mark.parametrize("key_type", list(KeyType))
def test_pkilint_leaf(leaves: dict[KeyType, tuple[PrivateKey, x509.Certificate]], key_type: KeyType) -> None:
    assert lint_errors(leaves[key_type][1]) == []


def test_pkilint_leaf_with_empty_subject(ca: CA) -> None:
    spec = LeafSpec(subject=x509.Name([]), dns_names=(), ip_addresses=SPEC.ip_addresses, validity=SPEC.validity)
    _, cert = issue_key_and_leaf(spec, KeyType.RSA_2048, ca.issuer, LEAF_TIME)
    assert lint_errors(cert) == []


def test_pkilint_cli_signer_signee_pairs(
    ca: CA, leaves: dict[KeyType, tuple[PrivateKey, x509.Certificate]], tmp_path: Path
) -> None:
    """``lint_pkix_signer_signee_cert_chain``: issuer DN, AKI/SKI and signature of each link."""
    cli = Path(sys.executable).parent / "lint_pkix_signer_signee_cert_chain"
    if not cli.exists():
        pytest.fail(f"pkilint's CLI {cli} is missing; install the dev extras (pip install -e '.[dev]')")
    pairs = [(ca.root, ca.issuer.cert)] + [(ca.issuer.cert, cert) for _, cert in leaves.values()]
    for index, (signer, signee) in enumerate(pairs):
        signer_file, signee_file = tmp_path / f"signer{index}.pem", tmp_path / f"signee{index}.pem"
        signer_file.write_bytes(_pem(signer))
        signee_file.write_bytes(_pem(signee))
        result = _run([str(cli), "lint", "-s", "ERROR", str(signer_file), str(signee_file)])
        assert result.returncode == 0, result.stdout + result.stderr


# --- openssl verify -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", list(KeyType))
def test_openssl_verify(
    openssl: str,
    ca: CA,
    leaves: dict[KeyType, tuple[PrivateKey, x509.Certificate]],
    key_type: KeyType,
    tmp_path: Path,
) -> None:
    (tmp_path / "root.pem").write_bytes(_pem(ca.root))
    (tmp_path / "issuing.pem").write_bytes(_pem(ca.issuer.cert))
    (tmp_path / "leaf.pem").write_bytes(_pem(leaves[key_type][1]))
    at_time = str(int((LEAF_TIME + timedelta(hours=1)).timestamp()))
    verify = [openssl, "verify", "-attime", at_time, "-purpose", "sslserver", "-x509_strict"]
    root_file, issuing_file, leaf_file = (str(tmp_path / n) for n in ("root.pem", "issuing.pem", "leaf.pem"))
    result = _run([*verify, "-CAfile", root_file, "-untrusted", issuing_file, leaf_file])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")

    # The check can fail: without the issuing CA the chain is incomplete.
    broken = _run([*verify, "-CAfile", root_file, leaf_file])
    assert broken.returncode != 0


def test_openssl_verify_offline_root_chain_file(openssl: str, ca: CA, tmp_path: Path) -> None:
    """The CA's own files: chain.pem's certificates verify under root.pem."""
    (tmp_path / "root.pem").write_bytes(_pem(ca.root))
    (tmp_path / "issuing.pem").write_bytes(_pem(ca.issuer.cert))
    at_time = str(int(LEAF_TIME.timestamp()))
    root_file, issuing_file = str(tmp_path / "root.pem"), str(tmp_path / "issuing.pem")
    result = _run([openssl, "verify", "-attime", at_time, "-CAfile", root_file, issuing_file])
    assert result.returncode == 0, result.stdout + result.stderr


# --- Python ssl ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", list(KeyType))
def test_python_ssl_loads_chain_and_key(
    ca: CA, leaves: dict[KeyType, tuple[PrivateKey, x509.Certificate]], key_type: KeyType, tmp_path: Path
) -> None:
    key, cert = leaves[key_type]
    cert_file, key_file = tmp_path / "fullchain.pem", tmp_path / "key.pem"
    cert_file.write_bytes(_pem(cert, *ca.issuer.chain))
    key_file.write_bytes(encrypt_private_key_pem(key, TEST_PASSWORD.encode()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file, password=TEST_PASSWORD)

    other_key, _ = leaves[KeyType.EC_P256 if key_type is not KeyType.EC_P256 else KeyType.RSA_2048]
    key_file.write_bytes(encrypt_private_key_pem(other_key, TEST_PASSWORD.encode()))
    with pytest.raises(ssl.SSLError):  # the check can fail: a key that does not match
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file, password=TEST_PASSWORD)


# --- PKCS#12 with openssl -----------------------------------------------------------------------------------
def _pkcs12_info(openssl: str, tmp_path: Path, data: bytes, profile: Pkcs12Profile) -> str:
    p12 = tmp_path / f"{profile.value}.p12"
    p12.write_bytes(data)
    args = [openssl, "pkcs12", "-info", "-nokeys", "-in", str(p12)]
    if profile is Pkcs12Profile.PLAIN:
        args += ["-passin", "pass:"]
    else:
        password_file = tmp_path / "p12-password.txt"
        password_file.write_text(TEST_PASSWORD + "\n", encoding="utf-8")
        args += ["-passin", f"file:{password_file}"]
    if profile is Pkcs12Profile.LEGACY:
        args.append("-legacy")
    result = _run(args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.EC_P256])
@pytest.mark.parametrize("profile", list(Pkcs12Profile))
def test_openssl_opens_pkcs12(
    openssl: str,
    ca: CA,
    leaves: dict[KeyType, tuple[PrivateKey, x509.Certificate]],
    key_type: KeyType,
    profile: Pkcs12Profile,
    tmp_path: Path,
) -> None:
    key, cert = leaves[key_type]
    password = TEST_PASSWORD.encode() if profile.needs_password else None
    data = build_pkcs12(key, cert, ca.issuer.chain, profile, password, b"phone-001ae8123456")
    info = _pkcs12_info(openssl, tmp_path, data, profile)

    assert "friendlyName: phone-001ae8123456" in info
    subjects = [line for line in info.splitlines() if line.startswith("subject=")]
    assert len(subjects) == 2, info  # leaf and issuing CA; D8: no root
    assert "phone-001ae8123456" in subjects[0]
    assert "Issuing" in subjects[1]
    assert "Root" not in "".join(subjects)

    if profile is Pkcs12Profile.PLAIN:
        assert "PKCS7 Encrypted data" not in info
        assert "Shrouded Keybag" not in info
        assert "Key bag" in info
        assert "Certificate bag" in info
        assert "MAC:" in info
    elif profile is Pkcs12Profile.LEGACY:
        assert "MAC: sha1," in info
        assert "PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC" in info
        assert "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC" in info
        # Only openssl's algorithm lines, not the PEM base64 it also prints (which may contain "rc2" by chance).
        algorithms = "\n".join(line for line in info.splitlines() if "Encrypted data:" in line or "Keybag:" in line)
        assert "PBES2" not in algorithms
        assert "RC2" not in algorithms.upper()
    else:
        assert "MAC: sha256," in info
        assert "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC" in info
        assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC" in info
        assert "3-KeyTripleDES" not in info


def test_openssl_rejects_wrong_pkcs12_password(openssl: str, ca: CA, tmp_path: Path) -> None:
    key, cert = issue_key_and_leaf(SPEC, KeyType.RSA_2048, ca.issuer, LEAF_TIME)
    data = build_pkcs12(key, cert, ca.issuer.chain, Pkcs12Profile.MODERN, b"another-password", b"x")
    p12 = tmp_path / "modern.p12"
    p12.write_bytes(data)
    password_file = tmp_path / "p12-password.txt"
    password_file.write_text(TEST_PASSWORD + "\n", encoding="utf-8")
    result = _run([openssl, "pkcs12", "-info", "-nokeys", "-in", str(p12), "-passin", f"file:{password_file}"])
    assert result.returncode != 0
