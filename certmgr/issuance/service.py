"""Issue a phone certificate from a policy: build it (pure, outside any transaction), then record it.

The private key is sealed with the key vault before it touches the database and is never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlmodel import Session, col, select

from certmgr.audit.log import append_event
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, CertificateStatus, Device, IssueReason
from certmgr.errors import InputError
from certmgr.fsutil import atomic_write_many
from certmgr.identity import DeviceIdentity, mac_token
from certmgr.pki.keys import PrivateKey, fingerprint_sha256
from certmgr.pki.keystore import KeyVault
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.pkcs12 import build_pkcs12
from certmgr.pki.store import Issuer
from certmgr.pki.types import Pkcs12Profile
from certmgr.policy import Policy
from certmgr.policy.templates import render_friendly_name, render_leaf_names

if TYPE_CHECKING:
    from certmgr.runtime import Runtime


@dataclass(frozen=True)
class BuiltCertificate:
    """A freshly built key + certificate, not yet stored."""

    identity: DeviceIdentity
    policy: Policy
    key: PrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate | None

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")

    @property
    def fingerprint(self) -> str:
        return fingerprint_sha256(self.cert)

    def bundle_chain(self) -> tuple[x509.Certificate, ...]:
        """The chain that goes into the PKCS#12: issuing chain, plus the root only if the policy says so."""
        if self.policy.pkcs12.include_root and self.root is not None:
            return (*self.chain, self.root)
        return self.chain

    def pkcs12(self, profile: Pkcs12Profile, password: bytes | None) -> bytes:
        """Package key + certificate + chain in ``profile``.

        Raises:
            InputError: if ``profile`` needs a password and none is given.
        """
        return build_pkcs12(
            self.key,
            self.cert,
            self.bundle_chain(),
            profile,
            password,
            render_friendly_name(self.policy, self.identity),
        )


def build_certificate(identity: DeviceIdentity, policy: Policy, issuer: Issuer, now: datetime) -> BuiltCertificate:
    """Generate a key and sign the phone certificate ``policy`` describes for ``identity``. No I/O.

    Raises:
        InputError: if a template renders an invalid name. IssuanceError: if the validity would pass the
        issuing CA's and the policy does not allow clipping, or no SAN can be built.
    """
    names = render_leaf_names(policy, identity)
    spec = LeafSpec(
        subject=names.subject,
        dns_names=names.dns_names,
        ip_addresses=names.ip_addresses,
        validity=policy.validity,
        clip_to_ca=policy.clip_to_ca,
    )
    key, cert = issue_key_and_leaf(spec, policy.key_type, issuer, now)
    return BuiltCertificate(identity, policy, key, cert, issuer.chain, issuer.root)


def _san_strings(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] + [
        f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)
    ]


def upsert_device(session: Session, identity: DeviceIdentity, policy_name: str | None, now: datetime) -> Device:
    """The device row for ``identity.mac``, created or updated with the identity's facts."""
    device = session.exec(select(Device).where(col(Device.mac) == identity.mac)).first()
    if device is None:
        device = Device(mac=identity.mac, created_at=now, updated_at=now)
    if identity.ips:
        device.ip = str(identity.ips[0])
    if identity.dns_names:
        device.dns_names = list(identity.dns_names)
    for attr, value in (
        ("e164", identity.e164),
        ("device_type", identity.model),
        ("software_version", identity.firmware),
        ("hostname", identity.hostname),
    ):
        if value:
            setattr(device, attr, value)
    if policy_name:
        device.policy_name = policy_name
    device.updated_at = now
    session.add(device)
    session.flush()
    return device


def record_certificate(
    session: Session,
    built: BuiltCertificate,
    vault: KeyVault,
    *,
    now: datetime,
    reason: IssueReason,
    actor: str,
    device: Device | None = None,
    status: CertificateStatus = CertificateStatus.PENDING,
) -> Certificate:
    """Store ``built`` (key sealed by the vault) and its audit event, in the caller's transaction.

    A certificate is ``pending`` until the phone is verified to serve it; ``active`` is for a certificate that
    is known to be in use (e.g. one exported by hand with ``certmgr issue``), which then becomes the device's
    current certificate.
    """
    if device is None:
        device = upsert_device(session, built.identity, built.policy.name, now)
    assert device.id is not None
    previous = device.current_certificate_id
    serial = built.serial_hex
    record = Certificate(
        device_id=device.id,
        serial=serial,
        subject=built.cert.subject.rfc4514_string(),
        sans=_san_strings(built.cert),
        key_type=built.policy.key_type,
        not_before=built.cert.not_valid_before_utc,
        not_after=built.cert.not_valid_after_utc,
        fingerprint_sha256=built.fingerprint,
        cert_pem=built.cert.public_bytes(Encoding.PEM).decode(),
        key_blob=vault.seal(built.key, key_binding(serial)),
        issuer_fingerprint=fingerprint_sha256(built.chain[0]),
        policy_name=built.policy.name,
        policy_digest=built.policy.digest,
        status=status,
        reason=reason,
        previous_certificate_id=previous,
        created_at=now,
    )
    session.add(record)
    session.flush()
    if status is CertificateStatus.ACTIVE:
        device.current_certificate_id = record.id
        session.add(device)
    append_event(
        session,
        at=now,
        actor=actor,
        action="certificate.issued",
        subject_type="certificate",
        subject_id=serial,
        details={
            "mac": device.mac,
            "serial": serial,
            "sha256": built.fingerprint,
            "not_after": built.cert.not_valid_after_utc.isoformat(),
            "policy": built.policy.name,
            "key_type": built.policy.key_type.value,
            "reason": reason.value,
            "sans": record.sans,
        },
    )
    return record


def key_binding(serial_hex: str) -> bytes:
    """The associated data that binds a sealed key to its certificate serial."""
    return f"certmgr-cert-key:{serial_hex}".encode()


def load_key(vault: KeyVault, record: Certificate) -> PrivateKey:
    """Unseal the private key of ``record``.

    Raises:
        KeyStoreError: wrong master secret or tampered blob.
    """
    return vault.open(record.key_blob, key_binding(record.serial))


def load_chain_pem(chain: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in chain)


@dataclass(frozen=True)
class IssueResult:
    """What ``certmgr issue`` produced."""

    serial: str
    not_after: datetime
    policy: str
    files: tuple[str, ...]


def issue_to_files(
    runtime: Runtime,
    *,
    mac: str,
    ips: Sequence[str],
    dns_names: Sequence[str],
    out_dir: Path,
    e164: str | None = None,
    model: str | None = None,
    policy_name: str | None = None,
) -> IssueResult:
    """Issue for one phone, record it, and write ``<mac>.pem``, ``<mac>.p12`` and ``chain.pem`` to ``out_dir``.

    The database row and the files appear together or not at all: the files are written (atomically) inside
    the transaction, which is rolled back if writing fails; if the commit fails the files are removed.

    Raises:
        InputError: invalid MAC/IP/DNS name or unknown policy. CAError: CA unusable. IssuanceError: validity
        beyond the CA. StorageError: ``out_dir`` not writable. DatabaseError: the record cannot be stored.
    """
    identity = DeviceIdentity.create(mac=mac, ips=list(ips), dns_names=list(dns_names), e164=e164, model=model)
    if not identity.ips:
        raise InputError("at least one --ip is required (the certificate's IP SAN)")
    policy = runtime.policies.get(policy_name) if policy_name else runtime.policies.select(identity)
    profile = policy.pkcs12.profiles[0]
    password = runtime.pkcs12_password(policy.pkcs12.password_secret) if profile.needs_password else None
    issuer = runtime.issuer()
    now = runtime.clock.now()
    built = build_certificate(identity, policy, issuer, now)
    p12 = built.pkcs12(profile, password)
    token = mac_token(identity.mac)
    files = {
        out_dir / f"{token}.pem": built.cert.public_bytes(Encoding.PEM),
        out_dir / f"{token}.p12": p12,
        out_dir / "chain.pem": load_chain_pem(built.bundle_chain()),
    }
    wrote = False
    try:
        with session_scope(runtime.engine) as session:
            record_certificate(
                session,
                built,
                runtime.vault,
                now=now,
                reason=IssueReason.MANUAL,
                actor="cli",
                status=CertificateStatus.ACTIVE,
            )
            atomic_write_many(files, mode=0o600)
            wrote = True
    except BaseException:
        if wrote:  # the commit failed after the files were written: take them back
            for path in files:
                path.unlink(missing_ok=True)
        raise
    return IssueResult(built.serial_hex, built.cert.not_valid_after_utc, policy.name, tuple(map(str, files)))
