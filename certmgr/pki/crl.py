"""Certificate revocation lists: a pure X.509 v2 CRL builder and the CRL store in the data directory.

The builder (:func:`build_crl`) signs with the issuing CA's key and SHA-256 and adds the CRL number and the
authority key identifier (RFC 5280 §5.2.1, §5.2.3); each entry carries its serial, revocation date and, unless
the reason is ``unspecified`` (which RFC 5280 §5.3.1 says to leave out), a reason code. No I/O, no clock.

The store (:class:`CRLStore`) keeps, in ``<data_dir>/crl/``:

==============  ==========================================================================================
issuing.crl     the current CRL, DER
crl.json        its metadata: number, thisUpdate, nextUpdate, issuer fingerprint, digest of the entries
.lock           an advisory lock: one writer at a time, across threads and processes (service, CLI)
==============  ==========================================================================================

The CRL number only grows: the next one is always the stored one plus one, under the lock, and both files
are replaced together (:func:`~certmgr.fsutil.atomic_write_many`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certmgr.clock import ensure_utc
from certmgr.errors import CACorruptError, InputError, StorageError
from certmgr.fsutil import atomic_write_many
from certmgr.pki.ca import authority_key_identifier_for
from certmgr.pki.keys import PrivateKey, fingerprint_sha256

CRL_FILE = "issuing.crl"
META_FILE = "crl.json"
LOCK_FILE = ".lock"
MEDIA_TYPE = "application/pkix-crl"
META_VERSION = 1

__all__ = [
    "CRL_FILE",
    "MEDIA_TYPE",
    "CRLMeta",
    "CRLStore",
    "RevocationReason",
    "RevokedEntry",
    "StoredCRL",
    "build_crl",
    "entries_digest",
    "parse_serial",
]


class RevocationReason(StrEnum):
    """The RFC 5280 CRLReason names certmgr accepts for a phone certificate.

    ``certificateHold`` is not offered (a revocation here is final), ``removeFromCRL`` belongs to delta CRLs
    and ``cACompromise`` / ``aACompromise`` to CA and attribute certificates.
    """

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"

    @property
    def flag(self) -> x509.ReasonFlags | None:
        """The CRL entry's reason code; ``None`` for ``unspecified`` (the extension is then left out)."""
        return _FLAGS[self]


_FLAGS: dict[RevocationReason, x509.ReasonFlags | None] = {
    RevocationReason.UNSPECIFIED: None,
    RevocationReason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    RevocationReason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    RevocationReason.SUPERSEDED: x509.ReasonFlags.superseded,
    RevocationReason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    RevocationReason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
}


def parse_serial(serial_hex: str) -> int:
    """The integer serial of a stored hex serial (``"1f0a…"``, colons allowed).

    Raises:
        InputError: if ``serial_hex`` is not a positive hexadecimal number.
    """
    try:
        value = int(serial_hex.replace(":", ""), 16)
    except ValueError:
        raise InputError(f"invalid certificate serial {serial_hex!r}") from None
    if value <= 0:
        raise InputError(f"invalid certificate serial {serial_hex!r}")
    return value


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate as the CRL lists it."""

    serial: int
    revoked_at: datetime
    reason: RevocationReason

    def __post_init__(self) -> None:
        if self.serial <= 0:
            raise InputError("a revoked serial must be positive")
        ensure_utc(self.revoked_at)


def entries_digest(entries: Iterable[RevokedEntry]) -> str:
    """SHA-256 hex over the sorted entries: equal digests mean the CRL would list the same revocations."""
    lines = sorted(f"{e.serial:x} {ensure_utc(e.revoked_at).isoformat()} {e.reason.value}" for e in entries)
    return hashlib.sha256("\n".join(lines).encode("ascii")).hexdigest()


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    entries: Sequence[RevokedEntry],
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """Build and sign an X.509 v2 CRL for ``issuer_cert`` (SHA-256). Pure: no I/O, no clock.

    Raises:
        InputError: if ``number`` is not positive or ``next_update`` is not after ``this_update``.
    """
    this_update, next_update = ensure_utc(this_update), ensure_utc(next_update)
    if number <= 0:
        raise InputError("the CRL number must be positive")
    if next_update <= this_update:
        raise InputError("nextUpdate must be after thisUpdate")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_identifier_for(issuer_cert), critical=False)
    )
    for entry in sorted(entries, key=lambda e: e.serial):
        revoked = (
            x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(ensure_utc(entry.revoked_at))
        )
        flag = entry.reason.flag
        if flag is not None:
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class CRLMeta:
    """What the store remembers about the current CRL (no key material)."""

    number: int
    this_update: datetime
    next_update: datetime
    issuer_fingerprint: str
    entries: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {
            "meta_version": META_VERSION,
            "number": self.number,
            "this_update": self.this_update.isoformat(),
            "next_update": self.next_update.isoformat(),
            "issuer_fingerprint": self.issuer_fingerprint,
            "entries": self.entries,
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CRLMeta:
        """Read the metadata document.

        Raises:
            CACorruptError: if a field is missing or malformed.
        """
        try:
            return cls(
                number=int(doc["number"]),
                this_update=ensure_utc(datetime.fromisoformat(str(doc["this_update"]))),
                next_update=ensure_utc(datetime.fromisoformat(str(doc["next_update"]))),
                issuer_fingerprint=str(doc["issuer_fingerprint"]),
                entries=int(doc["entries"]),
                digest=str(doc["digest"]),
            )
        except (KeyError, TypeError, ValueError):
            raise CACorruptError(f"the CRL metadata ({META_FILE}) is malformed") from None

    def is_current(self, *, issuer_fingerprint: str, digest: str, now: datetime, refresh_before: timedelta) -> bool:
        """True if this CRL is by ``issuer_fingerprint``, lists exactly the entries of ``digest`` and its
        nextUpdate is more than ``refresh_before`` away."""
        return (
            self.issuer_fingerprint == issuer_fingerprint
            and self.digest == digest
            and now < self.next_update - refresh_before
        )


@dataclass(frozen=True)
class StoredCRL:
    """The current CRL: DER bytes and metadata."""

    der: bytes
    meta: CRLMeta


def _last_number(stored: StoredCRL | None) -> int:
    """The highest CRL number seen in the store: metadata and the DER's own extension (a crash between the two
    renames must not let a number be used twice)."""
    if stored is None:
        return 0
    number = stored.meta.number
    with contextlib.suppress(ValueError, x509.ExtensionNotFound):
        crl = x509.load_der_x509_crl(stored.der)
        number = max(number, int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number))
    return number


class CRLStore:
    """Reads and (under an advisory file lock) writes the CRL files in ``crl_dir``."""

    def __init__(self, crl_dir: Path) -> None:
        self.crl_dir = crl_dir

    @property
    def crl_path(self) -> Path:
        return self.crl_dir / CRL_FILE

    def load(self) -> StoredCRL | None:
        """The stored CRL, or ``None`` if none was published yet.

        Raises:
            CACorruptError: if one of the two files is missing or the metadata is malformed.
            StorageError: if the files cannot be read.
        """
        meta_path = self.crl_dir / META_FILE
        try:
            der = self.crl_path.read_bytes()
            doc = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            if not self.crl_path.exists() and not meta_path.exists():
                return None
            raise CACorruptError(f"{CRL_FILE} or {META_FILE} is missing in {self.crl_dir}") from None
        except json.JSONDecodeError:
            raise CACorruptError(f"the CRL metadata ({META_FILE}) is not JSON") from None
        except OSError as exc:
            raise StorageError(f"cannot read the CRL in {self.crl_dir}: {exc.strerror or exc}") from exc
        if not isinstance(doc, dict):
            raise CACorruptError(f"the CRL metadata ({META_FILE}) is not a JSON object")
        return StoredCRL(der, CRLMeta.from_json(doc))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (blocks until it is free).

        Raises:
            StorageError: if the lock file cannot be created.
        """
        try:
            self.crl_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.crl_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.crl_dir}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def publish(
        self,
        issuer_cert: x509.Certificate,
        issuer_key: PrivateKey,
        entries: Sequence[RevokedEntry],
        *,
        now: datetime,
        validity: timedelta,
    ) -> StoredCRL:
        """Sign a new CRL with the next number and replace the stored one. Call it while holding :meth:`locked`.

        Raises:
            InputError: if ``validity`` is not positive.
            CACorruptError: if the stored metadata is malformed (the number cannot be continued safely).
            StorageError: if the files cannot be written (the old CRL stays).
        """
        if validity <= timedelta(0):
            raise InputError("the CRL validity must be positive")
        previous = self.load()
        number = _last_number(previous) + 1
        now = ensure_utc(now).replace(microsecond=0)
        crl = build_crl(issuer_cert, issuer_key, entries, number=number, this_update=now, next_update=now + validity)
        meta = CRLMeta(
            number=number,
            this_update=crl.last_update_utc,
            next_update=now + validity,
            issuer_fingerprint=fingerprint_sha256(issuer_cert),
            entries=len(entries),
            digest=entries_digest(entries),
        )
        der = crl.public_bytes(Encoding.DER)
        body = (json.dumps(meta.to_json(), indent=2) + "\n").encode("utf-8")
        atomic_write_many({self.crl_path: der, self.crl_dir / META_FILE: body}, mode=0o644)
        return StoredCRL(der, meta)
