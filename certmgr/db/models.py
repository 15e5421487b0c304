"""The certmgr tables, all in one place (their value sets: :mod:`certmgr.db.enums`, re-exported here).

Conventions:

* Every timestamp column is :class:`~certmgr.db.types.UTCDateTime` (aware UTC in and out). No column has a
  database-side ``now()`` default: timestamps come from the one :class:`~certmgr.clock.Clock`, so callers set
  ``created_at`` / ``updated_at`` themselves (a forgotten value fails loudly with NOT NULL).
* Enum-like columns are ``VARCHAR(n)`` holding the value of a :class:`~enum.StrEnum` (see
  :class:`~certmgr.db.types.StrEnumType`); no native database enums.
* JSON columns use :class:`sqlalchemy.JSON` (``json`` on PostgreSQL, text on SQLite).
* Constraint names follow :data:`NAMING_CONVENTION` from the first migration on, so later migrations
  (SQLite batch mode in particular) can address every constraint by name.
* No ORM relationships are declared: repositories query explicitly, which keeps loading predictable for fleets
  of 100,000 phones. The ``device`` ↔ ``certificate`` foreign-key cycle is broken with ``use_alter`` on
  ``device.current_certificate_id``: insert the device, then the certificate, then point the device at it.
* ``Deployment.version`` is SQLAlchemy's ``version_id_col``: every ORM UPDATE checks and bumps it, and a
  concurrent change raises :class:`sqlalchemy.orm.exc.StaleDataError`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from certmgr.db.enums import (
    CARole,
    CertificateStatus,
    CheckInfo,
    CheckProbe,
    CheckReply,
    DeploymentState,
    DeviceStatus,
    Enrollment,
    IssueReason,
    VerifyFailure,
)
from certmgr.db.types import StrEnumType, UTCDateTime
from certmgr.pki.types import KeyType, Pkcs12Profile

#: The largest id of a device, certificate or deployment row (INTEGER columns: 32-bit on PostgreSQL). A number
#: outside 1..MAX_ID names no row; callers answer "not found" (or 422) without asking the database.
MAX_ID = 2_147_483_647

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Must be set before the first table class below is created: names are given when constraints attach.
SQLModel.metadata.naming_convention = NAMING_CONVENTION

# Lengths of recurring string columns.
HEX_SHA256 = 64  # lowercase hex SHA-256 (fingerprints, audit hashes)
SERIAL_LEN = 64  # hex serial number (20 octets = 40 hex digits, with room)
NAME_LEN = 128


# The value sets live in certmgr.db.enums; imported here so that ``from certmgr.db.models import X`` keeps
# naming every table and value set in one place.


def _ts(*, nullable: bool = False, index: bool = False) -> Any:
    """A UTCDateTime field (``default=None`` when nullable, required otherwise)."""
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True, index=index)
    return Field(sa_type=UTCDateTime, nullable=False, index=index)


class CARecord(SQLModel, table=True):
    """A CA certificate certmgr issues under or trusts (root or issuing)."""

    __tablename__ = "ca"

    id: int | None = Field(default=None, primary_key=True)
    role: CARole = Field(sa_type=StrEnumType(CARole, 16), nullable=False)
    subject: str = Field(sa_type=Text, nullable=False)
    serial: str = Field(sa_type=String(SERIAL_LEN), nullable=False)
    fingerprint_sha256: str = Field(sa_type=String(HEX_SHA256), unique=True, nullable=False)
    not_before: datetime = _ts()
    not_after: datetime = _ts()
    cert_pem: str = Field(sa_type=Text, nullable=False)
    imported: bool = Field(default=False, nullable=False)
    active: bool = Field(default=True, nullable=False)
    #: Issuing CA only: the chain (issuing first, the root last if known) and the issuing key encrypted with the
    #: CA passphrase (PKCS#8 PEM), so that every node sharing the database issues with the same CA.
    chain_pem: str | None = Field(default=None, sa_type=Text, repr=False)
    key_pem: str | None = Field(default=None, sa_type=Text, repr=False)
    created_at: datetime = _ts()


class Device(SQLModel, table=True):
    """A phone. ``mac`` is the identity (normalised ``00:1A:E8:12:34:56``)."""

    __tablename__ = "device"
    # Prefix search of the console: plain B-trees serve range scans on SQLite; text_pattern_ops lets PostgreSQL
    # use them for ``LIKE 'prefix%'`` whatever the database's collation (migration 0004).
    __table_args__ = (
        Index("ix_device_mac_prefix", "mac", postgresql_ops={"mac": "text_pattern_ops"}),
        Index(None, "e164", postgresql_ops={"e164": "text_pattern_ops"}),
        Index(None, "ip", postgresql_ops={"ip": "text_pattern_ops"}),
        Index(None, "hostname", postgresql_ops={"hostname": "text_pattern_ops"}),
        Index(None, "current_certificate_id", "enrollment"),
        Index(None, "last_seen_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    mac: str = Field(sa_type=String(17), unique=True, nullable=False)
    e164: str | None = Field(default=None, sa_type=String(32))
    device_type: str | None = Field(default=None, sa_type=String(64))
    software_version: str | None = Field(default=None, sa_type=String(64))
    ip: str | None = Field(default=None, sa_type=String(45))
    contact_me_uri: str | None = Field(default=None, sa_type=String(512))
    hostname: str | None = Field(default=None, sa_type=String(255))
    dns_names: list[str] = Field(default_factory=list, sa_type=JSON, nullable=False)
    policy_name: str | None = Field(default=None, sa_type=String(NAME_LEN), index=True)
    enrollment: Enrollment = Field(default=Enrollment.PENDING, sa_type=StrEnumType(Enrollment, 16), nullable=False)
    status: DeviceStatus = Field(
        default=DeviceStatus.NEW, sa_type=StrEnumType(DeviceStatus, 16), nullable=False, index=True
    )
    drift: bool = Field(default=False, nullable=False)
    #: A move to another address that certmgr could not confirm (the phone did not prove it holds its key): held
    #: until an operator approves it; the phone keeps its known address meanwhile.
    pending_ip: str | None = Field(default=None, sa_type=String(45))
    pending_contact_me_uri: str | None = Field(default=None, sa_type=String(512))
    pending_since: datetime | None = _ts(nullable=True)
    last_seen_at: datetime | None = _ts(nullable=True)
    last_contact_me_at: datetime | None = _ts(nullable=True)
    last_verified_at: datetime | None = _ts(nullable=True)
    current_certificate_id: int | None = Field(
        default=None,
        sa_type=Integer,
        nullable=True,
        sa_column_args=[ForeignKey("certificate.id", use_alter=True)],
    )
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Certificate(SQLModel, table=True):
    """A leaf certificate issued to a device, with its sealed private key."""

    __tablename__ = "certificate"
    __table_args__ = (Index(None, "device_id", "status"), Index(None, "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", nullable=False)
    serial: str = Field(sa_type=String(SERIAL_LEN), unique=True, nullable=False)
    subject: str = Field(sa_type=Text, nullable=False)
    sans: list[str] = Field(default_factory=list, sa_type=JSON, nullable=False)
    key_type: KeyType = Field(sa_type=StrEnumType(KeyType, 16), nullable=False)
    not_before: datetime = _ts()
    not_after: datetime = _ts(index=True)
    fingerprint_sha256: str = Field(sa_type=String(HEX_SHA256), unique=True, nullable=False)
    cert_pem: str = Field(sa_type=Text, nullable=False)
    key_blob: bytes = Field(sa_type=LargeBinary, nullable=False, repr=False)
    issuer_fingerprint: str = Field(sa_type=String(HEX_SHA256), nullable=False)
    policy_name: str | None = Field(default=None, sa_type=String(NAME_LEN))
    policy_digest: str | None = Field(default=None, sa_type=String(NAME_LEN))
    status: CertificateStatus = Field(
        default=CertificateStatus.ACTIVE, sa_type=StrEnumType(CertificateStatus, 16), nullable=False
    )
    reason: IssueReason = Field(sa_type=StrEnumType(IssueReason, 32), nullable=False)
    revoked_at: datetime | None = _ts(nullable=True)
    revocation_reason: str | None = Field(default=None, sa_type=String(64))
    previous_certificate_id: int | None = Field(default=None, foreign_key="certificate.id", nullable=True)
    created_at: datetime = _ts()


# A Column object (not a Field) because the mapper needs it as ``version_id_col``.
_deployment_version = Column("version", Integer, nullable=False)


class Deployment(SQLModel, table=True):
    """One attempt-series to put a certificate onto a device and verify it."""

    __tablename__ = "deployment"
    __table_args__ = (
        Index(None, "state", "next_attempt_at"),
        # The console's proof of serving: "did the deployment that verified the current certificate see it?"
        # answered from the index alone (migration 0004).
        Index("ix_deployment_proof", "device_id", "certificate_id", "state", "check_probe", "verified_at"),
    )
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": _deployment_version}

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", nullable=False, index=True)
    certificate_id: int = Field(foreign_key="certificate.id", nullable=False)
    state: DeploymentState = Field(
        default=DeploymentState.QUEUED, sa_type=StrEnumType(DeploymentState, 32), nullable=False
    )
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime | None = _ts(nullable=True)
    profile_index: int = Field(default=0, nullable=False)
    profile_used: Pkcs12Profile | None = Field(default=None, sa_type=StrEnumType(Pkcs12Profile, 16))
    password_item_used: bool = Field(default=False, nullable=False)
    last_error: str | None = Field(default=None, sa_type=Text)
    contacted_at: datetime | None = _ts(nullable=True)
    #: When a WriteItems with the certificate last left for the phone; with ``written_at`` unset the write's outcome
    #: is unknown (e.g. certmgr died before the phone's reply-to): the next contact checks before it writes again.
    write_sent_at: datetime | None = _ts(nullable=True)
    written_at: datetime | None = _ts(nullable=True)
    verified_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)
    check_reply: CheckReply | None = Field(default=None, sa_type=StrEnumType(CheckReply, 16))
    check_info: CheckInfo | None = Field(default=None, sa_type=StrEnumType(CheckInfo, 16))
    check_probe: CheckProbe | None = Field(default=None, sa_type=StrEnumType(CheckProbe, 16))
    info_raw: str | None = Field(default=None, sa_type=Text)
    #: Verifications of an accepted write that ended without ``verified``, and how the last one failed.
    verify_failures: int = Field(default=0, nullable=False)
    verify_failure: VerifyFailure | None = Field(default=None, sa_type=StrEnumType(VerifyFailure, 16))
    #: Set on a rollback deployment: the failed deployment whose previous certificate it puts back.
    rollback_of: int | None = Field(default=None, foreign_key="deployment.id", nullable=True)
    transcript: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON, nullable=False)
    lease_owner: str | None = Field(default=None, sa_type=String(NAME_LEN))
    lease_until: datetime | None = _ts(nullable=True)
    version: int | None = Field(default=None, sa_column=_deployment_version)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


# BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY is the autoincrement rowid.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(SQLModel, table=True):
    """One entry of the append-only, hash-chained audit log.

    ``id`` is the database's sequence (may have gaps); ``seq`` is the gapless chain position, assigned under
    the :class:`AuditHead` row lock.
    """

    __tablename__ = "audit_event"
    __table_args__ = (Index(None, "subject_type", "subject_id"), Index(None, "action", "seq"))

    id: int | None = Field(default=None, primary_key=True, sa_type=BIG_ID)
    seq: int = Field(sa_type=BIG_ID, unique=True, nullable=False)
    at: datetime = _ts(index=True)
    actor: str = Field(sa_type=String(NAME_LEN), nullable=False)
    action: str = Field(sa_type=String(64), nullable=False)
    subject_type: str | None = Field(default=None, sa_type=String(32))
    subject_id: str | None = Field(default=None, sa_type=String(NAME_LEN))
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    prev_hash: str = Field(sa_type=String(HEX_SHA256), nullable=False)
    hash: str = Field(sa_type=String(HEX_SHA256), unique=True, nullable=False)


class AuditHead(SQLModel, table=True):
    """The one-row head of the audit chain (``id`` 1): last ``seq`` and ``hash``. Writers update it first."""

    __tablename__ = "audit_head"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(sa_type=BIG_ID, nullable=False)
    hash: str = Field(sa_type=String(HEX_SHA256), nullable=False)


class ProfileMemory(SQLModel, table=True):
    """The PKCS#12 profile that last worked for a device type and software version."""

    __tablename__ = "pkcs12_profile_memory"
    __table_args__ = (UniqueConstraint("device_type", "software_version"),)

    id: int | None = Field(default=None, primary_key=True)
    device_type: str = Field(sa_type=String(64), nullable=False)
    software_version: str = Field(sa_type=String(64), nullable=False)
    profile: Pkcs12Profile = Field(sa_type=StrEnumType(Pkcs12Profile, 16), nullable=False)
    updated_at: datetime = _ts()


class ApiToken(SQLModel, table=True):
    """A bearer token of the REST API (only its hash is stored)."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_type=String(NAME_LEN), unique=True, nullable=False)
    role: str = Field(sa_type=String(32), nullable=False)
    token_hash: str = Field(sa_type=String(HEX_SHA256), unique=True, nullable=False, repr=False)
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)


class AuditCheckpoint(SQLModel, table=True):
    """A signature over the audit chain head at some event."""

    __tablename__ = "audit_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(
        sa_type=BIG_ID,
        foreign_key="audit_event.id",
        nullable=False,
        index=True,
    )
    event_hash: str = Field(sa_type=String(HEX_SHA256), nullable=False)
    signature: bytes = Field(sa_type=LargeBinary, nullable=False, repr=False)
    at: datetime = _ts()


class ConsoleSession(SQLModel, table=True):
    """A web-console login: tied to the API token (and its role) that logged in. Only the SHA-256 of the random
    session id is stored; the id itself lives in the browser's cookie. Revoking the token ends the session."""

    __tablename__ = "console_session"

    id: int | None = Field(default=None, primary_key=True)
    id_hash: str = Field(sa_type=String(HEX_SHA256), unique=True, nullable=False, repr=False)
    token_id: int = Field(foreign_key="api_token.id", nullable=False, index=True)
    role: str = Field(sa_type=String(32), nullable=False)
    client: str = Field(default="", sa_type=String(64), nullable=False)
    created_at: datetime = _ts()
    last_seen_at: datetime = _ts()
    expires_at: datetime = _ts(index=True)


class ConsoleJob(SQLModel, table=True):
    """A bulk action of the console (renew / retry / approve every phone a filter matches), run server-side."""

    __tablename__ = "console_job"

    id: int | None = Field(default=None, primary_key=True)
    action: str = Field(sa_type=String(16), nullable=False)
    actor: str = Field(sa_type=String(NAME_LEN), nullable=False)
    filters: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    state: str = Field(sa_type=String(16), nullable=False)
    expected: int = Field(default=0, nullable=False)
    total: int = Field(default=0, nullable=False)
    succeeded: int = Field(default=0, nullable=False)
    skipped: int = Field(default=0, nullable=False)
    failed: int = Field(default=0, nullable=False)
    errors: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON, nullable=False)
    node: str = Field(default="", sa_type=String(NAME_LEN), nullable=False)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)


__all__ = [
    "BIG_ID",
    "HEX_SHA256",
    "MAX_ID",
    "NAME_LEN",
    "NAMING_CONVENTION",
    "SERIAL_LEN",
    "ApiToken",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "CARecord",
    "CARole",
    "Certificate",
    "CertificateStatus",
    "CheckInfo",
    "CheckProbe",
    "CheckReply",
    "ConsoleJob",
    "ConsoleSession",
    "Deployment",
    "DeploymentState",
    "Device",
    "DeviceStatus",
    "Enrollment",
    "IssueReason",
    "ProfileMemory",
    "VerifyFailure",
]
