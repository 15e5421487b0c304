"""Who a phone is, and which policy applies to it: the one answer every path uses (deployment, renewal,
reconcile, operator actions, the API, the CLI, the console).

**Who is this phone** — :func:`identity_of` turns what the inventory knows about a phone (a
:class:`~certmgr.db.models.Device` row, or any row with the same fields) into the
:class:`~certmgr.identity.DeviceIdentity` that policy selectors and name templates see: MAC, IP, DNS names,
E.164 number, model, firmware and host name. Every template variable (:data:`certmgr.policy.TEMPLATE_VARIABLES`)
is fed from here, so a certificate or PKCS#12 built on any path gets the same names.

**Which policy applies** — :func:`policy_for`:

* the policy recorded for the phone (``device.policy_name``) if it is still loaded (``assigned``);
* otherwise the first policy whose selectors match the phone: either no policy was recorded (``selected``), or
  the recorded one no longer exists because its file was removed or renamed (``replaced``). The phone stays
  managed under the policy that matches it now; its next renewal run sees the policy change and reissues
  under the new policy (trigger ``policy-change``, within the rate limits).

Pure: no session, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from certmgr.identity import DeviceIdentity, parse_ip
from certmgr.policy import Policy, PolicySet


class PhoneRecord(Protocol):
    """What the inventory stores about a phone (a :class:`~certmgr.db.models.Device` row has these fields)."""

    @property
    def mac(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def dns_names(self) -> Sequence[str]: ...
    @property
    def e164(self) -> str | None: ...
    @property
    def device_type(self) -> str | None: ...
    @property
    def software_version(self) -> str | None: ...
    @property
    def hostname(self) -> str | None: ...


def identity_of(phone: PhoneRecord) -> DeviceIdentity:
    """The phone's identity as policies and templates see it (every field the inventory knows).

    Raises:
        InputError: if the stored IP address is not an IP address.
    """
    return DeviceIdentity(
        mac=phone.mac,
        ips=(parse_ip(phone.ip),) if phone.ip else (),
        dns_names=tuple(phone.dns_names),
        e164=phone.e164,
        model=phone.device_type,
        firmware=phone.software_version,
        hostname=phone.hostname,
    )


class PolicySource(StrEnum):
    """Why a policy applies to a phone."""

    ASSIGNED = "assigned"  # the policy recorded for the phone
    SELECTED = "selected"  # none recorded: the first policy whose selectors match
    REPLACED = "replaced"  # the recorded policy no longer exists: the first match instead


@dataclass(frozen=True)
class PolicyChoice:
    """The policy that applies to a phone, why, and the name recorded for the phone."""

    policy: Policy
    source: PolicySource
    recorded: str | None

    @property
    def reason(self) -> str:
        """One sentence for people (API, console, CLI)."""
        if self.source is PolicySource.ASSIGNED:
            return f"policy {self.policy.name!r} is assigned to the phone"
        if self.source is PolicySource.SELECTED:
            return f"no policy assigned; {self.policy.name!r} is the first policy whose selectors match"
        return (
            f"the assigned policy {self.recorded!r} no longer exists; "
            f"{self.policy.name!r} is the first policy whose selectors match"
        )


def assigned_policy(policies: PolicySet, recorded: str | None) -> Policy | None:
    """The phone's recorded policy when it still exists (:func:`policy_for`'s first rule, which needs no identity:
    a caller with many phones builds an identity only for the others)."""
    return policies.get(recorded) if recorded is not None and recorded in policies.names else None


def policy_for(policies: PolicySet, recorded: str | None, identity: DeviceIdentity) -> PolicyChoice:
    """Which policy applies to the phone ``identity`` whose recorded policy is ``recorded`` (module docstring).

    Raises:
        PolicyError: if no policy is recorded (or it is gone) and none matches; cannot happen with a policy set
            from the loader, whose ``default.toml`` matches every phone.
    """
    assigned = assigned_policy(policies, recorded)
    if assigned is not None:
        return PolicyChoice(assigned, PolicySource.ASSIGNED, recorded)
    source = PolicySource.SELECTED if recorded is None else PolicySource.REPLACED
    return PolicyChoice(policies.select(identity), source, recorded)


def phone_policy(policies: PolicySet, phone: PhoneRecord, recorded: str | None) -> tuple[DeviceIdentity, Policy]:
    """:func:`identity_of` and :func:`policy_for` together: the identity and the policy that applies.

    Raises:
        InputError: stored IP not an IP address. PolicyError: as :func:`policy_for`.
    """
    identity = identity_of(phone)
    return identity, policy_for(policies, recorded, identity).policy


__all__ = [
    "PhoneRecord",
    "PolicyChoice",
    "PolicySource",
    "assigned_policy",
    "identity_of",
    "phone_policy",
    "policy_for",
]
