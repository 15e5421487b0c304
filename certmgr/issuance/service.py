"""Issue a phone certificate from a policy: build it (pure, outside any transaction), then record it.

The private key is sealed with the key vault before it touches the database and is never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import insert
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, CertificateStatus, Device, IssueReason
from certmgr.errors import InputError, IssuanceError
from certmgr.fsutil import atomic_write_many
from certmgr.identity import DeviceIdentity, mac_token
from certmgr.inventory.phones import policy_for
from certmgr.issuance.packaging import bundle_chain, package
from certmgr.pki.keys import PrivateKey, fingerprint_sha256, key_type_of
from certmgr.pki.keystore import KeyVault
from certmgr.pki.leaf import LeafSpec, build_leaf, issue_key_and_leaf
from certmgr.pki.store import Issuer
from certmgr.pki.types import Pkcs12Profile
from certmgr.policy import Policy
from certmgr.policy.templates import render_leaf_names

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
        """The chain that goes into the PKCS#12 (:func:`certmgr.issuance.packaging.bundle_chain`)."""
        return bundle_chain(self.chain, self.root, self.policy)

    def pkcs12(self, profile: Pkcs12Profile, password: bytes | None) -> bytes:
        """Package key + certificate + chain in ``profile`` (:func:`certmgr.issuance.packaging.package`).

        Raises:
            InputError: if ``profile`` needs a password and none is given.
        """
        return package(
            self.key,
            self.cert,
            self.chain,
            self.root,
            policy=self.policy,
            identity=self.identity,
            profile=profile,
            password=password,
        )


def build_certificate(
    identity: DeviceIdentity, policy: Policy, issuer: Issuer, now: datetime, key: PrivateKey | None = None
) -> BuiltCertificate:
    """Sign the phone certificate ``policy`` describes for ``identity`` over a new key (or ``key``, generated
    beforehand e.g. by a :class:`certmgr.pki.keypool.KeyPool`, which must be of the policy's key type). No I/O.

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
    if key is None:
        key, cert = issue_key_and_leaf(spec, policy.key_type, issuer, now)
    else:
        if key_type_of(key) is not policy.key_type:
            raise IssuanceError(f"pre-generated key is {key_type_of(key).value}, policy wants {policy.key_type.value}")
        cert = build_leaf(spec, key.public_key(), issuer, now)
    return BuiltCertificate(identity, policy, key, cert, issuer.chain, issuer.root)


def _san_strings(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] + [
        f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _identity_facts(identity: DeviceIdentity, policy_name: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "e164": identity.e164,
        "device_type": identity.model,
        "software_version": identity.firmware,
        "hostname": identity.hostname,
        "policy_name": policy_name,
    }
    if identity.ips:
        facts["ip"] = str(identity.ips[0])
    if identity.dns_names:
        facts["dns_names"] = list(identity.dns_names)
    return {k: v for k, v in facts.items() if v}


def upsert_device(session: Session, identity: DeviceIdentity, policy_name: str | None, now: datetime) -> Device:
    """The device row for ``identity.mac``, created or updated with the identity's facts."""
    return upsert_devices(session, [(identity, policy_name)], now)[identity.mac]


def upsert_devices(
    session: Session, items: Sequence[tuple[DeviceIdentity, str | None]], now: datetime
) -> dict[str, Device]:
    """Create or update the device rows of ``items`` (identity, policy name); returns them by MAC.

    New devices are inserted with one multi-row statement (bulk enrollment is the common case), existing ones
    are updated through the ORM.
    """
    macs = [identity.mac for identity, _ in items]
    existing = {d.mac: d for d in session.exec(select(Device).where(col(Device.mac).in_(macs)))}
    new_rows: dict[str, dict[str, Any]] = {}
    for identity, policy_name in items:
        facts = _identity_facts(identity, policy_name)
        device = existing.get(identity.mac)
        if device is None:
            row = new_rows.setdefault(
                identity.mac,
                {"mac": identity.mac, "dns_names": [], "created_at": now, "updated_at": now},
            )
            row.update(facts)
            continue
        for attr, value in facts.items():
            setattr(device, attr, value)
        device.updated_at = now
        session.add(device)
    if new_rows:
        columns = {
            "mac",
            "dns_names",
            "created_at",
            "updated_at",
            "e164",
            "device_type",
            "software_version",
            "hostname",
            "policy_name",
            "ip",
        }
        session.execute(
            insert(Device),
            [{c: row.get(c) for c in columns} | {"dns_names": row["dns_names"]} for row in new_rows.values()],
        )
        existing.update({d.mac: d for d in session.exec(select(Device).where(col(Device.mac).in_(list(new_rows))))})
    session.flush()
    return existing


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
    devices = {device.mac: device} if device is not None else None
    record_certificates(session, [built], vault, now=now, reason=reason, actor=actor, devices=devices, status=status)
    record = session.exec(select(Certificate).where(col(Certificate.serial) == built.serial_hex)).one()
    if status is CertificateStatus.ACTIVE:
        owner = session.get(Device, record.device_id)
        assert owner is not None
        owner.current_certificate_id = record.id
        session.add(owner)
        session.flush()
    return record


def record_certificates(
    session: Session,
    builts: Sequence[BuiltCertificate],
    vault: KeyVault,
    *,
    now: datetime,
    reason: IssueReason,
    actor: str,
    devices: dict[str, Device] | None = None,
    status: CertificateStatus = CertificateStatus.PENDING,
) -> None:
    """Store many built certificates with one statement per table (bulk issuance, renewal batches).

    Same effect as :func:`record_certificate` for each, minus setting ``current_certificate_id``.
    """
    if not builts:
        return
    if devices is None:
        devices = upsert_devices(session, [(b.identity, b.policy.name) for b in builts], now)
    rows: list[dict[str, Any]] = []
    events: list[NewEvent] = []
    for built in builts:
        device = devices[built.identity.mac]
        serial = built.serial_hex
        sans = _san_strings(built.cert)
        rows.append(
            {
                "device_id": device.id,
                "serial": serial,
                "subject": built.cert.subject.rfc4514_string(),
                "sans": sans,
                "key_type": built.policy.key_type,
                "not_before": built.cert.not_valid_before_utc,
                "not_after": built.cert.not_valid_after_utc,
                "fingerprint_sha256": built.fingerprint,
                "cert_pem": built.cert.public_bytes(Encoding.PEM).decode(),
                "key_blob": vault.seal(built.key, key_binding(serial)),
                "issuer_fingerprint": fingerprint_sha256(built.chain[0]),
                "policy_name": built.policy.name,
                "policy_digest": built.policy.digest,
                "status": status,
                "reason": reason,
                "previous_certificate_id": device.current_certificate_id,
                "created_at": now,
            }
        )
        events.append(
            NewEvent(
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
                    "sans": sans,
                },
            )
        )
    session.execute(insert(Certificate), rows)
    append_events(session, now, events)


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
    hostname: str | None = None,
    policy_name: str | None = None,
    actor: str,
) -> IssueResult:
    """Issue for one phone, record it (audited as ``actor``), and write ``<mac>.pem``, ``<mac>.p12`` and
    ``chain.pem`` to ``out_dir``.

    The database row and the files appear together or not at all: the files are written (atomically) inside
    the transaction, which is rolled back if writing fails; if the commit fails the files are removed.

    Raises:
        InputError: invalid MAC/IP/DNS name or unknown policy. CAError: CA unusable. IssuanceError: validity
        beyond the CA. StorageError: ``out_dir`` not writable. DatabaseError: the record cannot be stored.
    """
    identity = DeviceIdentity.create(
        mac=mac, ips=list(ips), dns_names=list(dns_names), e164=e164, model=model, hostname=hostname
    )
    if not identity.ips:
        raise InputError("at least one --ip is required (the certificate's IP SAN)")
    if policy_name:
        policy = runtime.policies.get(policy_name)
    else:
        with session_scope(runtime.engine) as session:
            known = session.exec(select(Device).where(col(Device.mac) == identity.mac)).first()
            recorded = known.policy_name if known is not None else None
        policy = policy_for(runtime.policies, recorded, identity).policy
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
                actor=actor,
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
