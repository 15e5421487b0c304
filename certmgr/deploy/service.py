"""The deployment pipeline's database side: every state change of a :class:`Deployment`, each in one
transaction together with its audit events. Synchronous (the async callers run these in a worker thread).

The pure decisions come from :mod:`~certmgr.deploy.states`, :mod:`~certmgr.deploy.backoff`,
:mod:`~certmgr.deploy.profiles` and :mod:`~certmgr.deploy.verdict`; the phone-facing adapter
(:mod:`certmgr.deploy.hub`) and the dispatcher call the functions here.

Job mode rule: a deployment whose ``written_at`` is set has been accepted by the phone; every later attempt on
it is a verify job (ReadItems + probe) and never writes again. Only a drift verdict clears ``written_at`` (the
phone demonstrably does not hold the certificate, so it is written anew).

D10 rule (:func:`admit`): a job is handed to the interaction with ``authorised=True`` only if the deployment
is awaiting a callback that *certmgr* caused (a contact-me or a poll answered 202, less than
``callback_timeout_seconds`` ago; or a ``send-solicited`` after ``busy`` less than ``busy_callback_seconds``
ago), the device is approved, and the TCP peer is the device's known address or a trusted proxy. The PKCS#12
(with the private key) is only ever built once all of that holds. Everything D10 needs is in the database
(``state``, ``contacted_at``, the device row), so the dispatcher that sent the contact-me and the WPI listener
that takes the callback may run in different processes; only the ``busy`` marker (``busy_until``) is held by
the WPI process that told the phone to send ``solicited`` later.

Several nodes: :func:`claim_due` serialises claimers (PostgreSQL advisory transaction lock) so the global
concurrency limit holds across processes, and claims rows with ``FOR UPDATE SKIP LOCKED``. A deployment that a
process is working on carries a *lease* (``lease_owner`` / ``lease_until``): set by the claim (until the
callback timeout) and by every phone message the WPI hub applies (until the interaction timeout plus the probe
budget). :func:`expire_stale` and :func:`recover` leave leased deployments alone, so a restarting or hub-less
node never steals an interaction that another process is running.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy import func
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    CheckInfo,
    CheckProbe,
    CheckReply,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    ProfileMemory,
)
from certmgr.deploy.backoff import next_attempt_at
from certmgr.deploy.profiles import choose_profile, next_profile
from certmgr.deploy.states import IN_FLIGHT_STATES, UNFINISHED_STATES, check_transition
from certmgr.deploy.verdict import Verdict, combine
from certmgr.errors import CertmgrError, InputError
from certmgr.identity import DeviceIdentity, parse_ip
from certmgr.inventory.service import peer_is_trusted_proxy, record_report, same_ip
from certmgr.issuance.service import load_key
from certmgr.pki.pkcs12 import build_pkcs12
from certmgr.pki.types import Pkcs12Profile
from certmgr.policy import Policy
from certmgr.policy.templates import render_friendly_name
from certmgr.policy.windows import window_open
from certmgr.scheduling.locks import node_name, serialize, skip_locked
from certmgr.wpi.certinfo import ExpectedCert, InfoVerdict, judge_certificate_info, parse_certificate_info
from certmgr.wpi.interaction import (
    CertificateInfoReceived,
    Effect,
    InteractionFinished,
    Job,
    PhoneBusy,
    PhoneCleanedUp,
    PhoneReported,
    ProtocolViolation,
    SecurityRefused,
    WriteAccepted,
    WriteRejected,
)
from certmgr.wpi.messages import Reason

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

ACTOR = "deploy"
MAX_TRANSCRIPT = 200
S = DeploymentState


# --- small helpers ----------------------------------------------------------------------------------------
def _move(dep: Deployment, target: DeploymentState, now: datetime) -> None:
    dep.state = check_transition(dep.state, target)
    dep.updated_at = now
    if target.is_final or target is S.QUEUED:
        dep.lease_owner = None
        dep.lease_until = None
    if target.is_final:
        dep.finished_at = now


def interaction_lease(runtime: Runtime, now: datetime) -> datetime:
    """Until when a phone interaction (and the probe that follows it) holds its deployment."""
    s = runtime.settings
    probe_budget = s.probe_tries * (s.probe_interval_seconds + s.probe_timeout_seconds)
    return now + timedelta(seconds=s.interaction_timeout_seconds + probe_budget)


def _lease(runtime: Runtime, dep: Deployment, until: datetime) -> None:
    dep.lease_owner = node_name(runtime.settings)
    dep.lease_until = until


def _lease_free(dep: Deployment, now: datetime) -> bool:
    return dep.lease_until is None or dep.lease_until <= now


def _event(action: str, dep: Deployment, mac: str, **details: Any) -> NewEvent:
    return NewEvent(ACTOR, action, "deployment", str(dep.id), {"mac": mac, **details})


def add_transcript(dep: Deployment, entries: Sequence[dict[str, Any]]) -> None:
    """Append redacted transcript entries (names, reasons, statuses; never values) to ``dep``."""
    if entries:
        dep.transcript = [*dep.transcript, *entries][-MAX_TRANSCRIPT:]


def _info_check(verdict: InfoVerdict) -> CheckInfo:
    return {
        InfoVerdict.VERIFIED: CheckInfo.VERIFIED,
        InfoVerdict.MISMATCH: CheckInfo.MISMATCH,
        InfoVerdict.UNDECIDED: CheckInfo.UNDECIDED,
    }[verdict]


def retry_or_fail(
    runtime: Runtime, dep: Deployment, device: Device, now: datetime, error: str, events: list[NewEvent]
) -> None:
    """Put ``dep`` back in the queue after a failed attempt (capped exponential backoff), or fail it for good
    once ``max_attempts`` attempts were made."""
    settings = runtime.settings
    dep.last_error = error[:500]
    if dep.attempts >= settings.max_attempts:
        _move(dep, S.FAILED, now)
        device.status = DeviceStatus.FAILED
        device.updated_at = now
        events.append(_event("deployment.failed", dep, device.mac, reason=error, attempts=dep.attempts))
        return
    _move(dep, S.QUEUED, now)
    dep.next_attempt_at = next_attempt_at(
        max(dep.attempts, 1), now, settings.retry_base_seconds, settings.retry_max_seconds, key=device.mac
    )
    events.append(
        _event(
            "deployment.retry",
            dep,
            device.mac,
            reason=error,
            attempts=dep.attempts,
            next_attempt_at=dep.next_attempt_at.isoformat(),
        )
    )


def _load(session: Session, deployment_id: int) -> tuple[Deployment, Device]:
    dep = session.get(Deployment, deployment_id)
    if dep is None:
        raise InputError(f"no deployment {deployment_id}")
    device = session.get(Device, dep.device_id)
    assert device is not None
    return dep, device


def current_deployment(session: Session, device_id: int) -> Deployment | None:
    """The newest unfinished deployment of a device, if any."""
    return session.exec(
        select(Deployment)
        .where(col(Deployment.device_id) == device_id, col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]))
        .order_by(col(Deployment.id).desc())
    ).first()


def _policy_for(runtime: Runtime, device: Device) -> Policy:
    if device.policy_name:
        try:
            return runtime.policies.get(device.policy_name)
        except InputError:
            pass
    ips = (parse_ip(device.ip),) if device.ip else ()
    return runtime.policies.select(DeviceIdentity(mac=device.mac, ips=ips, model=device.device_type))


def _remembered_profile(session: Session, device: Device) -> Pkcs12Profile | None:
    if not device.device_type or not device.software_version:
        return None
    row = session.exec(
        select(ProfileMemory).where(
            col(ProfileMemory.device_type) == device.device_type,
            col(ProfileMemory.software_version) == device.software_version,
        )
    ).first()
    return row.profile if row is not None else None


# --- admission (D10) --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admission:
    """What the adapter hands to :func:`certmgr.wpi.interaction.start` for a phone's opening message."""

    job: Job | None
    authorised: bool
    deployment_id: int | None
    refusal: str | None = None


def admit(
    runtime: Runtime, *, mac: str, peer: str | None, reason: Reason, now: datetime, busy_until: datetime | None
) -> Admission:
    """Find the pending job for ``mac`` and decide D10 (see the module docstring). One transaction.

    A write job (with the PKCS#12) is built only when the call is ``solicited`` and authorised. A pending write
    in a phone-initiated call is not offered (the dispatcher sends a contact-me later); a ``solicited`` call
    that certmgr did not cause is answered with a refusal (CleanUp + audit) through a key-less placeholder job.

    Raises:
        CertmgrError: if the PKCS#12 cannot be built (CA or key vault unusable); nothing is sent then.
    """
    settings = runtime.settings
    with session_scope(runtime.engine) as session:
        device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
        if device is None or device.id is None:
            return Admission(None, False, None)
        dep = current_deployment(session, device.id)
        if dep is None or dep.id is None:
            return Admission(None, False, None)
        verify_mode = dep.written_at is not None
        callback_fresh = (
            dep.state in (S.CONTACTING, S.AWAITING_CALLBACK)
            and dep.contacted_at is not None
            and dep.contacted_at + timedelta(seconds=settings.callback_timeout_seconds) >= now
        )
        busy_fresh = busy_until is not None and busy_until >= now and dep.state in (S.QUEUED, S.AWAITING_CALLBACK)
        started_by_us = callback_fresh or busy_fresh
        peer_ok = same_ip(peer, device.ip) or peer_is_trusted_proxy(peer, settings.trusted_proxies)
        approved = device.enrollment is Enrollment.APPROVED
        problems = [
            text
            for ok, text in (
                (started_by_us, "no contact-me or poll by certmgr is pending for this phone"),
                (peer_ok, "peer address does not match the phone's known address"),
                (approved, "phone not approved"),
            )
            if not ok
        ]
        if not verify_mode and reason is not Reason.SOLICITED and not problems:
            return Admission(None, False, dep.id)  # D10: never a key in a phone-initiated call; contact-me later
        if not verify_mode and reason is not Reason.SOLICITED:
            return Admission(None, False, dep.id)
        if problems:
            if reason is not Reason.SOLICITED:
                return Admission(None, False, dep.id)
            return Admission(Job.verify(dep.id, device.mac), False, dep.id, "; ".join(problems))
        events: list[NewEvent] = []
        if dep.state is not S.AWAITING_CALLBACK:
            _move(dep, S.AWAITING_CALLBACK, now)
            dep.contacted_at = dep.contacted_at or now
        _lease(runtime, dep, interaction_lease(runtime, now))
        job: Job | None
        if verify_mode:
            job = Job.verify(dep.id, device.mac)
        else:
            job = _write_job(runtime, session, dep, device)
            if job is None:
                events.append(_event("deployment.failed", dep, device.mac, reason="no PKCS#12 profile left"))
                _move(dep, S.FAILED, now)
                session.add(dep)
                append_events(session, now, events)
                return Admission(None, False, dep.id)
        session.add(dep)
        append_events(session, now, events)
        return Admission(job, True, dep.id)


def _write_job(runtime: Runtime, session: Session, dep: Deployment, device: Device) -> Job | None:
    cert_row = session.get(Certificate, dep.certificate_id)
    assert cert_row is not None
    policy = _policy_for(runtime, device)
    if dep.profile_index and dep.profile_used in policy.pkcs12.profiles:
        profile: Pkcs12Profile | None = dep.profile_used  # planned when the previous profile was refused
    else:
        profile = choose_profile(policy.pkcs12.profiles, _remembered_profile(session, device), dep.profile_index)
    if profile is None:
        return None
    password = runtime.pkcs12_password(policy.pkcs12.password_secret) if profile.needs_password else None
    issuer = runtime.issuer()
    chain: tuple[x509.Certificate, ...] = issuer.chain
    if policy.pkcs12.include_root and issuer.root is not None:
        chain = (*chain, issuer.root)
    cert = x509.load_pem_x509_certificate(cert_row.cert_pem.encode())
    ips = (parse_ip(device.ip),) if device.ip else ()
    identity = DeviceIdentity(mac=device.mac, ips=ips, e164=device.e164, model=device.device_type)
    p12 = build_pkcs12(
        load_key(runtime.vault, cert_row), cert, chain, profile, password, render_friendly_name(policy, identity)
    )
    password_item = None
    if password is not None and policy.pkcs12.password_item is not None:
        password_item = (policy.pkcs12.password_item, password.decode())
    dep.profile_used = profile
    dep.password_item_used = password_item is not None
    assert dep.id is not None
    return Job.certificate(dep.id, device.mac, base64.b64encode(p12).decode("ascii"), password_item=password_item)


# --- applying an interaction's effects ---------------------------------------------------------------------
@dataclass(frozen=True)
class Applied:
    """Follow-ups for the adapter: probe this deployment; the phone was told send-solicited."""

    probe_deployment_id: int | None = None
    busy_mac: str | None = None


def apply_effects(
    runtime: Runtime,
    *,
    effects: Sequence[Effect],
    deployment_id: int | None,
    authorised: bool,
    peer: str | None,
    now: datetime,
    transcript: Sequence[dict[str, Any]],
) -> Applied:
    """Apply one phone message's effects and the redacted transcript in one transaction with audit events.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    probe_id: int | None = None
    busy_mac: str | None = None
    with session_scope(runtime.engine) as session:
        events: list[NewEvent] = []
        dep: Deployment | None = None
        device: Device | None = None
        if deployment_id is not None:
            dep, device = _load(session, deployment_id)
        for effect in effects:
            if isinstance(effect, PhoneReported):
                if effect.mac is None:
                    events.append(NewEvent("wpi", "wpi.report-without-mac", "peer", peer or "", {}))
                    continue
                items = {it.name: it.value for it in effect.items if it.index in (None, 0)}
                result = record_report(
                    session,
                    mac=effect.mac,
                    items=items,
                    reason=effect.reason.value,
                    peer=peer,
                    now=now,
                    policies=runtime.policies,
                    trusted_proxies=settings.trusted_proxies,
                )
                if device is not None and result.device.id == device.id:
                    device = result.device
                if dep is not None:
                    session.refresh(dep)
            elif isinstance(effect, SecurityRefused):
                events.append(
                    NewEvent(
                        "wpi",
                        "wpi.refused",
                        "device",
                        device.mac if device else "",
                        {"reason": effect.reason, "peer": peer, "deployment": effect.deployment_id},
                    )
                )
            elif isinstance(effect, ProtocolViolation):
                events.append(
                    NewEvent(
                        "wpi",
                        "wpi.violation",
                        "device",
                        device.mac if device else "",
                        {"reason": effect.reason, "peer": peer},
                    )
                )
                if (
                    authorised
                    and dep is not None
                    and device is not None
                    and dep.state in (S.AWAITING_CALLBACK, S.WRITTEN)
                ):
                    retry_or_fail(runtime, dep, device, now, f"protocol violation: {effect.reason}", events)
            elif dep is None or device is None or not authorised or dep.state.is_final:
                continue
            elif isinstance(effect, WriteAccepted):
                _move(dep, S.WRITTEN, now)
                dep.written_at = now
                dep.check_reply = CheckReply.PASSED
                events.append(_event("deployment.written", dep, device.mac, profile=_profile_name(dep)))
            elif isinstance(effect, WriteRejected):
                dep.check_reply = CheckReply.FAILED
                dep.profile_index += 1
                events.append(
                    _event(
                        "deployment.write-rejected",
                        dep,
                        device.mac,
                        reason=effect.reason,
                        item_status=effect.item_status,
                        profile=_profile_name(dep),
                    )
                )
                policy = _policy_for(runtime, device)
                # The successor of the refused profile, not a re-derived order: the remembered profile may change
                # before the next attempt, and a rotation from a new start could offer the refused one again.
                nxt = next_profile(policy.pkcs12.profiles, dep.profile_used, dep.profile_index)
                if nxt is None:
                    dep.last_error = effect.reason[:500]
                    _move(dep, S.FAILED, now)
                    device.status = DeviceStatus.FAILED
                    events.append(_event("deployment.failed", dep, device.mac, reason="every PKCS#12 profile refused"))
                else:
                    dep.profile_used = nxt  # the profile of the next write (see _write_job)
                    retry_or_fail(runtime, dep, device, now, f"write rejected: {effect.reason}", events)
            elif isinstance(effect, PhoneBusy):
                busy_mac = device.mac
                events.append(_event("deployment.busy", dep, device.mac))
                retry_or_fail(runtime, dep, device, now, "phone busy", events)
            elif isinstance(effect, CertificateInfoReceived):
                dep.info_raw = effect.raw
                cert_row = session.get(Certificate, dep.certificate_id)
                assert cert_row is not None
                expected = ExpectedCert.from_certificate(x509.load_pem_x509_certificate(cert_row.cert_pem.encode()))
                verdict = (
                    judge_certificate_info(parse_certificate_info(effect.raw), expected)
                    if effect.raw
                    else InfoVerdict.UNDECIDED
                )
                dep.check_info = _info_check(verdict)
                if dep.state is S.AWAITING_CALLBACK:  # a verify job: the write was accepted in an earlier call
                    _move(dep, S.WRITTEN, now)
                _move(dep, S.VERIFYING, now)
                dep.next_attempt_at = None
                probe_id = dep.id
                events.append(
                    _event(
                        "deployment.info",
                        dep,
                        device.mac,
                        check_info=dep.check_info.value,
                        item_status=effect.item_status,
                    )
                )
            elif isinstance(effect, PhoneCleanedUp):
                events.append(_event("deployment.phone-cleanup", dep, device.mac, reason=effect.reason))
                if dep.state in (S.AWAITING_CALLBACK, S.WRITTEN):
                    retry_or_fail(runtime, dep, device, now, f"phone ended the interaction: {effect.reason}", events)
            elif isinstance(effect, InteractionFinished):
                pass
        if dep is not None:
            add_transcript(dep, transcript)
            if authorised and not dep.state.is_final and dep.state is not S.QUEUED:
                _lease(runtime, dep, interaction_lease(runtime, now))
            session.add(dep)
        if device is not None:
            session.add(device)
        append_events(session, now, events)
    return Applied(probe_id, busy_mac)


def _profile_name(dep: Deployment) -> str | None:
    return dep.profile_used.value if dep.profile_used is not None else None


# --- verification ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeTarget:
    """Where to probe and what to expect."""

    deployment_id: int
    host: str
    expected_sha256: str


def probe_target(runtime: Runtime, deployment_id: int) -> ProbeTarget | None:
    """The phone address and expected fingerprint of a deployment in ``verifying`` (``None`` otherwise)."""
    with session_scope(runtime.engine) as session:
        dep, device = _load(session, deployment_id)
        if dep.state is not S.VERIFYING or device.ip is None:
            return None
        cert_row = session.get(Certificate, dep.certificate_id)
        assert cert_row is not None
        return ProbeTarget(deployment_id, device.ip, cert_row.fingerprint_sha256)


def finish_verification(
    runtime: Runtime, deployment_id: int, *, seen_sha256: str | None, probe_error: str | None, now: datetime
) -> Verdict:
    """Record the probe, combine reply + info + probe (:func:`~certmgr.deploy.verdict.combine`) and act on it.

    verified: deployment verified, certificate active, the previous active one superseded, device current
    certificate / ``last_verified_at`` / status, profile remembered. drift: device flagged, attempt failed,
    the certificate is written again. undecided: re-verify later.

    Raises:
        InputError: unknown deployment. ConflictError: the deployment is no longer verifying.
    """
    with session_scope(runtime.engine) as session:
        dep, device = _load(session, deployment_id)
        cert_row = session.get(Certificate, dep.certificate_id)
        assert cert_row is not None
        events: list[NewEvent] = []
        if seen_sha256 is None:
            dep.check_probe = CheckProbe.UNREACHABLE
        elif seen_sha256 == cert_row.fingerprint_sha256:
            dep.check_probe = CheckProbe.PASSED
        else:
            dep.check_probe = CheckProbe.FAILED
        verdict = combine(dep.check_reply, dep.check_info, dep.check_probe)
        checks = {
            "check_reply": dep.check_reply.value if dep.check_reply else None,
            "check_info": dep.check_info.value if dep.check_info else None,
            "check_probe": dep.check_probe.value,
        }
        add_transcript(
            dep,
            [
                {
                    "at": now.isoformat(),
                    "dir": "probe",
                    "result": dep.check_probe.value,
                    "verdict": verdict.value,
                    "error": probe_error,
                }
            ],
        )
        if verdict is Verdict.VERIFIED:
            _move(dep, S.VERIFIED, now)
            dep.verified_at = now
            dep.last_error = None
            for old in session.exec(
                select(Certificate).where(
                    col(Certificate.device_id) == device.id,
                    col(Certificate.status) == CertificateStatus.ACTIVE.value,
                    col(Certificate.id) != cert_row.id,
                )
            ):
                old.status = CertificateStatus.SUPERSEDED
                session.add(old)
                events.append(NewEvent(ACTOR, "certificate.superseded", "certificate", old.serial, {"mac": device.mac}))
            cert_row.status = CertificateStatus.ACTIVE
            session.add(cert_row)
            device.current_certificate_id = cert_row.id
            device.last_verified_at = now
            device.status = DeviceStatus.VERIFIED
            device.drift = False
            if device.device_type and device.software_version and dep.profile_used is not None:
                _remember_profile(session, device.device_type, device.software_version, dep.profile_used, now)
            events.append(_event("deployment.verified", dep, device.mac, serial=cert_row.serial, **checks))
        elif verdict is Verdict.DRIFT:
            device.drift = True
            device.status = DeviceStatus.DRIFT
            events.append(NewEvent(ACTOR, "device.drift", "device", device.mac, {"deployment": dep.id, **checks}))
            dep.written_at = None  # the phone does not hold it: write again
            dep.check_reply = None
            retry_or_fail(runtime, dep, device, now, "phone reports or serves another certificate", events)
        else:
            events.append(_event("deployment.undecided", dep, device.mac, error=probe_error, **checks))
            retry_or_fail(runtime, dep, device, now, "verification undecided (info and probe inconclusive)", events)
        device.updated_at = now
        session.add(dep)
        session.add(device)
        append_events(session, now, events)
        return verdict


def _remember_profile(session: Session, device_type: str, version: str, profile: Pkcs12Profile, now: datetime) -> None:
    row = session.exec(
        select(ProfileMemory).where(
            col(ProfileMemory.device_type) == device_type, col(ProfileMemory.software_version) == version
        )
    ).first()
    if row is None:
        row = ProfileMemory(device_type=device_type, software_version=version, profile=profile, updated_at=now)
    else:
        row.profile, row.updated_at = profile, now
    session.add(row)


# --- dispatcher side ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContactTask:
    """A claimed deployment: send contact-me to ``uri``."""

    deployment_id: int
    mac: str
    uri: str


def claim_due(runtime: Runtime, now: datetime, *, exclude_macs: frozenset[str] = frozenset()) -> list[ContactTask]:
    """Claim due deployments (``queued``, ``next_attempt_at`` reached) up to the free concurrency, skipping
    phones inside their contact gap or outside their policy's windows; each goes to ``contacting``.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    gap = timedelta(seconds=settings.contact_gap_seconds)
    tasks: list[ContactTask] = []
    with session_scope(runtime.engine) as session:
        serialize(session, "deployment-claim")  # the count below holds across nodes
        in_flight = session.exec(
            select(func.count())
            .select_from(Deployment)
            .where(col(Deployment.state).in_([s.value for s in IN_FLIGHT_STATES]))
        ).one()
        free = settings.deploy_concurrency - int(in_flight)
        if free <= 0:
            return []
        query = (
            select(Deployment, Device)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(
                col(Deployment.state) == S.QUEUED.value,
                (col(Deployment.next_attempt_at).is_(None)) | (col(Deployment.next_attempt_at) <= now),
                col(Device.enrollment) == Enrollment.APPROVED.value,
                col(Device.contact_me_uri).is_not(None),
            )
            .order_by(col(Deployment.next_attempt_at), col(Deployment.id))
            .limit(free * 4 + 10)
        )
        rows = session.exec(skip_locked(query, session, of=Deployment)).all()
        busy = set(exclude_macs)
        events: list[NewEvent] = []
        for dep, device in rows:
            if len(tasks) >= free:
                break
            if device.mac in busy:
                continue
            if device.last_contact_me_at is not None and device.last_contact_me_at + gap > now:
                continue
            if not window_open(_policy_for(runtime, device).windows, now):
                continue
            busy.add(device.mac)
            _move(dep, S.CONTACTING, now)
            dep.attempts += 1
            dep.contacted_at = now
            dep.next_attempt_at = None
            _lease(runtime, dep, now + timedelta(seconds=settings.callback_timeout_seconds))
            session.add(dep)
            assert dep.id is not None
            assert device.contact_me_uri is not None
            tasks.append(ContactTask(dep.id, device.mac, device.contact_me_uri))
            events.append(
                _event("deployment.contacting", dep, device.mac, attempt=dep.attempts, node=node_name(settings))
            )
        append_events(session, now, events)
    return tasks


def contact_result(
    runtime: Runtime, deployment_id: int, now: datetime, *, error: str | None, dls_ip_addr: str | None = None
) -> None:
    """Record the outcome of a contact-me: ``awaiting_callback`` on success, a retry on failure. The device's
    ``last_contact_me_at`` is set either way (the phone may have received it: the gap applies)."""
    with session_scope(runtime.engine) as session:
        dep, device = _load(session, deployment_id)
        device.last_contact_me_at = now
        device.updated_at = now
        events: list[NewEvent] = []
        if dep.state is S.CONTACTING:
            if error is None:
                _move(dep, S.AWAITING_CALLBACK, now)
                dep.contacted_at = now
                events.append(_event("deployment.contacted", dep, device.mac, dls_ip_addr=dls_ip_addr))
            else:
                events.append(_event("deployment.contact-failed", dep, device.mac, reason=error))
                retry_or_fail(runtime, dep, device, now, f"contact-me failed: {error}", events)
        add_transcript(dep, [{"at": now.isoformat(), "dir": "contact-me", "error": error}])
        session.add(dep)
        session.add(device)
        append_events(session, now, events)


def expire_stale(runtime: Runtime, now: datetime, *, active_deployments: frozenset[int]) -> int:
    """Retry stuck deployments; returns how many were retried (at most 500 per call):

    * ``awaiting_callback`` / ``contacting`` whose phone never called back (past the callback timeout);
    * ``written`` left by a vanished interaction (past the callback timeout);
    * ``verifying`` without progress for ``stuck_timeout_seconds`` (a probe that died with its process).

    Deployments with a live interaction here (``active_deployments``) or a lease held elsewhere (another
    process's interaction or probe) are left alone. A retried ``written`` / ``verifying`` deployment stays a
    verify job (``written_at`` is kept): the certificate is never written twice.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    cutoff = now - timedelta(seconds=settings.callback_timeout_seconds)
    stuck_cutoff = now - timedelta(seconds=settings.stuck_timeout_seconds)
    count = 0
    with session_scope(runtime.engine) as session:
        query = (
            select(Deployment, Device)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(
                (
                    col(Deployment.state).in_([S.AWAITING_CALLBACK.value, S.WRITTEN.value, S.CONTACTING.value])
                    & (col(Deployment.updated_at) < cutoff)
                )
                | ((col(Deployment.state) == S.VERIFYING.value) & (col(Deployment.updated_at) < stuck_cutoff)),
                (col(Deployment.lease_until).is_(None)) | (col(Deployment.lease_until) <= now),
            )
            .order_by(col(Deployment.id))
            .limit(500)
        )
        rows = session.exec(skip_locked(query, session, of=Deployment)).all()
        events: list[NewEvent] = []
        for dep, device in rows:
            if dep.id in active_deployments:
                continue
            if dep.state is S.AWAITING_CALLBACK and dep.contacted_at is not None and dep.contacted_at >= cutoff:
                continue
            if dep.state is S.VERIFYING:
                reason = "verification made no progress (stuck)"
                if dep.written_at is None:
                    dep.written_at = dep.updated_at
            elif dep.state is S.WRITTEN:
                reason = "interaction ended after the write"
            else:
                reason = "phone never called back"
            retry_or_fail(runtime, dep, device, now, reason, events)
            session.add(dep)
            session.add(device)
            count += 1
        append_events(session, now, events)
    return count


def recover(runtime: Runtime, now: datetime) -> int:
    """Restart recovery: ``contacting`` / ``awaiting_callback`` go back to ``queued`` (the contact gap still
    applies through ``last_contact_me_at``); ``written`` / ``verifying`` go to ``queued`` as verify jobs
    (``written_at`` stays set: never write again). Returns the number of deployments recovered.

    Deployments leased by another live process (its lease not yet expired) are not touched: on several nodes
    a restarting node recovers only what nobody holds; the rest is retried by :func:`expire_stale` once its
    lease runs out.
    """
    count = 0
    me = node_name(runtime.settings)
    with session_scope(runtime.engine) as session:
        query = (
            select(Deployment, Device)
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(
                col(Deployment.state).in_([s.value for s in IN_FLIGHT_STATES]),
                (col(Deployment.lease_until).is_(None))
                | (col(Deployment.lease_until) <= now)
                | (col(Deployment.lease_owner) == me),
            )
        )
        rows = session.exec(skip_locked(query, session, of=Deployment)).all()
        events: list[NewEvent] = []
        for dep, device in rows:
            before = dep.state
            if before in (S.WRITTEN, S.VERIFYING) and dep.written_at is None:
                dep.written_at = dep.updated_at
            _move(dep, S.QUEUED, now)
            dep.next_attempt_at = now
            session.add(dep)
            events.append(
                _event(
                    "deployment.recovered",
                    dep,
                    device.mac,
                    previous=before.value,
                    verify_only=dep.written_at is not None,
                )
            )
            count += 1
        append_events(session, now, events)
    return count


def poll(runtime: Runtime, mac: str, now: datetime) -> bool:
    """A DCMP poll (D5): True (answer "pending") if a deployment is due for ``mac``; it then awaits the
    phone's callback ("certmgr started this"). Respects approval, windows and the concurrency limit.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    with session_scope(runtime.engine) as session:
        device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
        if device is None or device.id is None or device.enrollment is not Enrollment.APPROVED:
            return False
        dep = current_deployment(session, device.id)
        if dep is None:
            return False
        if (
            dep.state is S.AWAITING_CALLBACK
            and dep.contacted_at is not None
            and (dep.contacted_at + timedelta(seconds=settings.callback_timeout_seconds) >= now)
        ):
            return True  # already waiting for this phone
        if dep.state is not S.QUEUED or (dep.next_attempt_at is not None and dep.next_attempt_at > now):
            return False
        if not window_open(_policy_for(runtime, device).windows, now):
            return False
        serialize(session, "deployment-claim")
        in_flight = session.exec(
            select(func.count())
            .select_from(Deployment)
            .where(col(Deployment.state).in_([s.value for s in IN_FLIGHT_STATES]))
        ).one()
        if int(in_flight) >= settings.deploy_concurrency:
            return False
        _move(dep, S.AWAITING_CALLBACK, now)
        dep.attempts += 1
        dep.contacted_at = now
        dep.next_attempt_at = None
        _lease(runtime, dep, now + timedelta(seconds=settings.callback_timeout_seconds))
        add_transcript(dep, [{"at": now.isoformat(), "dir": "poll", "answer": "pending"}])
        session.add(dep)
        append_events(session, now, [_event("deployment.poll-pending", dep, device.mac, attempt=dep.attempts)])
        return True


__all__ = [
    "Admission",
    "Applied",
    "CertmgrError",
    "ContactTask",
    "ProbeTarget",
    "admit",
    "apply_effects",
    "claim_due",
    "contact_result",
    "expire_stale",
    "finish_verification",
    "interaction_lease",
    "poll",
    "probe_target",
    "recover",
    "retry_or_fail",
]
