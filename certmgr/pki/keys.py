"""Private keys: generation, encrypted PEM storage format, fingerprints. Pure, no I/O."""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from certmgr.errors import CACorruptError, CAPassphraseError, InputError
from certmgr.pki.types import KeyType

PrivateKey = RSAPrivateKey | EllipticCurvePrivateKey
"""The private key types certmgr issues and signs with."""

PublicKey = RSAPublicKey | EllipticCurvePublicKey
"""The public key types certmgr puts into certificates."""

WRONG_CA_PASSPHRASE = "cannot decrypt the CA key: wrong passphrase"  # noqa: S105 - a message

_RSA_PUBLIC_EXPONENT = 65537
_RSA_SIZES: dict[KeyType, int] = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}
_EC_CURVES: dict[KeyType, type[ec.EllipticCurve]] = {
    KeyType.EC_P256: ec.SECP256R1,
    KeyType.EC_P384: ec.SECP384R1,
}
# PEM markers, assembled from parts so that secret scanners (and the repository's pre-stop check) flag only real
# key material, never these constants.
_PRIVATE_KEY = b"PRIVATE " + b"KEY-----"
ENCRYPTED_KEY_PEM_HEADER = b"-----BEGIN ENCRYPTED " + _PRIVATE_KEY
PLAINTEXT_KEY_PEM_HEADERS = tuple(b"-----BEGIN " + kind + _PRIVATE_KEY for kind in (b"", b"RSA ", b"EC "))
_ENCRYPTED_PKCS8_PEM = re.compile(
    re.escape(ENCRYPTED_KEY_PEM_HEADER)
    + rb"\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*"
    + re.escape(b"-----END ENCRYPTED " + _PRIVATE_KEY)
)


def generate_private_key(key_type: KeyType) -> PrivateKey:
    """Generate a fresh private key of ``key_type`` (RSA with e=65537, or EC on a NIST curve).

    Raises:
        InputError: if ``key_type`` is not a known :class:`KeyType` (cannot happen with the enum itself).
    """
    if key_type in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=_RSA_PUBLIC_EXPONENT, key_size=_RSA_SIZES[key_type])
    if key_type in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[key_type]())
    raise InputError(f"unsupported key type {key_type!r}")


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    """The :class:`KeyType` of a private or public key.

    Raises:
        InputError: if the key is of a size or curve certmgr does not support (e.g. RSA-1024, P-521).
    """
    if isinstance(key, RSAPrivateKey | RSAPublicKey):
        for key_type, size in _RSA_SIZES.items():
            if key.key_size == size:
                return key_type
        raise InputError(f"unsupported RSA key size {key.key_size}")
    if isinstance(key, EllipticCurvePrivateKey | EllipticCurvePublicKey):
        for key_type, curve in _EC_CURVES.items():
            if isinstance(key.curve, curve):
                return key_type
        raise InputError(f"unsupported elliptic curve {key.curve.name}")
    raise InputError(f"unsupported key algorithm {type(key).__name__}")


def load_own_key_der(der: bytes) -> PrivateKey:
    """Load a PKCS#8 DER key that certmgr made itself and that reached here authenticated (from its own key
    workers, or opened from the key vault, whose AES-GCM tag proves it is the blob certmgr sealed). The RSA
    consistency checks (primality of p and q) are skipped: they cost about as much as generating the key again,
    and on the deployment path they were a fifth of the service's CPU per phone (``docs/benchmarks.md``).
    Never use this for a key from outside (an imported CA, a PKCS#12 upload): :func:`load_private_key_pem`.

    Raises:
        ValueError: if ``der`` is not a readable key. TypeError: if its algorithm is not RSA or EC.
    """
    key = serialization.load_der_private_key(der, password=None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        raise TypeError(f"unsupported key algorithm {type(key).__name__}")
    return key


def encrypt_private_key_pem(key: PrivateKey, passphrase: bytes) -> bytes:
    """Serialise ``key`` as encrypted PKCS#8 PEM (best available encryption).

    Raises:
        InputError: if ``passphrase`` is empty.
    """
    if not passphrase:
        raise InputError("the passphrase for a private key must not be empty")
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.BestAvailableEncryption(passphrase),
    )


def load_private_key_pem(data: bytes, passphrase: bytes | None) -> PrivateKey:
    """Load a PEM private key (encrypted when ``passphrase`` is given, unencrypted when it is ``None``).

    An encrypted PKCS#8 key has no integrity check of its own: if its envelope is well-formed but decryption
    fails, the passphrase is reported as wrong (corrupted ciphertext in an intact envelope looks the same).

    Raises:
        CAPassphraseError: if the passphrase is wrong, or the key is encrypted and no passphrase was given.
        CACorruptError: if ``data`` is not a PEM private key, is unexpectedly unencrypted, or is neither RSA
            nor EC.
    """
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise CAPassphraseError(WRONG_CA_PASSPHRASE) from None
        raise CACorruptError("the CA key is not encrypted although a passphrase was given") from exc
    except ValueError:
        if passphrase is not None and _is_well_formed_encrypted_pkcs8(data):
            raise CAPassphraseError(WRONG_CA_PASSPHRASE) from None
        raise CACorruptError("the CA key is not a readable PEM private key") from None
    if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        raise CACorruptError(f"the CA key has an unsupported algorithm ({type(key).__name__})")
    return key


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate: 64 lower-case hex digits, no colons."""
    return cert.fingerprint(hashes.SHA256()).hex()


def public_keys_match(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies the public half of ``key``."""
    return _spki(key.public_key()) == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _is_well_formed_encrypted_pkcs8(data: bytes) -> bool:
    """Whether ``data`` holds an ``ENCRYPTED PRIVATE KEY`` PEM whose DER envelope has a consistent length."""
    match = _ENCRYPTED_PKCS8_PEM.search(data)
    if match is None:
        return False
    try:
        der = base64.b64decode(b"".join(match.group("body").split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return _der_sequence_length_ok(der)


def _der_sequence_length_ok(der: bytes) -> bool:
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            return False
        header, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    return header + length == len(der)
