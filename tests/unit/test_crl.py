"""The pure CRL builder and the CRL store (numbering, staleness, atomic files)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certmgr.errors import CACorruptError, InputError
from certmgr.pki.crl import (
    CRL_FILE,
    CRLStore,
    RevocationReason,
    RevokedEntry,
    build_crl,
    entries_digest,
    parse_serial,
)

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuing CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(T0 + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _entries() -> list[RevokedEntry]:
    return [
        RevokedEntry(0x1F, T0 - timedelta(hours=1), RevocationReason.KEY_COMPROMISE),
        RevokedEntry(0x0A, T0 - timedelta(hours=2), RevocationReason.UNSPECIFIED),
        RevokedEntry(0x2B, T0, RevocationReason.CESSATION_OF_OPERATION),
    ]


def test_build_crl(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    crl = build_crl(cert, key, _entries(), number=5, this_update=T0, next_update=T0 + timedelta(days=7))
    assert crl.is_signature_valid(key.public_key())
    assert crl.signature_hash_algorithm is not None
    assert crl.signature_hash_algorithm.name == "sha256"
    assert crl.issuer == cert.subject
    assert (crl.last_update_utc, crl.next_update_utc) == (T0, T0 + timedelta(days=7))
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 5
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert [r.serial_number for r in crl] == [0x0A, 0x1F, 0x2B]  # sorted
    compromised = crl.get_revoked_certificate_by_serial_number(0x1F)
    assert compromised is not None
    assert compromised.revocation_date_utc == T0 - timedelta(hours=1)
    assert (
        compromised.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    )
    unspecified = crl.get_revoked_certificate_by_serial_number(0x0A)
    assert unspecified is not None
    assert len(unspecified.extensions) == 0  # RFC 5280 5.3.1: no reasonCode for unspecified


def test_empty_crl(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    crl = build_crl(cert, key, [], number=1, this_update=T0, next_update=T0 + timedelta(hours=1))
    assert len(crl) == 0
    assert crl.is_signature_valid(key.public_key())


def test_build_crl_refuses_bad_input(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    with pytest.raises(InputError):
        build_crl(cert, key, [], number=0, this_update=T0, next_update=T0 + timedelta(days=1))
    with pytest.raises(InputError):
        build_crl(cert, key, [], number=1, this_update=T0, next_update=T0)
    with pytest.raises(ValueError, match="naive"):
        build_crl(cert, key, [], number=1, this_update=T0.replace(tzinfo=None), next_update=T0 + timedelta(days=1))
    with pytest.raises(InputError):
        RevokedEntry(0, T0, RevocationReason.UNSPECIFIED)


def test_reason_names_are_rfc5280() -> None:
    assert {r.value for r in RevocationReason} == {
        "unspecified",
        "keyCompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "privilegeWithdrawn",
    }
    assert RevocationReason.SUPERSEDED.flag is x509.ReasonFlags.superseded


def test_parse_serial() -> None:
    assert parse_serial("1f") == 31
    assert parse_serial("01:0A") == 266
    for bad in ("", "zz", "0", "-1"):
        with pytest.raises(InputError):
            parse_serial(bad)


def test_digest_ignores_order() -> None:
    entries = _entries()
    assert entries_digest(entries) == entries_digest(list(reversed(entries)))
    assert entries_digest(entries) != entries_digest(entries[:2])


def test_store_numbers_grow_and_files_agree(
    tmp_path: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    cert, key = ca
    store = CRLStore(tmp_path / "crl")
    assert store.load() is None
    numbers = []
    for i in range(3):
        with store.locked():
            stored = store.publish(cert, key, _entries()[:i], now=T0 + timedelta(minutes=i), validity=timedelta(days=7))
        numbers.append(stored.meta.number)
        loaded = store.load()
        assert loaded == stored
        crl = x509.load_der_x509_crl(loaded.der)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == stored.meta.number
        assert len(crl) == i == loaded.meta.entries
    assert numbers == [1, 2, 3]
    meta = stored.meta
    assert meta.is_current(
        issuer_fingerprint=meta.issuer_fingerprint, digest=meta.digest, now=T0, refresh_before=timedelta(days=2)
    )
    assert not meta.is_current(
        issuer_fingerprint=meta.issuer_fingerprint,
        digest=meta.digest,
        now=T0 + timedelta(days=5, minutes=3),
        refresh_before=timedelta(days=2),
    )
    assert not meta.is_current(issuer_fingerprint="other", digest=meta.digest, now=T0, refresh_before=timedelta(0))
    assert not meta.is_current(
        issuer_fingerprint=meta.issuer_fingerprint, digest="other", now=T0, refresh_before=timedelta(0)
    )


def test_store_never_reuses_a_number(tmp_path: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    """A crash between the two renames (new CRL, old metadata) must not let the next CRL reuse the number."""
    cert, key = ca
    store = CRLStore(tmp_path / "crl")
    with store.locked():
        store.publish(cert, key, [], now=T0, validity=timedelta(days=7))
        newer = build_crl(cert, key, [], number=9, this_update=T0, next_update=T0 + timedelta(days=1))
        from cryptography.hazmat.primitives.serialization import Encoding

        (tmp_path / "crl" / CRL_FILE).write_bytes(newer.public_bytes(Encoding.DER))
        assert store.publish(cert, key, [], now=T0, validity=timedelta(days=7)).meta.number == 10


def test_store_rejects_broken_files(tmp_path: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> None:
    cert, key = ca
    store = CRLStore(tmp_path / "crl")
    with store.locked():
        store.publish(cert, key, [], now=T0, validity=timedelta(days=7))
    meta_file = tmp_path / "crl" / "crl.json"
    meta_file.write_text(json.dumps({"number": "x"}))
    with pytest.raises(CACorruptError):
        store.load()
    meta_file.write_text("not json")
    with pytest.raises(CACorruptError):
        store.load()
    meta_file.unlink()
    with pytest.raises(CACorruptError):
        store.load()
    with pytest.raises(InputError):
        store.publish(cert, key, [], now=T0, validity=timedelta(0))
