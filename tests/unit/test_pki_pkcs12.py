"""PKCS#12 profiles: round trip through cryptography, password rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certmgr.errors import InputError
from certmgr.pki.ca import CADefinition, CAHierarchyDefinition, build_issuing, build_root
from certmgr.pki.keys import PrivateKey
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.pkcs12 import build_pkcs12, open_pkcs12
from certmgr.pki.store import Issuer
from certmgr.pki.types import KeyType, Pkcs12Profile

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
PASSWORD = b"p12-test-password"
NAME = b"phone-001ae8123456"


@pytest.fixture(scope="module")
def material() -> tuple[PrivateKey, x509.Certificate, Issuer]:
    def level(cn: str, path_length: int) -> CADefinition:
        return CADefinition(cn, None, None, None, KeyType.EC_P256, timedelta(days=365), path_length)

    defn = CAHierarchyDefinition(level("Root", 1), level("Issuing", 0))
    root_key, root = build_root(defn, NOW)
    ca_key, ca_cert = build_issuing(defn, root_key, root, NOW)
    issuer = Issuer(cert=ca_cert, key=ca_key, chain=(ca_cert,), root=root)
    spec = LeafSpec(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phone")]),
        dns_names=("phone.example.net",),
        ip_addresses=(),
        validity=timedelta(days=30),
    )
    key, cert = issue_key_and_leaf(spec, KeyType.RSA_2048, issuer, NOW)
    return key, cert, issuer


@pytest.mark.parametrize(
    ("profile", "password"),
    [(Pkcs12Profile.PLAIN, None), (Pkcs12Profile.LEGACY, PASSWORD), (Pkcs12Profile.MODERN, PASSWORD)],
)
def test_round_trip(
    material: tuple[PrivateKey, x509.Certificate, Issuer], profile: Pkcs12Profile, password: bytes | None
) -> None:
    key, cert, issuer = material
    data = build_pkcs12(key, cert, issuer.chain, profile, password, NAME)

    opened_key, opened_cert, others = open_pkcs12(data, password)
    assert opened_key.private_numbers() == key.private_numbers()
    assert opened_cert == cert
    assert others == list(issuer.chain)
    assert issuer.root not in others  # D8: no root in the container

    parsed = pkcs12.load_pkcs12(data, password)
    assert parsed.cert is not None
    assert parsed.cert.friendly_name == NAME


def test_plain_opens_with_empty_password(material: tuple[PrivateKey, x509.Certificate, Issuer]) -> None:
    key, cert, issuer = material
    data = build_pkcs12(key, cert, issuer.chain, Pkcs12Profile.PLAIN, None, NAME)
    assert open_pkcs12(data, b"")[1] == cert


@pytest.mark.parametrize("profile", [Pkcs12Profile.LEGACY, Pkcs12Profile.MODERN])
@pytest.mark.parametrize("password", [None, b""])
def test_password_required(
    material: tuple[PrivateKey, x509.Certificate, Issuer], profile: Pkcs12Profile, password: bytes | None
) -> None:
    key, cert, issuer = material
    with pytest.raises(InputError, match="non-empty password"):
        build_pkcs12(key, cert, issuer.chain, profile, password, NAME)


def test_plain_refuses_password(material: tuple[PrivateKey, x509.Certificate, Issuer]) -> None:
    key, cert, issuer = material
    with pytest.raises(InputError, match="no password"):
        build_pkcs12(key, cert, issuer.chain, Pkcs12Profile.PLAIN, PASSWORD, NAME)


@pytest.mark.parametrize("profile", [Pkcs12Profile.LEGACY, Pkcs12Profile.MODERN])
def test_wrong_password(material: tuple[PrivateKey, x509.Certificate, Issuer], profile: Pkcs12Profile) -> None:
    key, cert, issuer = material
    data = build_pkcs12(key, cert, issuer.chain, profile, PASSWORD, NAME)
    for wrong in (b"wrong", None):
        with pytest.raises(InputError, match="wrong password"):
            open_pkcs12(data, wrong)


def test_garbage_and_empty_chain(material: tuple[PrivateKey, x509.Certificate, Issuer]) -> None:
    with pytest.raises(InputError):
        open_pkcs12(b"not a pkcs12", None)
    key, cert, _ = material
    data = build_pkcs12(key, cert, (), Pkcs12Profile.PLAIN, None, b"")
    assert open_pkcs12(data, None)[2] == []


def test_certificate_only_pkcs12_refused(material: tuple[PrivateKey, x509.Certificate, Issuer]) -> None:
    _, cert, _ = material
    data = pkcs12.serialize_key_and_certificates(b"x", None, cert, None, serialization.NoEncryption())
    with pytest.raises(InputError, match="both a private key and a certificate"):
        open_pkcs12(data, None)
