"""PKCS#12 packaging for the phones (protocol doc D7/D8), with ``cryptography``'s own serializer only."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import pkcs12

from certmgr.errors import InputError
from certmgr.pki.keys import PrivateKey
from certmgr.pki.types import Pkcs12Profile

KDF_ROUNDS = 2048
"""PBE iteration count for ``legacy`` and ``modern``: OpenSSL's default. The phones' CPUs are slow, and the
container travels inside HTTPS anyway; the password is a second layer, not the only one."""


def build_pkcs12(
    key: PrivateKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    profile: Pkcs12Profile,
    password: bytes | None,
    friendly_name: bytes,
) -> bytes:
    """Package ``key``, ``cert`` and ``chain`` (issuing CA first, normally without the root) as PKCS#12 DER.

    - ``plain``: no password, unencrypted bags, integrity MAC over the empty password.
    - ``legacy``: PBES1 SHA-1/3DES for key and certificate bags, SHA-1 MAC.
    - ``modern``: PBES2 (PBKDF2) AES-256-CBC bags, SHA-256 MAC.

    Raises:
        InputError: if ``legacy``/``modern`` get no or an empty password, or ``plain`` gets a password.
    """
    encryption: serialization.KeySerializationEncryption
    mac_hash: hashes.HashAlgorithm
    if profile is Pkcs12Profile.PLAIN:
        if password:
            raise InputError("the plain PKCS#12 profile takes no password")
        encryption = serialization.NoEncryption()
    else:
        if not password:
            raise InputError(f"the {profile.value} PKCS#12 profile needs a non-empty password")
        if profile is Pkcs12Profile.LEGACY:
            algorithm, mac_hash = pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC, hashes.SHA1()  # noqa: S303
        else:
            algorithm, mac_hash = pkcs12.PBES.PBESv2SHA256AndAES256CBC, hashes.SHA256()
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(KDF_ROUNDS)
            .key_cert_algorithm(algorithm)
            .hmac_hash(mac_hash)
            .build(password)
        )
    return pkcs12.serialize_key_and_certificates(
        name=friendly_name or None,
        key=key,
        cert=cert,
        cas=list(chain) or None,
        encryption_algorithm=encryption,
    )


def open_pkcs12(data: bytes, password: bytes | None) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    """Open a PKCS#12 and return its key, its certificate and the other certificates in it.

    ``password`` may be ``None`` or empty for the ``plain`` profile.

    Raises:
        InputError: if the password is wrong, ``data`` is not PKCS#12, or the key or certificate is missing or
            of an unsupported algorithm.
    """
    try:
        key, cert, others = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError:
        raise InputError("cannot open the PKCS#12: wrong password or not a PKCS#12 file") from None
    if key is None or cert is None:
        raise InputError("the PKCS#12 does not contain both a private key and a certificate")
    if not isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        raise InputError(f"the PKCS#12 key has an unsupported algorithm ({type(key).__name__})")
    return key, cert, list(others)
