"""CA definitions (ca.toml) and the CA certificate builders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certmgr.errors import CAError
from certmgr.pki.ca import (
    CADefinition,
    CAHierarchyDefinition,
    build_issuing,
    build_root,
    load_ca_definition,
    parse_duration,
)
from certmgr.pki.keys import key_type_of
from certmgr.pki.types import KeyType

NOW = datetime(2026, 1, 15, 12, 0, 30, 123456, tzinfo=UTC)
SHIPPED = Path(__file__).resolve().parents[2] / "ca" / "ca.toml"

VALID_TOML = """
[root]
common_name = "Test Root"
organization = "Test Org"
country = "DE"
key = "ec-p256"
validity = "3650d"
path_length = 1

[issuing]
common_name = "Test Issuing"
organizational_unit = "UC"
key = "ec-p256"
validity = "1825d"
path_length = 0
"""


def _definition(root_days: int = 3650, issuing_days: int = 1825) -> CAHierarchyDefinition:
    def level(cn: str, days: int, path_length: int) -> CADefinition:
        return CADefinition(cn, "Test Org", None, "DE", KeyType.EC_P256, timedelta(days=days), path_length)

    return CAHierarchyDefinition(root=level("Test Root", root_days, 1), issuing=level("Test Issuing", issuing_days, 0))


def test_shipped_definition_is_valid() -> None:
    defn = load_ca_definition(SHIPPED)
    assert defn.root.validity == timedelta(days=7300)
    assert defn.issuing.validity == timedelta(days=1825)
    assert defn.issuing.path_length == 0
    assert defn.root.path_length == 1
    assert defn.root.key_type in {KeyType.RSA_4096, KeyType.EC_P384}
    assert defn.source == str(SHIPPED)


def test_shipped_definition_comments_every_key() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[index - 1].lstrip().startswith("#"), f"no comment above {line!r}"


def test_load_valid_definition(tmp_path: Path) -> None:
    path = tmp_path / "ca.toml"
    path.write_text(VALID_TOML, encoding="utf-8")
    defn = load_ca_definition(path)
    assert defn.root.subject() == x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Test Root"),
        ]
    )
    assert defn.issuing.organizational_unit == "UC"
    assert defn.issuing.organization is None
    assert defn.issuing.key_type is KeyType.EC_P256


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ('key = "ec-p256"\nvalidity = "3650d"', 'key = "dsa-1024"\nvalidity = "3650d"', "root.key", "one of"),
        ('validity = "1825d"', 'validity = "5y"', "issuing.validity", "duration"),
        ('validity = "1825d"', 'validity = "0d"', "issuing.validity", "positive"),
        ('validity = "1825d"', "validity = 1825", "issuing.validity", "string"),
        ('country = "DE"', 'country = "Germany"', "root.country", "two-letter"),
        ('common_name = "Test Root"', 'common_name = ""', "root.common_name", "non-empty"),
        ('common_name = "Test Root"', "", "root.common_name", "missing"),
        ("path_length = 0", "path_length = -1", "issuing.path_length", ">= 0"),
        ("path_length = 0", "path_length = true", "issuing.path_length", ">= 0"),
        ("path_length = 1", "path_length = 0", "root.path_length", "greater"),
        ('organization = "Test Org"', 'organisation = "Test Org"', "root.organisation", "unknown key"),
        ("[issuing]", "[issuer]", "issuer", "unknown section"),
    ],
)
def test_invalid_definition_names_file_key_reason(tmp_path: Path, old: str, new: str, key: str, reason: str) -> None:
    assert old in VALID_TOML
    path = tmp_path / "bad.toml"
    path.write_text(VALID_TOML.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(CAError) as info:
        load_ca_definition(path)
    assert info.value.fields["file"] == str(path)
    assert info.value.fields["key"] == key
    assert reason in info.value.fields["reason"]
    assert str(path) in str(info.value)
    assert key in str(info.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="cannot read"):
        load_ca_definition(tmp_path / "missing.toml")
    path = tmp_path / "broken.toml"
    path.write_text("[root\n", encoding="utf-8")
    with pytest.raises(CAError, match="not valid TOML"):
        load_ca_definition(path)


def test_parse_duration() -> None:
    assert parse_duration("7300d") == timedelta(days=7300)
    assert parse_duration("36h") == timedelta(hours=36)
    for bad in ("", "d", "10", "10m", "-5d", "1.5d", "0h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_root_and_issuing_certificates() -> None:
    defn = _definition()
    root_key, root = build_root(defn, NOW)
    issuing_key, issuing = build_issuing(defn, root_key, root, NOW)

    now_s = NOW.replace(microsecond=0)
    assert root.subject == root.issuer == defn.root.subject()
    assert issuing.issuer == root.subject
    assert issuing.subject == defn.issuing.subject()
    assert root.not_valid_before_utc == now_s - timedelta(minutes=5)
    assert root.not_valid_after_utc == now_s + timedelta(days=3650)
    assert issuing.not_valid_after_utc == now_s + timedelta(days=1825)
    assert issuing.not_valid_before_utc >= root.not_valid_before_utc
    issuing.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)

    for cert, path_length in ((root, 1), (issuing, 0)):
        assert cert.version is x509.Version.v3
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert cert.serial_number > 0
        basic = _ext(cert, x509.BasicConstraints)
        assert basic.critical
        assert basic.value == x509.BasicConstraints(ca=True, path_length=path_length)
        usage = _ext(cert, x509.KeyUsage)
        assert usage.critical
        assert isinstance(usage.value, x509.KeyUsage)
        assert usage.value.key_cert_sign
        assert usage.value.crl_sign
        assert not usage.value.digital_signature
        assert not usage.value.key_encipherment
        assert not _ext(cert, x509.SubjectKeyIdentifier).critical

    root_ski = _ext(root, x509.SubjectKeyIdentifier).value
    issuing_aki = _ext(issuing, x509.AuthorityKeyIdentifier).value
    assert isinstance(root_ski, x509.SubjectKeyIdentifier)
    assert isinstance(issuing_aki, x509.AuthorityKeyIdentifier)
    assert issuing_aki.key_identifier == root_ski.digest
    assert issuing_aki.authority_cert_issuer is None
    assert key_type_of(issuing_key) is KeyType.EC_P256


def test_issuing_validity_clipped_to_root() -> None:
    defn = _definition(root_days=365, issuing_days=1825)
    root_key, root = build_root(defn, NOW)
    _, issuing = build_issuing(defn, root_key, root, NOW + timedelta(days=10))
    assert issuing.not_valid_after_utc == root.not_valid_after_utc


def test_issuing_not_before_not_earlier_than_root() -> None:
    defn = _definition()
    root_key, root = build_root(defn, NOW)
    _, issuing = build_issuing(defn, root_key, root, NOW - timedelta(minutes=5))
    assert issuing.not_valid_before_utc == root.not_valid_before_utc


def test_issuing_refused_when_root_not_valid() -> None:
    defn = _definition(root_days=10)
    root_key, root = build_root(defn, NOW)
    with pytest.raises(CAError, match="not valid"):
        build_issuing(defn, root_key, root, NOW + timedelta(days=11))


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        build_root(_definition(), datetime(2026, 1, 1))  # noqa: DTZ001
