"""Leaf certificates: extensions per key type, serials, validity (backdate, clip, refuse), AKI."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from certmgr.errors import IssuanceError
from certmgr.pki.ca import CADefinition, CAHierarchyDefinition, build_issuing, build_root
from certmgr.pki.keys import generate_private_key, public_keys_match
from certmgr.pki.leaf import LeafSpec, build_leaf, issue_key_and_leaf
from certmgr.pki.store import Issuer
from certmgr.pki.types import KeyType

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
ISSUING_DAYS = 1825
SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phone-001ae8123456")])
IP = ipaddress.ip_address("192.0.2.10")
IP6 = ipaddress.ip_address("2001:db8::10")


def _issuer(ca_key: KeyType = KeyType.EC_P256) -> Issuer:
    def level(cn: str, days: int, path_length: int) -> CADefinition:
        return CADefinition(cn, "Test Org", None, "DE", ca_key, timedelta(days=days), path_length)

    defn = CAHierarchyDefinition(level("Root", 3650, 1), level("Issuing", ISSUING_DAYS, 0))
    root_key, root = build_root(defn, NOW)
    key, cert = build_issuing(defn, root_key, root, NOW)
    return Issuer(cert=cert, key=key, chain=(cert,), root=root)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return _issuer()


def _spec(**overrides: object) -> LeafSpec:
    values: dict[str, object] = {
        "subject": SUBJECT,
        "dns_names": ("phone-001ae8123456.example.net",),
        "ip_addresses": (IP, IP6),
        "validity": timedelta(days=365),
    }
    values.update(overrides)
    return LeafSpec(**values)  # type: ignore[arg-type]


def _value(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_leaf_extensions_exactly(issuer: Issuer, key_type: KeyType) -> None:
    key, cert = issue_key_and_leaf(_spec(), key_type, issuer, NOW + timedelta(days=1))

    assert cert.version is x509.Version.v3
    assert public_keys_match(key, cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.issuer == issuer.cert.subject
    assert cert.subject == SUBJECT
    cert.verify_directly_issued_by(issuer.cert)

    assert {ext.oid for ext in cert.extensions} == {
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }

    san = _value(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert isinstance(san.value, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["phone-001ae8123456.example.net"]
    assert san.value.get_values_for_type(x509.IPAddress) == [IP, IP6]

    usage = _value(cert, x509.KeyUsage)
    assert usage.critical
    expected = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_type.is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    assert usage.value == expected

    eku = _value(cert, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]

    basic = _value(cert, x509.BasicConstraints)
    assert basic.critical
    assert basic.value == x509.BasicConstraints(ca=False, path_length=None)

    ski = _value(cert, x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = _value(cert, x509.AuthorityKeyIdentifier).value
    issuer_ski = _value(issuer.cert, x509.SubjectKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(issuer_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == issuer_ski.digest


def test_rsa_issuing_ca_signs_with_sha256() -> None:
    rsa_issuer = _issuer(KeyType.RSA_2048)
    _, cert = issue_key_and_leaf(_spec(), KeyType.EC_P256, rsa_issuer, NOW)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(rsa_issuer.cert)


def test_serials_positive_random_at_least_64_bits(issuer: Issuer) -> None:
    public_key = generate_private_key(KeyType.EC_P256).public_key()
    serials = [build_leaf(_spec(), public_key, issuer, NOW).serial_number for _ in range(200)]
    assert all(s > 0 for s in serials)
    assert all(s.bit_length() >= 64 for s in serials)
    assert all(s.bit_length() <= 159 for s in serials)
    assert len(set(serials)) == len(serials)


def test_explicit_serial(issuer: Issuer) -> None:
    public_key = generate_private_key(KeyType.EC_P256).public_key()
    assert build_leaf(_spec(), public_key, issuer, NOW, serial=0x1234567890ABCDEF1).serial_number == (
        0x1234567890ABCDEF1
    )
    for bad in (0, -1, 2**159):
        with pytest.raises(IssuanceError, match="serial"):
            build_leaf(_spec(), public_key, issuer, NOW, serial=bad)


def test_validity_backdated_five_minutes(issuer: Issuer) -> None:
    now = NOW + timedelta(days=3, microseconds=777)
    _, cert = issue_key_and_leaf(_spec(), KeyType.EC_P256, issuer, now)
    assert cert.not_valid_before_utc == now.replace(microsecond=0) - timedelta(minutes=5)
    assert cert.not_valid_after_utc == now.replace(microsecond=0) + timedelta(days=365)


def test_backdate_never_before_issuer(issuer: Issuer) -> None:
    _, cert = issue_key_and_leaf(_spec(), KeyType.EC_P256, issuer, issuer.cert.not_valid_before_utc)
    assert cert.not_valid_before_utc == issuer.cert.not_valid_before_utc


def test_refuse_beyond_issuing_ca(issuer: Issuer) -> None:
    late = issuer.cert.not_valid_after_utc - timedelta(days=30)
    with pytest.raises(IssuanceError, match=r"certificate validity would end after the issuing CA's \(") as info:
        issue_key_and_leaf(_spec(), KeyType.EC_P256, issuer, late)
    assert info.value.fields["ca_not_after"] == issuer.cert.not_valid_after_utc.isoformat()


def test_clip_to_issuing_ca(issuer: Issuer) -> None:
    late = issuer.cert.not_valid_after_utc - timedelta(days=30)
    _, cert = issue_key_and_leaf(_spec(clip_to_ca=True), KeyType.EC_P256, issuer, late)
    assert cert.not_valid_after_utc == issuer.cert.not_valid_after_utc
    assert cert.not_valid_before_utc == late - timedelta(minutes=5)


def test_exactly_at_issuer_end_is_not_clipped(issuer: Issuer) -> None:
    validity = timedelta(days=100)
    now = issuer.cert.not_valid_after_utc - validity
    _, cert = issue_key_and_leaf(_spec(validity=validity), KeyType.EC_P256, issuer, now)
    assert cert.not_valid_after_utc == issuer.cert.not_valid_after_utc


def test_issuer_not_valid_now(issuer: Issuer) -> None:
    for when in (issuer.cert.not_valid_before_utc - timedelta(seconds=1), issuer.cert.not_valid_after_utc):
        with pytest.raises(IssuanceError, match="not valid now"):
            issue_key_and_leaf(_spec(clip_to_ca=True), KeyType.EC_P256, issuer, when)


def test_no_san_refused(issuer: Issuer) -> None:
    with pytest.raises(IssuanceError, match="at least one DNS name or IP address"):
        issue_key_and_leaf(_spec(dns_names=(), ip_addresses=()), KeyType.EC_P256, issuer, NOW)


def test_ip_only_san(issuer: Issuer) -> None:
    _, cert = issue_key_and_leaf(_spec(dns_names=(), ip_addresses=(IP,)), KeyType.EC_P256, issuer, NOW)
    san = _value(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.IPAddress) == [IP]
    assert san.get_values_for_type(x509.DNSName) == []


def test_empty_subject_makes_san_critical(issuer: Issuer) -> None:
    _, cert = issue_key_and_leaf(_spec(subject=x509.Name([])), KeyType.EC_P256, issuer, NOW)
    assert len(cert.subject) == 0
    assert _value(cert, x509.SubjectAlternativeName).critical


def test_non_positive_validity_refused(issuer: Issuer) -> None:
    with pytest.raises(IssuanceError, match="positive"):
        issue_key_and_leaf(_spec(validity=timedelta(0)), KeyType.EC_P256, issuer, NOW)


def test_unsupported_public_key_refused(issuer: Issuer) -> None:
    public_key = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(IssuanceError, match="unsupported key algorithm"):
        build_leaf(_spec(), public_key, issuer, NOW)  # type: ignore[arg-type]


def test_leaf_spec_is_frozen() -> None:
    spec = _spec()
    with pytest.raises(AttributeError):
        spec.validity = timedelta(days=1)  # type: ignore[misc]
