"""Request and response bodies of the API, in one module (the routes import them; so may the console).

Private keys never appear here: :class:`CertificatePublic` has no key field, :class:`TokenPublic` no token value
or hash. Deployment transcripts are returned as stored (redacted when recorded).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, model_validator

from certmgr.audit.tokens import TokenInfo
from certmgr.db.models import (
    CertificateStatus,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    IssueReason,
)
from certmgr.inventory.enrollment import awaits_approval
from certmgr.inventory.phones import PolicySource
from certmgr.pki.crl import RevocationReason
from certmgr.pki.keys import fingerprint_sha256
from certmgr.policy import Policy, format_duration

if TYPE_CHECKING:
    from certmgr.scheduling.scheduler import JobStatus

T = TypeVar("T")

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refuse it as bad input instead of failing later
MAX_DNS_NAMES = 16


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    next_cursor: str | None


# --- the fleet ----------------------------------------------------------------------------------------------
class DevicePublic(BaseModel):
    """A phone."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    mac: str
    e164: str | None
    device_type: str | None
    software_version: str | None
    ip: str | None
    hostname: str | None
    dns_names: list[str]
    policy_name: str | None
    enrollment: Enrollment
    status: DeviceStatus
    drift: bool
    last_seen_at: datetime | None
    last_contact_me_at: datetime | None
    last_verified_at: datetime | None
    current_certificate_id: int | None
    pending_ip: str | None = Field(
        default=None, description="A move to this address is held until an operator approves (no proof of possession)."
    )
    pending_since: datetime | None = None
    awaiting_approval: bool = Field(
        default=False, description="Pending enrollment or a held address move: POST …/approve ends either."
    )
    created_at: datetime
    updated_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _from_device(cls, data: Any) -> Any:
        """A ``Device`` row: its columns, and whether it awaits an operator (the inventory's rule)."""
        if not isinstance(data, Device):
            return data
        values = {name: getattr(data, name) for name in cls.model_fields if name != "awaiting_approval"}
        return {**values, "awaiting_approval": awaits_approval(data)}


class CertificatePublic(BaseModel):
    """A leaf certificate (no key material)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: int
    serial: str
    subject: str
    sans: list[str]
    key_type: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    issuer_fingerprint: str
    policy_name: str | None
    status: CertificateStatus
    reason: IssueReason
    revoked_at: datetime | None
    revocation_reason: str | None
    previous_certificate_id: int | None
    created_at: datetime


class DeploymentPublic(BaseModel):
    """A deployment, without its transcript."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: int
    certificate_id: int
    state: DeploymentState
    attempts: int
    next_attempt_at: datetime | None
    profile_used: str | None
    last_error: str | None
    contacted_at: datetime | None
    written_at: datetime | None
    verified_at: datetime | None
    finished_at: datetime | None
    check_reply: str | None
    check_info: str | None
    check_probe: str | None
    created_at: datetime
    updated_at: datetime


class DeploymentDetail(DeploymentPublic):
    """A deployment with what the phone reported and the (redacted) transcript."""

    info_raw: str | None
    transcript: list[dict[str, Any]]


class DeviceDetail(BaseModel):
    """A phone with its current certificate, certificate history and deployments (newest first, capped)."""

    device: DevicePublic
    current_certificate: CertificatePublic | None
    certificates: list[CertificatePublic]
    deployments: list[DeploymentPublic]


# --- actions ------------------------------------------------------------------------------------------------
class DeviceCreate(BaseModel):
    """A phone to pre-register before it first reports."""

    model_config = ConfigDict(extra="forbid")

    mac: Annotated[str, Field(min_length=12, max_length=17, pattern=NO_NUL, examples=["00:1A:E8:12:34:56"])]
    ip: Annotated[str, Field(min_length=2, max_length=45, pattern=NO_NUL, examples=["10.1.2.3"])]
    e164: Annotated[str | None, Field(max_length=32, pattern=NO_NUL, examples=["+498912345"])] = None
    model: Annotated[str | None, Field(max_length=64, pattern=NO_NUL, examples=["OpenStage 60"])] = None
    dns_names: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253, pattern=NO_NUL)]],
        Field(max_length=MAX_DNS_NAMES),
    ] = Field(default_factory=list)


class RevokeRequest(BaseModel):
    """Why a certificate is revoked: an RFC 5280 CRLReason name."""

    model_config = ConfigDict(extra="forbid")

    reason: RevocationReason


class DecommissionResponse(BaseModel):
    """The decommissioned phone, the deployments cancelled and certificates revoked, and the CRL listing them."""

    device: DevicePublic
    cancelled_deployments: list[int]
    revoked_certificates: list[int]
    crl_number: int | None


class RevokeResponse(BaseModel):
    """The revoked certificate, its replacement being deployed (if the phone needed one) and the CRL number."""

    certificate: CertificatePublic
    replacement_certificate_id: int | None
    replacement_deployment_id: int | None
    crl_number: int | None


class RenewResponse(BaseModel):
    """The new certificate and its queued deployment."""

    certificate_id: int
    deployment_id: int
    serial: str


class RetryResponse(BaseModel):
    """The deployment now due, and the failed or cancelled one it continues (``null`` if the same row)."""

    deployment: DeploymentPublic
    retried_from: int | None


# --- tokens -------------------------------------------------------------------------------------------------
class TokenPublic(BaseModel):
    """A token's public facts (never its value or hash)."""

    id: int
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, info: TokenInfo) -> TokenPublic:
        """The public facts of ``info``."""
        return cls(
            id=info.id,
            name=info.name,
            role=info.role.value,
            created_at=info.created_at,
            revoked_at=info.revoked_at,
            last_used_at=info.last_used_at,
        )


# --- CA -----------------------------------------------------------------------------------------------------
class ChainCertificate(BaseModel):
    """One certificate of the CA chain (public facts only)."""

    role: str
    subject: str
    issuer: str
    serial: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    days_left: int

    @classmethod
    def of(cls, role: str, cert: x509.Certificate, now: datetime) -> ChainCertificate:
        """The public facts of ``cert`` (days left counted from ``now``)."""
        return cls(
            role=role,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=format(cert.serial_number, "x"),
            fingerprint_sha256=fingerprint_sha256(cert),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            days_left=(cert.not_valid_after_utc - now) // timedelta(days=1),
        )


class CRLSummary(BaseModel):
    """The published CRL."""

    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    stale: bool


class CAStatus(BaseModel):
    """The CA chain (issuing first) and the published CRL (``null`` before the first one)."""

    chain: list[ChainCertificate]
    crl: CRLSummary | None


# --- policies -----------------------------------------------------------------------------------------------
class PolicySummary(BaseModel):
    """What a policy decides, in brief."""

    name: str
    description: str
    source: str
    digest: str
    catch_all: bool
    key_type: str
    validity: str
    renewal: str
    pkcs12_profiles: list[str]
    enrollment: str
    windows: int

    @classmethod
    def of(cls, policy: Policy) -> PolicySummary:
        """The summary of ``policy``."""
        renewal = policy.renewal
        if renewal.renew_before is not None:
            rule = f"{format_duration(renewal.renew_before)} before expiry"
        else:
            rule = f"after {renewal.renew_at_fraction} of the lifetime"
        return cls(
            name=policy.name,
            description=policy.description,
            source=policy.source,
            digest=policy.digest,
            catch_all=policy.is_catch_all,
            key_type=policy.key_type.value,
            validity=format_duration(policy.validity),
            renewal=rule,
            pkcs12_profiles=[p.value for p in policy.pkcs12.profiles],
            enrollment=str(policy.enrollment),
            windows=len(policy.windows),
        )


class PolicyProblem(BaseModel):
    """One problem of a policy document: the dotted key and the reason."""

    key: str
    reason: str


class PolicyInvalid(BaseModel):
    """422 body of ``POST /api/v1/policies/validate``."""

    error: str
    detail: str
    errors: list[PolicyProblem]


class EffectivePolicy(BaseModel):
    """The policy that governs a phone, why, and what its next certificate would look like under it."""

    device_id: int
    mac: str
    policy: PolicySummary
    assigned: str | None  # the policy recorded for the phone
    selected_now: str  # the policy the selectors pick today (first match)
    source: PolicySource  # assigned | selected (none recorded) | replaced (the recorded one is gone)
    reason: str  # the same, in words
    subject: str
    dns_names: list[str]
    ip_addresses: list[str]


# --- audit --------------------------------------------------------------------------------------------------
class AuditVerifyResult(BaseModel):
    """Outcome of verifying the chain and every signed checkpoint."""

    ok: bool
    checked: int
    checkpoints: int
    first_bad_seq: int | None
    reason: str | None


class AuditEventPublic(BaseModel):
    """One audit event as stored, with its chain hashes."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject_type: str | None
    subject_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class CheckpointResult(BaseModel):
    """A checkpoint just made (or null fields when the head was already checkpointed)."""

    created: bool
    seq: int | None
    hash: str | None


# --- scheduler ----------------------------------------------------------------------------------------------
class JobOut(BaseModel):
    """One periodic job as this process knows it."""

    id: str
    interval_seconds: float
    singleton: bool
    next_run_at: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_outcome: Literal["running", "ok", "failed", "skipped"] | None
    last_detail: str | None
    runs: int

    @classmethod
    def of(cls, job: JobStatus) -> JobOut:
        """What ``job`` shows."""
        return cls(
            id=job.id,
            interval_seconds=job.interval_seconds,
            singleton=job.singleton,
            next_run_at=job.next_run_at,
            last_started_at=job.last_started_at,
            last_finished_at=job.last_finished_at,
            last_outcome=job.last_outcome,
            last_detail=job.last_detail,
            runs=job.runs,
        )


class SchedulerOut(BaseModel):
    """Whether this process runs the scheduler, and its jobs (in start order)."""

    running: bool
    jobs: list[JobOut]


__all__ = [
    "MAX_DNS_NAMES",
    "NO_NUL",
    "AuditEventPublic",
    "AuditVerifyResult",
    "CAStatus",
    "CRLSummary",
    "CertificatePublic",
    "ChainCertificate",
    "CheckpointResult",
    "DecommissionResponse",
    "DeploymentDetail",
    "DeploymentPublic",
    "DeviceCreate",
    "DeviceDetail",
    "DevicePublic",
    "EffectivePolicy",
    "JobOut",
    "Page",
    "PolicyInvalid",
    "PolicyProblem",
    "PolicySummary",
    "RenewResponse",
    "RetryResponse",
    "RevokeRequest",
    "RevokeResponse",
    "SchedulerOut",
    "TokenPublic",
]
