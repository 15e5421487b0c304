"""Leaf (phone WBM server) certificates, built explicitly from a frozen :class:`LeafSpec`. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from certmgr.clock import ensure_utc
from certmgr.errors import IssuanceError
from certmgr.identity import IPAddress
from certmgr.pki.ca import CLOCK_SKEW_BACKDATE, Issuer, authority_key_identifier_for
from certmgr.pki.keys import PrivateKey, PublicKey, generate_private_key
from certmgr.pki.types import KeyType

_MAX_SERIAL = 2**159  # serials are at most 20 octets and positive (RFC 5280 4.1.2.2)


@dataclass(frozen=True)
class LeafSpec:
    """What goes into a phone's server certificate.

    ``subject`` may be empty; then the SubjectAlternativeName is marked critical (RFC 5280 4.2.1.6).
    ``clip_to_ca`` shortens the validity to the issuing CA's end instead of refusing to issue.
    """

    subject: x509.Name
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]
    validity: timedelta
    clip_to_ca: bool = False


def build_leaf(
    spec: LeafSpec,
    public_key: PublicKey,
    issuer: Issuer,
    now: datetime,
    serial: int | None = None,
) -> x509.Certificate:
    """Build and sign a TLS server certificate for ``public_key``.

    ``notBefore`` is ``now`` minus five minutes for device clock skew, but never before the issuing CA's.

    Raises:
        IssuanceError: if there is no SAN, the validity is not positive, the issuing CA is not valid at
            ``now``, the validity would end after the issuing CA's and ``clip_to_ca`` is false, ``serial`` is
            out of range, or the key algorithm is unsupported.
        ValueError: if ``now`` is a naive datetime.
    """
    now = ensure_utc(now).replace(microsecond=0)
    if not isinstance(public_key, RSAPublicKey | EllipticCurvePublicKey):
        raise IssuanceError(f"unsupported key algorithm {type(public_key).__name__}")
    if not spec.dns_names and not spec.ip_addresses:
        raise IssuanceError("a certificate needs at least one DNS name or IP address (subjectAltName)")
    if spec.validity <= timedelta(0):
        raise IssuanceError("certificate validity must be positive")
    if serial is not None and not 0 < serial < _MAX_SERIAL:
        raise IssuanceError("serial number must be positive and at most 159 bits")

    ca_not_before = issuer.cert.not_valid_before_utc
    ca_not_after = issuer.cert.not_valid_after_utc
    if not ca_not_before <= now < ca_not_after:
        raise IssuanceError(
            f"the issuing CA is not valid now (valid {ca_not_before.isoformat()} to {ca_not_after.isoformat()})"
        )
    not_before = max(now - CLOCK_SKEW_BACKDATE, ca_not_before)
    not_after = now + spec.validity
    if not_after > ca_not_after:
        if not spec.clip_to_ca:
            raise IssuanceError(
                "certificate validity would end after the issuing CA's "
                f"({not_after.isoformat()} > {ca_not_after.isoformat()})",
                not_after=not_after.isoformat(),
                ca_not_after=ca_not_after.isoformat(),
            )
        not_after = ca_not_after

    general_names: list[x509.GeneralName] = [x509.DNSName(name) for name in spec.dns_names]
    general_names += [x509.IPAddress(ip) for ip in spec.ip_addresses]
    is_rsa = isinstance(public_key, RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(general_names), critical=len(spec.subject) == 0)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier_for(issuer.cert), critical=False)
    )
    return builder.sign(issuer.key, hashes.SHA256())


def issue_key_and_leaf(
    spec: LeafSpec, key_type: KeyType, issuer: Issuer, now: datetime
) -> tuple[PrivateKey, x509.Certificate]:
    """Generate a key of ``key_type`` and a certificate for it (see :func:`build_leaf`).

    Raises:
        IssuanceError: as :func:`build_leaf`.
        ValueError: if ``now`` is a naive datetime.
    """
    key = generate_private_key(key_type)
    return key, build_leaf(spec, key.public_key(), issuer, now)
