"""Enumerations shared by the PKI and the policies."""

from __future__ import annotations

from enum import StrEnum


class KeyType(StrEnum):
    """Key algorithms a policy may choose for a phone certificate or a CA."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa-")


class Pkcs12Profile(StrEnum):
    """PKCS#12 packaging profiles (protocol doc D7)."""

    PLAIN = "plain"  # no password, unencrypted bags, MAC over the empty password
    LEGACY = "legacy"  # PBES1 SHA1-3DES bags, SHA-1 MAC, non-empty password
    MODERN = "modern"  # PBES2 AES-256-CBC bags, SHA-256 MAC, non-empty password

    @property
    def needs_password(self) -> bool:
        return self is not Pkcs12Profile.PLAIN
