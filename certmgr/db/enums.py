"""The value sets of the certmgr tables (the ``StrEnum`` s whose values enum-like columns hold). Pure."""

from __future__ import annotations

from enum import StrEnum


# --- value sets -------------------------------------------------------------------------------------------
class CARole(StrEnum):
    ROOT = "root"
    ISSUING = "issuing"


class Enrollment(StrEnum):
    """Whether certmgr may manage a phone."""

    PENDING = "pending"
    APPROVED = "approved"
    DECOMMISSIONED = "decommissioned"


class DeviceStatus(StrEnum):
    """Where a phone's certificate stands."""

    NEW = "new"
    ENROLLED = "enrolled"
    VERIFIED = "verified"
    FAILED = "failed"
    DRIFT = "drift"
    DECOMMISSIONED = "decommissioned"


class CertificateStatus(StrEnum):
    PENDING = "pending"  # issued, not yet verified on the phone
    ACTIVE = "active"  # the phone's current certificate
    SUPERSEDED = "superseded"
    REVOKED = "revoked"
    EXPIRED = "expired"


class IssueReason(StrEnum):
    """Why a certificate was issued."""

    ENROLLMENT = "enrollment"
    RENEWAL = "renewal"
    IP_CHANGE = "ip-change"
    POLICY_CHANGE = "policy-change"
    CA_ROTATION = "ca-rotation"
    REVOCATION = "revocation"
    DRIFT = "drift"
    MANUAL = "manual"


class DeploymentState(StrEnum):
    QUEUED = "queued"
    CONTACTING = "contacting"
    AWAITING_CALLBACK = "awaiting_callback"
    WRITTEN = "written"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_DEPLOYMENT_STATES


_FINAL_DEPLOYMENT_STATES = frozenset(
    {DeploymentState.VERIFIED, DeploymentState.FAILED, DeploymentState.SUPERSEDED, DeploymentState.CANCELLED}
)


class CheckReply(StrEnum):
    """Outcome of the phone's own reply to the certificate write."""

    PASSED = "passed"
    FAILED = "failed"


class CheckInfo(StrEnum):
    """Outcome of comparing the phone's reported certificate info with what was written."""

    VERIFIED = "verified"
    MISMATCH = "mismatch"
    UNDECIDED = "undecided"


class VerifyFailure(StrEnum):
    """How the last verification of an accepted write failed (see :mod:`certmgr.deploy.verdict`)."""

    DRIFT = "drift"  # the phone reports or serves another certificate than the one written
    UNDECIDED = "undecided"  # nothing contradicts the write, nothing proves it (info undecided, WBM unreachable)


class CheckProbe(StrEnum):
    """Outcome of the TLS probe against the phone's WBM."""

    PASSED = "passed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"


__all__ = [
    "CARole",
    "CertificateStatus",
    "CheckInfo",
    "CheckProbe",
    "CheckReply",
    "DeploymentState",
    "DeviceStatus",
    "Enrollment",
    "IssueReason",
    "VerifyFailure",
]
