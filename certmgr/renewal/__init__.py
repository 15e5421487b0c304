"""Renewal: *when* a certificate is renewed (the planner) and *why* a phone gets a new one (the triggers).

Both are pure: no I/O and no clock reads, ``now`` is always an argument. The scheduler and the deployment
pipeline call them; they never call back.
"""

from certmgr.renewal.planner import (
    SAFETY_FRACTION,
    CertId,
    PlanReason,
    RenewalInput,
    RenewalPlan,
    base_time,
    jitter_fraction,
    jitter_offset,
    latest_time,
    plan_many,
    plan_renewal,
    spread,
)
from certmgr.renewal.triggers import (
    VALIDITY_TOLERANCE,
    CertFacts,
    DeviceFacts,
    PolicyFacts,
    Reason,
    Trigger,
    reissue_reasons,
)

__all__ = [
    "SAFETY_FRACTION",
    "VALIDITY_TOLERANCE",
    "CertFacts",
    "CertId",
    "DeviceFacts",
    "PlanReason",
    "PolicyFacts",
    "Reason",
    "RenewalInput",
    "RenewalPlan",
    "Trigger",
    "base_time",
    "jitter_fraction",
    "jitter_offset",
    "latest_time",
    "plan_many",
    "plan_renewal",
    "reissue_reasons",
    "spread",
]
