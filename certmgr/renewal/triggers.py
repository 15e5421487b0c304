"""Why a phone needs a new certificate now: pure reissue triggers. No I/O, no clock: ``now`` is an argument.

:func:`reissue_reasons` compares the facts of a phone's current certificate with the phone's inventory, its
policy and the active issuing CA, and returns every trigger that fires, each with a human explanation:

* ``revoked`` — the certificate is revoked.
* ``ca-rotation`` — it was issued by another CA than the active issuing CA.
* ``policy-change`` — the policy changed (another digest or policy name) **in a way that changes the
  certificate** (see below).
* ``address-change`` — the phone's IP address(es) or names are not the ones in the certificate's SANs.
* ``drift`` — the phone was seen serving something else than its certificate (``Device.drift``).
* ``manual`` — an operator asked for a new certificate.
* ``renewal-due`` — the planner's due time (:func:`certmgr.renewal.planner.plan_renewal`) has come, or the
  certificate has expired.

Which policy changes matter. A new policy digest alone does not reissue 10,000 certificates: only a change to
what the certificate *is* does —

* ``[key] type`` differs from the certificate's key type;
* ``[validity] duration`` is now *shorter* than the certificate's lifetime (beyond the issuance backdate); a
  longer validity takes effect at the next normal renewal;
* the ``[subject]`` templates render to another subject for this phone;
* the ``[san]`` settings render to other SANs for this phone (``san.ip`` switched, ``san.dns`` templates).

Changes to ``description``, ``[match]``, ``[renewal]``, ``[[windows]]``, ``[enrollment]`` and ``[pkcs12]``
(the packaging, not the certificate) do not reissue; they apply to the next certificate. If the certificate
carries no policy digest (imported or legacy), the same field comparison decides. When the digest is
unchanged, a difference in SANs can only come from the phone, so it is reported as ``address-change``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from certmgr.clock import ensure_utc
from certmgr.identity import DeviceIdentity, IPAddress, ip_address
from certmgr.pki.ca import CLOCK_SKEW_BACKDATE
from certmgr.pki.types import KeyType
from certmgr.policy.model import Policy
from certmgr.policy.templates import render_leaf_names
from certmgr.policy.windows import MaintenanceWindow
from certmgr.renewal.planner import CertId, RenewalInput, RenewalPlan, plan_renewal

#: A certificate may be this much longer-lived than its policy's validity without counting as a change:
#: issuance backdates ``not_before`` for clock skew, and a minute of rounding slack.
VALIDITY_TOLERANCE = CLOCK_SKEW_BACKDATE + timedelta(minutes=1)


class Trigger(StrEnum):
    """Why a phone gets a new certificate."""

    REVOKED = "revoked"
    CA_ROTATION = "ca-rotation"
    POLICY_CHANGE = "policy-change"
    ADDRESS_CHANGE = "address-change"
    DRIFT = "drift"
    MANUAL = "manual"
    RENEWAL_DUE = "renewal-due"

    @property
    def issue_reason(self) -> str:
        """The matching ``IssueReason`` value stored on the new certificate (``certmgr.db.models``)."""
        return _ISSUE_REASON[self]


_ISSUE_REASON: dict[Trigger, str] = {
    Trigger.REVOKED: "revocation",
    Trigger.CA_ROTATION: "ca-rotation",
    Trigger.POLICY_CHANGE: "policy-change",
    Trigger.ADDRESS_CHANGE: "ip-change",
    Trigger.DRIFT: "drift",
    Trigger.MANUAL: "manual",
    Trigger.RENEWAL_DUE: "renewal",
}


@dataclass(frozen=True)
class Reason:
    """One fired trigger with a one-line human explanation and structured details (JSON-friendly)."""

    trigger: Trigger
    explanation: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def issue_reason(self) -> str:
        """See :attr:`Trigger.issue_reason`."""
        return self.trigger.issue_reason


class _CertificateRow(Protocol):
    """The attributes of ``certmgr.db.models.Certificate`` that :meth:`CertFacts.from_row` reads."""

    @property
    def id(self) -> int | None: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def sans(self) -> list[str]: ...
    @property
    def subject(self) -> str: ...
    @property
    def key_type(self) -> KeyType: ...
    @property
    def issuer_fingerprint(self) -> str: ...
    @property
    def policy_name(self) -> str | None: ...
    @property
    def policy_digest(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def revoked_at(self) -> datetime | None: ...


class _DeviceRow(Protocol):
    """The attributes of ``certmgr.db.models.Device`` that :meth:`DeviceFacts.from_row` reads."""

    @property
    def mac(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def dns_names(self) -> Sequence[str]: ...
    @property
    def drift(self) -> bool: ...


@dataclass(frozen=True)
class CertFacts:
    """What matters about a phone's current certificate.

    ``sans`` are spelled as stored in ``Certificate.sans``: ``"DNS:name"`` and ``"IP:address"``. ``subject`` is
    the RFC 4514 string, or None if unknown (then the subject is not compared).
    """

    cert_id: CertId
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    key_type: KeyType
    issuer_fingerprint: str
    policy_name: str | None = None
    policy_digest: str | None = None
    subject: str | None = None
    revoked: bool = False

    @classmethod
    def from_row(cls, row: _CertificateRow) -> CertFacts:
        """Facts of a ``certmgr.db.models.Certificate`` row (or anything with the same attributes)."""
        return cls(
            cert_id=row.id if row.id is not None else "",
            not_before=row.not_before,
            not_after=row.not_after,
            sans=tuple(row.sans),
            key_type=KeyType(row.key_type),
            issuer_fingerprint=row.issuer_fingerprint,
            policy_name=row.policy_name,
            policy_digest=row.policy_digest,
            subject=row.subject,
            revoked=str(row.status) == "revoked" or row.revoked_at is not None,
        )

    @functools.cached_property
    def ip_sans(self) -> frozenset[IPAddress]:
        """The IP address SANs (parsed once per instance: the triggers read them more than once)."""
        return frozenset(ip_address(s[3:]) for s in self.sans if s.upper().startswith("IP:"))

    @functools.cached_property
    def dns_sans(self) -> frozenset[str]:
        """The DNS SANs, lower-cased."""
        return frozenset(s[4:].lower() for s in self.sans if s.upper().startswith("DNS:"))


@dataclass(frozen=True)
class DeviceFacts:
    """What matters about the phone now: its key (MAC), addresses, explicit DNS names and the two flags."""

    mac: str
    ips: tuple[IPAddress, ...] = ()
    dns_names: tuple[str, ...] = ()
    drift: bool = False
    manual: bool = False

    @classmethod
    def from_row(cls, row: _DeviceRow, *, manual: bool = False) -> DeviceFacts:
        """Facts of a ``certmgr.db.models.Device`` row; ``manual`` is the operator's explicit request.

        Raises:
            ValueError: if the row's ``ip`` is not an IP address.
        """
        return cls(
            mac=row.mac,
            ips=(ip_address(row.ip),) if row.ip else (),
            dns_names=tuple(name.lower() for name in row.dns_names),
            drift=row.drift,
            manual=manual,
        )


@dataclass(frozen=True)
class PolicyFacts:
    """The phone's current policy, reduced to what the triggers compare.

    ``expected_subject`` and ``expected_dns`` are the subject (RFC 4514) and DNS SANs the policy renders for
    this phone today; None means "not rendered", and that comparison is skipped.
    """

    name: str
    digest: str
    key_type: KeyType
    validity: timedelta
    san_ip: bool
    expected_subject: str | None = None
    expected_dns: frozenset[str] | None = None
    renew_before: timedelta | None = None
    renew_at_fraction: float | None = None
    jitter: timedelta = timedelta(0)
    windows: tuple[MaintenanceWindow, ...] = ()

    @classmethod
    def from_policy(cls, policy: Policy, identity: DeviceIdentity | None = None) -> PolicyFacts:
        """Facts of ``policy``; with the phone's ``identity`` the expected subject and DNS names are rendered.

        Raises:
            InputError: if the policy cannot render names for ``identity`` (see
                :func:`certmgr.policy.templates.render_leaf_names`).
        """
        subject: str | None = None
        dns: frozenset[str] | None = None
        if identity is not None:
            names = render_leaf_names(policy, identity)
            subject = names.subject.rfc4514_string()
            dns = frozenset(names.dns_names)
        return cls(
            name=policy.name,
            digest=policy.digest,
            key_type=policy.key_type,
            validity=policy.validity,
            san_ip=policy.san.ip,
            expected_subject=subject,
            expected_dns=dns,
            renew_before=policy.renewal.renew_before,
            renew_at_fraction=policy.renewal.renew_at_fraction,
            jitter=policy.renewal.jitter,
            windows=policy.windows,
        )


def _fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower()


def _names(values: Iterable[object]) -> list[str]:
    return sorted(str(v) for v in values)


def renewal_input(cert: CertFacts, device: DeviceFacts, policy: PolicyFacts) -> RenewalInput:
    """The planner's view of ``cert`` under ``policy``'s ``[renewal]`` and ``[[windows]]``."""
    return RenewalInput(
        cert_id=cert.cert_id,
        device_key=device.mac,
        not_before=cert.not_before,
        not_after=cert.not_after,
        renew_before=policy.renew_before,
        renew_at_fraction=policy.renew_at_fraction,
        jitter=policy.jitter,
        windows=policy.windows,
    )


def reissue_reasons(
    cert: CertFacts,
    device: DeviceFacts,
    policy: PolicyFacts,
    issuing_ca_fingerprint: str | None,
    now: datetime,
    plan: RenewalPlan | None = None,
) -> list[Reason]:
    """Every trigger that fires for ``device`` and its current certificate ``cert``, in the order of
    :class:`Trigger`; empty if the certificate can stay.

    ``plan`` is the certificate's renewal plan at ``now`` if the caller has made it already (the renewal run's
    :func:`~certmgr.renewal.service.decide`: a row whose names may have changed comes here planned, so it is not
    planned twice, profiled in ``bench/fleet_year.py``); otherwise it is planned here.

    ``issuing_ca_fingerprint`` is the SHA-256 (hex, colons and case ignored) of the active issuing CA, or None
    if there is none (then ``ca-rotation`` is not checked).

    Raises:
        ValueError: if ``now`` or the certificate's dates are naive, or its dates are inconsistent.
    """
    now = ensure_utc(now)
    reasons = revocation_and_ca_reasons(cert.cert_id, cert.revoked, cert.issuer_fingerprint, issuing_ca_fingerprint)
    policy_changed = cert.policy_digest != policy.digest or cert.policy_name != policy.name
    if policy_changed:
        changes = _policy_changes(cert, device, policy)
        if changes:
            reasons.append(
                Reason(
                    Trigger.POLICY_CHANGE,
                    f"policy {policy.name!r} changed what the certificate must be: {'; '.join(changes)}",
                    {"policy": policy.name, "digest": policy.digest, "changes": changes},
                )
            )
    address = _address_changes(cert, device, policy, policy_changed)
    if address:
        reasons.append(
            Reason(
                Trigger.ADDRESS_CHANGE,
                f"the phone's addresses differ from the certificate: {'; '.join(address)}",
                {"changes": address},
            )
        )
    plan = plan or plan_renewal(renewal_input(cert, device, policy), now)
    return reasons + drift_request_and_date_reasons(device.drift, device.manual, plan, cert.not_after, now)


def revocation_and_ca_reasons(
    cert_id: CertId, revoked: bool, issuer_fingerprint: str, issuing_ca_fingerprint: str | None
) -> list[Reason]:
    """The first two triggers of :func:`reissue_reasons` (``revoked``, ``ca-rotation``), which look only at the
    certificate's own state. A caller that knows the policy and address triggers cannot fire (the renewal run's
    :func:`~certmgr.renewal.service.decide`) gets every reason from this and
    :func:`drift_request_and_date_reasons`, in :class:`Trigger` order."""
    reasons: list[Reason] = []
    if revoked:
        reasons.append(Reason(Trigger.REVOKED, f"certificate {cert_id} is revoked"))
    if (
        issuing_ca_fingerprint
        and issuer_fingerprint != issuing_ca_fingerprint
        and _fingerprint(issuer_fingerprint) != _fingerprint(issuing_ca_fingerprint)
    ):
        reasons.append(
            Reason(
                Trigger.CA_ROTATION,
                f"certificate was issued by CA {_fingerprint(issuer_fingerprint)[:16]}…, the active issuing CA "
                f"is {_fingerprint(issuing_ca_fingerprint)[:16]}…",
                {"issuer": _fingerprint(issuer_fingerprint), "active": _fingerprint(issuing_ca_fingerprint)},
            )
        )
    return reasons


def drift_request_and_date_reasons(
    drift: bool, manual: bool, plan: RenewalPlan, not_after: datetime, now: datetime
) -> list[Reason]:
    """The last three triggers of :func:`reissue_reasons` (``drift``, ``manual``, ``renewal-due``); ``plan`` is
    the certificate's renewal plan at ``now``."""
    reasons: list[Reason] = []
    if drift:
        reasons.append(Reason(Trigger.DRIFT, "the phone does not serve the certificate certmgr deployed (drift)"))
    if manual:
        reasons.append(Reason(Trigger.MANUAL, "an operator requested a new certificate"))
    if plan.due_at <= now:
        what = (
            f"certificate expired at {not_after.isoformat()}"
            if plan.reason == "expired"
            else f"renewal was due (planned before {plan.latest.isoformat()}, expires {not_after.isoformat()})"
        )
        reasons.append(Reason(Trigger.RENEWAL_DUE, what, {"plan": plan.reason, "not_after": not_after.isoformat()}))
    return reasons


def _policy_changes(cert: CertFacts, device: DeviceFacts, policy: PolicyFacts) -> list[str]:
    """The relevant differences between the certificate and what ``policy`` would issue today."""
    changes: list[str] = []
    if cert.key_type != policy.key_type:
        changes.append(f"key type {cert.key_type.value} → {policy.key_type.value}")
    lifetime = cert.not_after - cert.not_before
    if lifetime > policy.validity + VALIDITY_TOLERANCE:
        changes.append(f"validity {lifetime} is longer than the policy's {policy.validity}")
    if policy.expected_subject is not None and cert.subject is not None and cert.subject != policy.expected_subject:
        changes.append(f"subject {cert.subject!r} → {policy.expected_subject!r}")
    if policy.san_ip and device.ips and not cert.ip_sans:
        changes.append("IP SANs added (san.ip)")
    elif not policy.san_ip and cert.ip_sans:
        changes.append("IP SANs removed (san.ip)")
    if policy.expected_dns is not None and cert.dns_sans != policy.expected_dns:
        changes.append(
            f"DNS SANs {_names(cert.dns_sans)} → {_names(policy.expected_dns)} (san.dns)",
        )
    return changes


def _address_changes(cert: CertFacts, device: DeviceFacts, policy: PolicyFacts, policy_changed: bool) -> list[str]:
    """Differences between the certificate's SANs and the phone's current addresses and names."""
    changes: list[str] = []
    cert_ips = cert.ip_sans
    device_ips = frozenset(device.ips)
    # Without a known address the phone cannot be reached or named by IP: nothing to compare.
    if policy.san_ip and device_ips and cert_ips and cert_ips != device_ips:
        changes.append(f"IP {_names(cert_ips)} → {_names(device_ips)}")
    missing = sorted({name.lower() for name in device.dns_names} - cert.dns_sans)
    if missing:
        changes.append(f"DNS names {missing} missing")
    if not policy_changed and not missing and policy.expected_dns is not None and cert.dns_sans != policy.expected_dns:
        changes.append(f"DNS {_names(cert.dns_sans)} → {_names(policy.expected_dns)}")
    return changes
