"""KeyVault: sealed issued keys."""

from __future__ import annotations

import pytest

from certmgr.errors import KeyStoreError
from certmgr.pki.keys import PrivateKey, generate_private_key
from certmgr.pki.keystore import KeyVault
from certmgr.pki.types import KeyType

MASTER = b"m" * 32
AAD = b"serial:0123456789abcdef"


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.EC_P256, KeyType.EC_P384])
def test_round_trip(key_type: KeyType) -> None:
    key = generate_private_key(key_type)
    vault = KeyVault(MASTER)
    blob = vault.seal(key, AAD)
    opened = KeyVault(MASTER).open(blob, AAD)
    assert opened.private_numbers() == key.private_numbers()


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_private_key(KeyType.EC_P256)


def test_blob_layout_and_fresh_randomness(key: PrivateKey) -> None:
    vault = KeyVault(MASTER)
    first, second = vault.seal(key, AAD), vault.seal(key, AAD)
    assert first[0] == 1
    assert first != second
    assert first[1:17] != second[1:17]  # salt
    assert first[17:29] != second[17:29]  # nonce


def test_wrong_secret(key: PrivateKey) -> None:
    blob = KeyVault(MASTER).seal(key, AAD)
    with pytest.raises(KeyStoreError, match="wrong master secret"):
        KeyVault(b"n" * 32).open(blob, AAD)


def test_wrong_aad(key: PrivateKey) -> None:
    blob = KeyVault(MASTER).seal(key, AAD)
    with pytest.raises(KeyStoreError):
        KeyVault(MASTER).open(blob, b"serial:other")


@pytest.mark.parametrize("position", [1, 17, 29, -1])
def test_tampering_anywhere_is_detected(key: PrivateKey, position: int) -> None:
    blob = bytearray(KeyVault(MASTER).seal(key, AAD))
    blob[position] ^= 0x01
    with pytest.raises(KeyStoreError):
        KeyVault(MASTER).open(bytes(blob), AAD)


def test_truncated_and_unknown_version(key: PrivateKey) -> None:
    blob = KeyVault(MASTER).seal(key, AAD)
    with pytest.raises(KeyStoreError, match="truncated"):
        KeyVault(MASTER).open(blob[:40], AAD)
    with pytest.raises(KeyStoreError, match="version"):
        KeyVault(MASTER).open(b"\x02" + blob[1:], AAD)


def test_short_master_secret_refused() -> None:
    with pytest.raises(KeyStoreError, match="at least 32 bytes"):
        KeyVault(b"short")


def test_secret_not_in_repr() -> None:
    assert "m" * 8 not in repr(KeyVault(MASTER))


def test_a_sealed_key_of_another_algorithm_is_refused() -> None:
    """The vault skips RSA re-validation for what it sealed itself; the algorithm is still checked."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    vault = KeyVault(b"m" * 32)
    blob = vault.seal(Ed25519PrivateKey.generate(), b"serial")  # type: ignore[arg-type]
    with pytest.raises(KeyStoreError, match="unsupported algorithm"):
        vault.open(blob, b"serial")
