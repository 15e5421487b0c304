"""Signed checkpoints of the audit chain and the audit signing key.

The hash chain alone detects edits, deletions and insertions, but someone with write access to the database can
rewrite every hash after a change (and the head row). A checkpoint is an ECDSA P-256 signature by a dedicated
*audit key* over ``(seq, hash)`` of the chain head; rewriting history then also needs the audit key, which lives
in the data dir, encrypted with the CA passphrase. The public key is exported beside it (``audit-key.pub.pem``)
and embedded in every report manifest, so auditors can pin it.

The audit key also signs report exports (see :mod:`certmgr.reports.manifest`).

Signed message (ASCII, exact bytes): ``certmgr-audit-checkpoint-v1\\nseq=<seq>\\nhash=<64 hex>\\n``.

Checkpoint rows live in the database, so a forger with write access can *rewind* the log: delete the newest
events together with the checkpoints that signed them (the foreign key leaves no other way) and set the head
back — the rest is self-consistent. Every checkpoint is therefore also recorded outside the database, in the
*anchor* beside the audit key (``<data dir>/audit/checkpoint-anchor.json``: seq, hash and signature of the
newest checkpoint this data dir signed, written after the checkpoint commits). :func:`verify_audit` requires the
chain to hold the anchored event with the anchored hash; :func:`create_checkpoint` refuses to sign a chain
that does not (so the evidence is never signed over). After restoring a database backup the anchor reports the
events the backup lacks; remove the anchor file once that is recorded, to accept the restored log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col

from certmgr.audit.log import HEAD_ID, verify_log, write_pending
from certmgr.db.models import AuditCheckpoint, AuditEvent, AuditHead
from certmgr.errors import CACorruptError, ConfigError, StorageError
from certmgr.fsutil import atomic_write, ensure_private_dir
from certmgr.pki.keys import encrypt_private_key_pem, load_private_key_pem

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.audit")

AUDIT_DIR_NAME = "audit"
KEY_FILE_NAME = "audit-key.pem"
PUBLIC_KEY_FILE_NAME = "audit-key.pub.pem"
ANCHOR_FILE_NAME = "checkpoint-anchor.json"
SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"
_PENDING_ANCHOR = "certmgr.audit-anchor"


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


@dataclass(frozen=True)
class Anchor:
    """The newest checkpoint a data dir signed, kept outside the database (module docstring)."""

    seq: int
    hash: str
    signature: bytes

    def to_json(self) -> bytes:
        """The anchor file's content."""
        doc = {"seq": self.seq, "hash": self.hash, "signature": encode_signature(self.signature)}
        return (json.dumps(doc, sort_keys=True) + "\n").encode("ascii")


def anchor_path(data_dir: Path) -> Path:
    """Where the checkpoint anchor of ``data_dir`` lives (beside the audit key)."""
    return key_paths(data_dir)[0].parent / ANCHOR_FILE_NAME


def read_anchor(path: Path) -> Anchor | None:
    """The anchor in ``path``; None if there is none yet.

    Raises:
        ConfigError: if the file exists but cannot be read or is not an anchor (itself a sign of tampering).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the checkpoint anchor {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw)
        anchor = Anchor(int(doc["seq"]), str(doc["hash"]), base64.b64decode(doc["signature"], validate=True))
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise ConfigError(f"the checkpoint anchor {path} is not a checkpoint anchor") from exc
    if anchor.seq < 1 or len(anchor.hash) != 64:
        raise ConfigError(f"the checkpoint anchor {path} is not a checkpoint anchor")
    return anchor


def _write_anchor(path: Path, anchor: Anchor) -> None:
    """Record ``anchor`` unless the file already holds a newer one (several nodes may sign; the newest wins)."""
    try:
        current = read_anchor(path)
    except ConfigError:
        current = None
    if current is not None and current.seq >= anchor.seq:
        return
    ensure_private_dir(path.parent)
    atomic_write(path, anchor.to_json(), mode=0o644)


@event.listens_for(OrmSession, "after_commit")
def _anchor_after_commit(session: OrmSession) -> None:
    pending = session.info.pop(_PENDING_ANCHOR, None)
    if pending is not None:
        path, anchor = pending
        try:
            _write_anchor(path, anchor)
        except StorageError as exc:  # the checkpoint row committed; the database still holds it
            log.error("cannot record the audit checkpoint outside the database: %s", exc.message)


@event.listens_for(OrmSession, "after_rollback")
def _anchor_after_rollback(session: OrmSession) -> None:
    session.info.pop(_PENDING_ANCHOR, None)


class AuditVerifier:
    """Verifies signatures made by the audit key, given only its public key. ``anchor`` is the checkpoint kept
    outside the database that the chain must still hold (``anchor_problem`` if the anchor file is unusable)."""

    anchor: Anchor | None = None
    anchor_problem: str | None = None

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
    """The audit signing key (ECDSA P-256); ``anchor_file``: where its checkpoints are recorded outside the
    database (None: nowhere)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, anchor_file: Path | None = None) -> None:
        self._private = private_key
        self.anchor_file = anchor_file
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
        signer = AuditSigner(key, anchor_path(data_dir))
        if not pub_file.exists():
            atomic_write(pub_file, signer.public_pem, mode=0o644)
        return signer
    ensure_private_dir(key_file.parent)
    key = ec.generate_private_key(ec.SECP256R1())
    signer = AuditSigner(key, anchor_path(data_dir))
    atomic_write(key_file, encrypt_private_key_pem(key, passphrase), mode=0o600)
    atomic_write(pub_file, signer.public_pem, mode=0o644)
    return signer


def load_verifier(data_dir: Path, public_key_file: Path | None = None) -> AuditVerifier | None:
    """The audit public key (from ``public_key_file``, else the data dir) with the data dir's checkpoint anchor;
    None if no public key exists yet.

    Raises:
        ConfigError: if the file is not an EC P-256 public key, or ``public_key_file`` is given but unreadable.
    """
    path = public_key_file or key_paths(data_dir)[1]
    if not path.exists():
        if public_key_file is not None:
            raise ConfigError(f"audit public key file {path} does not exist")
        return None
    try:
        verifier = AuditVerifier(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the audit public key {path}: {exc.strerror or exc}") from exc
    try:
        verifier.anchor = read_anchor(anchor_path(data_dir))
    except ConfigError as exc:
        verifier.anchor_problem = exc.message
    return verifier


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
    if signer.anchor_file is not None:
        problem = _anchor_problem(session, signer, _read_anchor_or_problem(signer.anchor_file))
        if problem is not None:  # never sign over the evidence of a rewound or rewritten log
            log.error("audit checkpoint refused: %s; run certmgr audit verify", problem[1])
            return None
    signature = signer.sign(checkpoint_message(event.seq, event.hash))
    checkpoint = AuditCheckpoint(event_id=event.id, event_hash=event.hash, signature=signature, at=now)
    session.add(checkpoint)
    session.flush()
    if signer.anchor_file is not None:
        session.info[_PENDING_ANCHOR] = (signer.anchor_file, Anchor(event.seq, event.hash, signature))
    return checkpoint


def _read_anchor_or_problem(path: Path) -> Anchor | str | None:
    try:
        return read_anchor(path)
    except ConfigError as exc:
        return exc.message


def _anchor_problem(session: Session, verifier: AuditVerifier, anchor: Anchor | str | None) -> tuple[int, str] | None:
    """Whether the chain still holds the checkpoint kept outside the database: (first bad seq or 0, reason)."""
    if anchor is None:
        return None
    if isinstance(anchor, str):
        return (0, anchor)
    if not verifier.verify(anchor.signature, checkpoint_message(anchor.seq, anchor.hash)):
        return (anchor.seq, "the checkpoint anchor outside the database is not signed by the audit key")
    stored = session.execute(select(col(AuditEvent.hash)).where(col(AuditEvent.seq) == anchor.seq)).scalar_one_or_none()
    if stored is None:
        last = int(session.execute(select(func.coalesce(func.max(AuditEvent.seq), 0))).scalar_one())
        if last < anchor.seq:
            return (
                last + 1,
                f"the log was rewound: a checkpoint kept outside the database signed event {anchor.seq}, "
                f"the log ends at event {last}",
            )
        return (anchor.seq, f"event {anchor.seq}, signed by the checkpoint kept outside the database, is missing")
    if stored != anchor.hash:
        return (
            anchor.seq,
            "event hash differs from the one signed by the checkpoint kept outside the database (rewritten)",
        )
    return None


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
    """Verify the hash chain against its head, every checkpoint, and the checkpoint kept outside the database
    (the verifier's anchor: catches a rewound log); the lowest bad seq wins."""
    chain = verify_log(session)
    marks = verify_checkpoints(session, verifier)
    anchored = None
    if verifier is not None:
        anchored = _anchor_problem(session, verifier, verifier.anchor_problem or verifier.anchor)
    if chain.ok and marks.ok and anchored is None:
        return AuditVerdict(True, chain.checked, marks.checkpoints)
    candidates: list[tuple[int, str]] = []
    if not chain.ok:
        candidates.append((chain.first_bad_seq or 0, chain.reason or "chain broken"))
    if not marks.ok:
        candidates.append((marks.first_bad_seq or 0, marks.reason or "checkpoint invalid"))
    if anchored is not None:
        candidates.append(anchored)
    seq, reason = min(candidates, key=lambda c: c[0] if c[0] > 0 else 2**63)
    return AuditVerdict(False, chain.checked, marks.checkpoints, seq or None, reason)


def encode_signature(signature: bytes) -> str:
    """Base64 (standard alphabet, no line breaks) of a DER signature, as in manifests."""
    return base64.b64encode(signature).decode("ascii")


__all__ = [
    "ANCHOR_FILE_NAME",
    "SIGNATURE_ALGORITHM",
    "Anchor",
    "AuditSigner",
    "AuditVerdict",
    "AuditVerifier",
    "anchor_path",
    "checkpoint_message",
    "create_checkpoint",
    "encode_signature",
    "key_paths",
    "load_or_create_signer",
    "load_verifier",
    "public_key_fingerprint",
    "read_anchor",
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
