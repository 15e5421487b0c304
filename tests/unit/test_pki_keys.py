"""Keys: generation per KeyType, encrypted PEM round trip, error classification, fingerprints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from certmgr.errors import CACorruptError, CAPassphraseError, InputError
from certmgr.pki.keys import (
    ENCRYPTED_KEY_PEM_HEADER,
    PrivateKey,
    encrypt_private_key_pem,
    fingerprint_sha256,
    generate_private_key,
    key_type_of,
    load_private_key_pem,
    public_keys_match,
)
from certmgr.pki.types import KeyType

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def _self_signed(key: PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generate_every_key_type(key_type: KeyType) -> None:
    key = generate_private_key(key_type)
    assert key_type_of(key) is key_type
    assert key_type_of(key.public_key()) is key_type
    if key_type.is_rsa:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.private_numbers().public_numbers.e == 65537
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)


def test_key_type_of_rejects_unsupported_sizes() -> None:
    with pytest.raises(InputError, match="RSA key size 1024"):
        key_type_of(rsa.generate_private_key(65537, 1024))  # noqa: S505 - deliberately unsupported
    with pytest.raises(InputError, match="secp521r1"):
        key_type_of(ec.generate_private_key(ec.SECP521R1()))


def test_encrypted_pem_round_trip() -> None:
    key = generate_private_key(KeyType.EC_P256)
    pem = encrypt_private_key_pem(key, b"s3cret")
    assert pem.startswith(ENCRYPTED_KEY_PEM_HEADER)
    loaded = load_private_key_pem(pem, b"s3cret")
    assert loaded.private_numbers() == key.private_numbers()


def test_empty_passphrase_refused() -> None:
    with pytest.raises(InputError):
        encrypt_private_key_pem(generate_private_key(KeyType.EC_P256), b"")


def test_wrong_passphrase_message_and_no_secret_in_it() -> None:
    pem = encrypt_private_key_pem(generate_private_key(KeyType.RSA_2048), b"right-passphrase")
    with pytest.raises(CAPassphraseError) as info:
        load_private_key_pem(pem, b"wrong-passphrase")
    assert str(info.value) == "cannot decrypt the CA key: wrong passphrase"
    assert "passphrase" in str(info.value)
    assert "right-passphrase" not in str(info.value)
    assert "wrong-passphrase" not in str(info.value)
    assert info.value.__cause__ is None


def test_wrong_passphrase_many_times_never_reported_as_corrupt() -> None:
    # A wrong passphrase sometimes decrypts to garbage instead of failing the padding check (about 1/256).
    pem = encrypt_private_key_pem(generate_private_key(KeyType.EC_P256), b"right")
    for attempt in range(600):
        with pytest.raises(CAPassphraseError):
            load_private_key_pem(pem, f"wrong-{attempt}".encode())


def test_missing_passphrase_for_encrypted_key() -> None:
    pem = encrypt_private_key_pem(generate_private_key(KeyType.EC_P256), b"x")
    with pytest.raises(CAPassphraseError):
        load_private_key_pem(pem, None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        ENCRYPTED_KEY_PEM_HEADER + b"\nAAAA\n" + ENCRYPTED_KEY_PEM_HEADER.replace(b"BEGIN", b"END") + b"\n",
    ],
)
def test_garbage_is_corrupt(data: bytes) -> None:
    with pytest.raises(CACorruptError):
        load_private_key_pem(data, b"x")


def test_truncated_key_is_corrupt() -> None:
    pem = encrypt_private_key_pem(generate_private_key(KeyType.EC_P256), b"x")
    with pytest.raises(CACorruptError):
        load_private_key_pem(pem[: len(pem) // 2], b"x")


def test_unencrypted_key_with_passphrase_is_corrupt_and_plain_load_works() -> None:
    key = generate_private_key(KeyType.EC_P256)
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CACorruptError):
        load_private_key_pem(plain, b"x")
    assert load_private_key_pem(plain, None).private_numbers() == key.private_numbers()


def test_unsupported_algorithm_is_corrupt() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"x"),
    )
    with pytest.raises(CACorruptError, match="unsupported"):
        load_private_key_pem(pem, b"x")


def test_fingerprint_and_key_match() -> None:
    key = generate_private_key(KeyType.EC_P256)
    other = generate_private_key(KeyType.EC_P256)
    cert = _self_signed(key)
    fingerprint = fingerprint_sha256(cert)
    assert fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert len(fingerprint) == 64
    assert fingerprint == fingerprint.lower()
    assert ":" not in fingerprint
    assert public_keys_match(key, cert)
    assert not public_keys_match(other, cert)
    assert not public_keys_match(generate_private_key(KeyType.RSA_2048), cert)
