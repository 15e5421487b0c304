"""Effects: what one phone message changes — the interaction's effects applied to the inventory and the
deployment, in one transaction with their audit events.

:func:`apply_effects` hands each :data:`~certmgr.wpi.effects.Effect` to exactly one handler through a ``match``
that ends in ``assert_never``: a new effect type that nobody handles is a type-checking error, not a silent
no-op. Effects that change the deployment are applied only inside an interaction that D10 admitted
(:mod:`certmgr.deploy.admission`) and only while the deployment is unfinished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, assert_never

from cryptography import x509
from sqlmodel import Session

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import add_transcript, move
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    Certificate,
    CheckInfo,
    CheckReply,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
)
from certmgr.deploy.profiles import next_profile
from certmgr.deploy.queue import retry_or_fail
from certmgr.deploy.records import deployment_event, hold, interaction_lease, load_deployment
from certmgr.inventory.enrollment import AddressClaim, record_report
from certmgr.inventory.phones import phone_policy
from certmgr.wpi.certinfo import ExpectedCert, InfoVerdict, parse_certificate_info
from certmgr.wpi.certjudge import judge_certificate_info
from certmgr.wpi.effects import (
    CertificateInfoReceived,
    Effect,
    InteractionFinished,
    PhoneBusy,
    PhoneCleanedUp,
    PhoneReported,
    ProtocolViolation,
    SecurityRefused,
    WriteAccepted,
    WriteRejected,
    WriteSent,
)

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState
_INFO_CHECK = {
    InfoVerdict.VERIFIED: CheckInfo.VERIFIED,
    InfoVerdict.MISMATCH: CheckInfo.MISMATCH,
    InfoVerdict.UNDECIDED: CheckInfo.UNDECIDED,
}


@dataclass(frozen=True)
class Applied:
    """Follow-ups for the adapter: probe this deployment; the phone was told send-solicited; prove these address
    claims (TLS-probe the claimed address, then :func:`certmgr.inventory.enrollment.resolve_claim`)."""

    probe_deployment_id: int | None = None
    busy_mac: str | None = None
    claims: tuple[AddressClaim, ...] = ()


@dataclass
class _Step:
    """One message's context while its effects are applied (one transaction)."""

    runtime: Runtime
    session: Session
    now: datetime
    peer: str | None
    authorised: bool
    dep: Deployment | None
    device: Device | None
    events: list[NewEvent] = field(default_factory=list)
    probe_id: int | None = None
    busy_mac: str | None = None
    claims: list[AddressClaim] = field(default_factory=list)
    subject_mac: str | None = None

    @property
    def live(self) -> tuple[Deployment, Device] | None:
        """The deployment and phone an admitted interaction may change (``None``: leave them alone)."""
        if self.dep is None or self.device is None or not self.authorised or self.dep.state.is_final:
            return None
        return self.dep, self.device


def apply_effects(
    runtime: Runtime,
    *,
    effects: Sequence[Effect],
    deployment_id: int | None,
    authorised: bool,
    peer: str | None,
    now: datetime,
    transcript: Sequence[dict[str, Any]],
    subject_mac: str | None = None,
) -> Applied:
    """Apply one phone message's effects and the redacted transcript in one transaction with audit events.
    ``subject_mac`` names the phone in audit records when no deployment is given (a refusal).

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    with session_scope(runtime.engine) as session:
        dep, device = load_deployment(session, deployment_id) if deployment_id is not None else (None, None)
        step = _Step(runtime, session, now, peer, authorised, dep, device, subject_mac=subject_mac)
        for effect in effects:
            _apply(step, effect)
        if step.dep is not None:
            add_transcript(step.dep, transcript)
            if authorised and not step.dep.state.is_final and step.dep.state is not S.QUEUED:
                hold(runtime.settings, step.dep, interaction_lease(runtime.settings, now))
            session.add(step.dep)
        if step.device is not None:
            session.add(step.device)
        append_events(session, now, step.events)
    return Applied(step.probe_id, step.busy_mac, tuple(step.claims))


def _apply(step: _Step, effect: Effect) -> None:
    match effect:
        case PhoneReported():
            _phone_reported(step, effect)
        case SecurityRefused():
            _security_refused(step, effect)
        case ProtocolViolation():
            _protocol_violation(step, effect)
        case WriteSent():
            _write_sent(step)
        case WriteAccepted():
            _write_accepted(step, effect)
        case WriteRejected():
            _write_rejected(step, effect)
        case PhoneBusy():
            _phone_busy(step)
        case CertificateInfoReceived():
            _certificate_info(step, effect)
        case PhoneCleanedUp():
            _phone_cleaned_up(step, effect)
        case InteractionFinished():
            pass  # the adapter drops the interaction; nothing is stored
        case _:
            assert_never(effect)


def _phone_reported(step: _Step, effect: PhoneReported) -> None:
    if effect.mac is None:
        step.events.append(NewEvent("wpi", "wpi.report-without-mac", "peer", step.peer or "", {}))
        return
    items = {it.name: it.value for it in effect.items if it.index in (None, 0)}
    result = record_report(
        step.session,
        mac=effect.mac,
        items=items,
        reason=effect.reason.value,
        peer=step.peer,
        now=step.now,
        policies=step.runtime.policies,
        trusted_proxies=step.runtime.settings.trusted_proxies,
    )
    if result.claim is not None:
        step.claims.append(result.claim)
    if step.device is not None and result.device is not None and result.device.id == step.device.id:
        step.device = result.device


def _mac(step: _Step) -> str:
    return step.device.mac if step.device is not None else (step.subject_mac or "")


def _security_refused(step: _Step, effect: SecurityRefused) -> None:
    details = {"reason": effect.reason, "peer": step.peer, "deployment": effect.deployment_id}
    step.events.append(NewEvent("wpi", "wpi.refused", "device", _mac(step), details))


def _protocol_violation(step: _Step, effect: ProtocolViolation) -> None:
    details = {"reason": effect.reason, "peer": step.peer}
    step.events.append(NewEvent("wpi", "wpi.violation", "device", _mac(step), details))
    live = step.live
    if live is not None and live[0].state in (S.AWAITING_CALLBACK, S.WRITTEN):
        retry_or_fail(step.runtime, *live, step.now, f"protocol violation: {effect.reason}", step.events)


def _profile_name(dep: Deployment) -> str | None:
    return dep.profile_used.value if dep.profile_used is not None else None


def _write_sent(step: _Step) -> None:
    live = step.live
    if live is not None:
        live[0].write_sent_at = step.now  # committed before the reply with the WriteItems leaves


def _write_accepted(step: _Step, effect: WriteAccepted) -> None:
    live = step.live
    if live is None:
        return
    dep, device = live
    move(dep, S.WRITTEN, step.now)
    dep.written_at = step.now
    dep.check_reply = CheckReply.PASSED
    if effect.already_present:  # an earlier write whose answer never arrived had landed: not written again
        step.events.append(deployment_event("deployment.write-confirmed", dep, device.mac))
        return
    step.events.append(deployment_event("deployment.written", dep, device.mac, profile=_profile_name(dep)))


def _write_rejected(step: _Step, effect: WriteRejected) -> None:
    live = step.live
    if live is None:
        return
    dep, device = live
    dep.check_reply = CheckReply.FAILED
    dep.profile_index += 1
    step.events.append(
        deployment_event(
            "deployment.write-rejected",
            dep,
            device.mac,
            reason=effect.reason,
            item_status=effect.item_status,
            profile=_profile_name(dep),
        )
    )
    _identity, policy = phone_policy(step.runtime.policies, device, device.policy_name)
    # The successor of the refused profile, not a re-derived order: the remembered profile may change before the
    # next attempt, and a rotation from a new start could offer the refused one again.
    nxt = next_profile(policy.pkcs12.profiles, dep.profile_used, dep.profile_index)
    if nxt is None:
        move(dep, S.FAILED, step.now, error=effect.reason)
        device.status = DeviceStatus.FAILED
        step.events.append(
            deployment_event("deployment.failed", dep, device.mac, reason="every PKCS#12 profile refused")
        )
        return
    dep.profile_used = nxt  # the profile of the next write (see admission._write_job)
    retry_or_fail(step.runtime, dep, device, step.now, f"write rejected: {effect.reason}", step.events)


def _phone_busy(step: _Step) -> None:
    live = step.live
    if live is None:
        return
    dep, device = live
    step.busy_mac = device.mac
    step.events.append(deployment_event("deployment.busy", dep, device.mac))
    retry_or_fail(step.runtime, dep, device, step.now, "phone busy", step.events)


def _certificate_info(step: _Step, effect: CertificateInfoReceived) -> None:
    live = step.live
    if live is None:
        return
    dep, device = live
    with step.session.no_autoflush:  # the step's changes (a WriteAccepted's too) are written once, at the end
        cert_row = step.session.get(Certificate, dep.certificate_id)
    assert cert_row is not None
    dep.info_raw = effect.raw
    expected = ExpectedCert.from_certificate(x509.load_pem_x509_certificate(cert_row.cert_pem.encode()))
    verdict = (
        judge_certificate_info(parse_certificate_info(effect.raw), expected) if effect.raw else InfoVerdict.UNDECIDED
    )
    dep.check_info = _INFO_CHECK[verdict]
    if dep.state is S.AWAITING_CALLBACK:  # a verify job: the write was accepted in an earlier call
        move(dep, S.WRITTEN, step.now)
    move(dep, S.VERIFYING, step.now)
    dep.next_attempt_at = None
    step.probe_id = dep.id
    step.events.append(
        deployment_event(
            "deployment.info", dep, device.mac, check_info=dep.check_info.value, item_status=effect.item_status
        )
    )


def _phone_cleaned_up(step: _Step, effect: PhoneCleanedUp) -> None:
    live = step.live
    if live is None:
        return
    dep, device = live
    step.events.append(deployment_event("deployment.phone-cleanup", dep, device.mac, reason=effect.reason))
    if dep.state in (S.AWAITING_CALLBACK, S.WRITTEN):
        retry_or_fail(step.runtime, dep, device, step.now, f"phone ended the interaction: {effect.reason}", step.events)


__all__ = ["Applied", "apply_effects"]
