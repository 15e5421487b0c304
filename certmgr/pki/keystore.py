"""Sealed storage of issued private keys (so a deployment can be retried without issuing again). Pure, no I/O.

Blob layout (version 1)::

    version (1 byte = 0x01) | salt (16 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext of PKCS#8 DER + tag

The AES key is HKDF-SHA256(master secret, salt). The GCM associated data is the header (version, salt, nonce)
followed by the caller's ``aad``, which binds a blob to what it belongs to (e.g. the certificate serial).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certmgr.errors import KeyStoreError
from certmgr.pki.keys import PrivateKey, load_own_key_der

VERSION = 1
MIN_MASTER_SECRET_BYTES = 32
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER_BYTES = 1 + _SALT_BYTES + _NONCE_BYTES
_TAG_BYTES = 16
_HKDF_INFO = b"certmgr key vault v1"
_OPEN_FAILED = "cannot open the stored key: wrong master secret, wrong binding or corrupted data"


class KeyVault:
    """Seals private keys with a master secret (from the settings) and opens them again.

    Raises:
        KeyStoreError: on construction, if ``master_secret`` is shorter than 32 bytes.
    """

    def __init__(self, master_secret: bytes) -> None:
        if len(master_secret) < MIN_MASTER_SECRET_BYTES:
            raise KeyStoreError(f"the key vault master secret must be at least {MIN_MASTER_SECRET_BYTES} bytes")
        self._master = master_secret

    def __repr__(self) -> str:
        return "KeyVault(<secret>)"

    def seal(self, key: PrivateKey, aad: bytes) -> bytes:
        """Encrypt ``key`` (as PKCS#8 DER) bound to ``aad``; every call uses a fresh salt and nonce."""
        salt = os.urandom(_SALT_BYTES)
        nonce = os.urandom(_NONCE_BYTES)
        header = bytes([VERSION]) + salt + nonce
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return header + AESGCM(self._derive(salt)).encrypt(nonce, der, header + aad)

    def open(self, blob: bytes, aad: bytes) -> PrivateKey:
        """Decrypt a blob made by :meth:`seal` with the same master secret and ``aad``.

        Raises:
            KeyStoreError: if the blob is truncated, of an unknown version, tampered with, or sealed with
                another master secret or another ``aad``.
        """
        if len(blob) < _HEADER_BYTES + _TAG_BYTES:
            raise KeyStoreError("cannot open the stored key: blob is truncated")
        if blob[0] != VERSION:
            raise KeyStoreError(f"cannot open the stored key: unknown blob version {blob[0]}")
        header = blob[:_HEADER_BYTES]
        salt = blob[1 : 1 + _SALT_BYTES]
        nonce = blob[1 + _SALT_BYTES : _HEADER_BYTES]
        try:
            der = AESGCM(self._derive(salt)).decrypt(nonce, blob[_HEADER_BYTES:], header + aad)
        except InvalidTag:
            raise KeyStoreError(_OPEN_FAILED) from None
        try:
            return load_own_key_der(der)  # authenticated by the GCM tag above: certmgr sealed it
        except ValueError:
            raise KeyStoreError("cannot open the stored key: the decrypted key is unreadable") from None
        except TypeError as exc:
            raise KeyStoreError(f"the stored key has an unsupported algorithm ({exc})") from None

    def _derive(self, salt: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(self._master)
