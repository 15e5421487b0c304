"""Signed checkpoints of the audit chain and the audit signing key.

The hash chain alone detects edits, deletions and insertions, but someone with write access to the database can
rewrite every hash after a change (and the head row). A checkpoint is an ECDSA P-256 signature by a dedicated
*audit key* over ``(seq, hash)`` of the chain head; rewriting history then also needs the audit key, which lives
in the data dir, encrypted with the CA passphrase. The public key is exported beside it (``audit-key.pub.pem``)
and embedded in every report manifest, so auditors can pin it.

The audit key also signs report exports (see :mod:`certmgr.reports.manifest`).

Signed message (ASCII, exact bytes): ``certmgr-audit-checkpoint-v1\\nseq=<seq>\\nhash=<64 hex>\\n``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sqlalchemy import select
from sqlmodel import Session, col

from certmgr.audit.log import HEAD_ID, verify_log, write_pending
from certmgr.db.models import AuditCheckpoint, AuditEvent, AuditHead
from certmgr.errors import CACorruptError, ConfigError, StorageError
from certmgr.fsutil import atomic_write, ensure_private_dir
from certmgr.pki.keys import encrypt_private_key_pem, load_private_key_pem

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

AUDIT_DIR_NAME = "audit"
KEY_FILE_NAME = "audit-key.pem"
PUBLIC_KEY_FILE_NAME = "audit-key.pub.pem"
SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"


def checkpoint_message(seq: int, event_hash: str) -> bytes:
    """The exact bytes a checkpoint signs."""
    return f"certmgr-audit-checkpoint-v1\nseq={seq}\nhash={event_hash}\n".encode("ascii")


def public_key_fingerprint(public_pem: bytes) -> str:
    """SHA-256 hex of the DER SubjectPublicKeyInfo (``openssl pkey -pubin -outform DER | openssl dgst -sha256``).

    Raises:
        ValueError: if ``public_pem`` is not a PEM public key.
    """
    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


class AuditVerifier:
    """Verifies signatures made by the audit key, given only its public key."""

    def __init__(self, public_pem: bytes) -> None:
        """Load the public key.

        Raises:
            ConfigError: if ``public_pem`` is not an EC P-256 public key in PEM.
        """
        try:
            key = serialization.load_pem_public_key(public_pem)
        except ValueError as exc:
            raise ConfigError("the audit public key is not a readable PEM public key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError("the audit public key is not an EC P-256 key")
        self._public = key
        self.public_pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the DER public key."""
        return public_key_fingerprint(self.public_pem)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` (DER ECDSA) signs ``data`` with SHA-256."""
        try:
            self._public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def verify_digest(self, signature: bytes, sha256_digest: bytes) -> bool:
        """Whether ``signature`` signs data whose SHA-256 is ``sha256_digest`` (what ``openssl dgst`` checks)."""
        try:
            self._public.verify(signature, sha256_digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except InvalidSignature:
            return False
        return True


class AuditSigner(AuditVerifier):
    """The audit signing key (ECDSA P-256)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._private = private_key
        super().__init__(
            private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA signature over SHA-256 of ``data``."""
        return self._private.sign(data, ec.ECDSA(hashes.SHA256()))

    def sign_digest(self, sha256_digest: bytes) -> bytes:
        """DER ECDSA signature over data whose SHA-256 is ``sha256_digest`` (for large files hashed in chunks)."""
        return self._private.sign(sha256_digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def key_paths(data_dir: Path) -> tuple[Path, Path]:
    """(private key file, public key file) of the audit key in ``data_dir``."""
    folder = data_dir / AUDIT_DIR_NAME
    return folder / KEY_FILE_NAME, folder / PUBLIC_KEY_FILE_NAME


def load_or_create_signer(data_dir: Path, passphrase: bytes) -> AuditSigner:
    """The audit key of ``data_dir``; generated (0600, encrypted with ``passphrase``) on first use.

    Raises:
        CAPassphraseError: if ``passphrase`` does not decrypt an existing key.
        CACorruptError: if the key file is unreadable or not an EC P-256 key.
        StorageError: if the key cannot be read or written.
    """
    key_file, pub_file = key_paths(data_dir)
    if key_file.exists():
        try:
            data = key_file.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read the audit key {key_file}: {exc.strerror or exc}") from exc
        key = load_private_key_pem(data, passphrase)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise CACorruptError(f"the audit key {key_file} is not an EC P-256 key")
        signer = AuditSigner(key)
        if not pub_file.exists():
            atomic_write(pub_file, signer.public_pem, mode=0o644)
        return signer
    ensure_private_dir(key_file.parent)
    key = ec.generate_private_key(ec.SECP256R1())
    signer = AuditSigner(key)
    atomic_write(key_file, encrypt_private_key_pem(key, passphrase), mode=0o600)
    atomic_write(pub_file, signer.public_pem, mode=0o644)
    return signer


def load_verifier(data_dir: Path, public_key_file: Path | None = None) -> AuditVerifier | None:
    """The audit public key (from ``public_key_file``, else the data dir); None if none exists yet.

    Raises:
        ConfigError: if the file is not an EC P-256 public key, or ``public_key_file`` is given but unreadable.
    """
    path = public_key_file or key_paths(data_dir)[1]
    if not path.exists():
        if public_key_file is not None:
            raise ConfigError(f"audit public key file {path} does not exist")
        return None
    try:
        return AuditVerifier(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the audit public key {path}: {exc.strerror or exc}") from exc


# --- checkpoints ------------------------------------------------------------------------------------------
def create_checkpoint(session: Session, signer: AuditSigner, now: datetime) -> AuditCheckpoint | None:
    """Sign the current chain head inside the caller's transaction; idempotent.

    Returns the new checkpoint, or None when the log is empty or the head is already checkpointed. Intended
    to be called periodically (scheduler) and after important events. Events appended earlier in the same
    transaction are chained first, so the checkpoint covers them.
    """
    write_pending(session)
    head = session.get(AuditHead, HEAD_ID)
    if head is None or head.seq == 0:
        return None
    event = session.execute(select(AuditEvent).where(col(AuditEvent.seq) == head.seq)).scalar_one_or_none()
    if event is None or event.hash != head.hash:
        return None  # inconsistent head: verification reports it; never sign a state that does not verify
    assert event.id is not None
    latest = session.execute(
        select(AuditCheckpoint).order_by(col(AuditCheckpoint.id).desc()).limit(1)
    ).scalar_one_or_none()
    if latest is not None and latest.event_id == event.id:
        return None
    checkpoint = AuditCheckpoint(
        event_id=event.id,
        event_hash=event.hash,
        signature=signer.sign(checkpoint_message(event.seq, event.hash)),
        at=now,
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


@dataclass(frozen=True)
class AuditVerdict:
    """Outcome of :func:`verify_audit`: chain and checkpoints together."""

    ok: bool
    checked: int
    checkpoints: int
    first_bad_seq: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _CheckpointRow:
    id: int
    seq: int | None
    stored_hash: str | None
    event_hash: str
    signature: bytes


def _checkpoint_rows(session: Session, batch: int) -> Iterator[_CheckpointRow]:
    last = 0
    while True:
        chunk = session.execute(
            select(
                col(AuditCheckpoint.id),
                col(AuditEvent.seq),
                col(AuditEvent.hash),
                col(AuditCheckpoint.event_hash),
                col(AuditCheckpoint.signature),
            )
            .join(AuditEvent, col(AuditEvent.id) == col(AuditCheckpoint.event_id), isouter=True)
            .where(col(AuditCheckpoint.id) > last)
            .order_by(col(AuditCheckpoint.id))
            .limit(batch)
        ).all()
        if not chunk:
            return
        for row in chunk:
            yield _CheckpointRow(int(row[0]), row[1], row[2], row[3], bytes(row[4]))
        last = int(chunk[-1][0])


def verify_checkpoints(session: Session, verifier: AuditVerifier | None, batch: int = 1000) -> AuditVerdict:
    """Check every checkpoint: its event exists, the event's hash is the signed one, the signature verifies.

    The first bad checkpoint (lowest event seq) is reported. Without a verifier, any checkpoint is a failure.
    """
    count = 0
    worst: tuple[int, str] | None = None
    for row in _checkpoint_rows(session, batch):
        count += 1
        problem: tuple[int, str] | None = None
        if row.seq is None:
            problem = (0, f"checkpoint {row.id} names an event that does not exist")
        elif verifier is None:
            problem = (row.seq, "checkpoints exist but the audit public key is missing")
        elif row.stored_hash != row.event_hash:
            problem = (row.seq, f"event hash differs from the one signed by checkpoint {row.id} (rewritten)")
        elif not verifier.verify(row.signature, checkpoint_message(row.seq, row.event_hash)):
            problem = (row.seq, f"signature of checkpoint {row.id} does not verify")
        if problem is not None and (worst is None or problem[0] < worst[0]):
            worst = problem
    if worst is not None:
        return AuditVerdict(False, 0, count, worst[0] or None, worst[1])
    return AuditVerdict(True, 0, count)


def verify_audit(session: Session, verifier: AuditVerifier | None) -> AuditVerdict:
    """Verify the hash chain against its head and every checkpoint; the lowest bad seq wins."""
    chain = verify_log(session)
    marks = verify_checkpoints(session, verifier)
    if chain.ok and marks.ok:
        return AuditVerdict(True, chain.checked, marks.checkpoints)
    candidates: list[tuple[int, str]] = []
    if not chain.ok:
        candidates.append((chain.first_bad_seq or 0, chain.reason or "chain broken"))
    if not marks.ok:
        candidates.append((marks.first_bad_seq or 0, marks.reason or "checkpoint invalid"))
    seq, reason = min(candidates, key=lambda c: c[0] if c[0] > 0 else 2**63)
    return AuditVerdict(False, chain.checked, marks.checkpoints, seq or None, reason)


def encode_signature(signature: bytes) -> str:
    """Base64 (standard alphabet, no line breaks) of a DER signature, as in manifests."""
    return base64.b64encode(signature).decode("ascii")


__all__ = [
    "SIGNATURE_ALGORITHM",
    "AuditSigner",
    "AuditVerdict",
    "AuditVerifier",
    "checkpoint_message",
    "create_checkpoint",
    "encode_signature",
    "key_paths",
    "load_or_create_signer",
    "load_verifier",
    "public_key_fingerprint",
    "runtime_signer",
    "verify_audit",
    "verify_checkpoints",
]


def runtime_signer(runtime: Runtime) -> AuditSigner:
    """The audit signer of ``runtime``'s data dir, its key encrypted with the CA passphrase.

    Raises:
        ConfigError: if no CA passphrase is configured.
        CAPassphraseError / CACorruptError / StorageError: see :func:`load_or_create_signer`.
    """
    return load_or_create_signer(runtime.settings.data_dir, runtime.passphrase().get_secret_value().encode())
