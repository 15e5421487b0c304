"""Admission: what certmgr answers when a phone opens an interaction — the one home of D10.

D10 (protocol doc §12): certmgr sends a private key only inside an interaction that *it* started — a
``solicited`` call following its own contact-me, a polling phone answered 202, or a busy phone calling back
after certmgr's ``send-solicited`` — and only when the TCP peer is the phone's known address (or a trusted
proxy) and the phone is approved. Read with D9: a call the phone started (start-up, local-changes,
inventory-changes, status) never carries the key; what it may carry is a verify job (``ReadItems``, no key), and
only when every other D10 check holds.

:func:`decide` is that rule as a pure function over :class:`CallFacts`; :func:`admit` gathers the facts from
the database (one transaction), decides, and builds the job. The PKCS#12 (with the private key) is built only
after :func:`decide` said :attr:`Decision.SERVE` for a write. The state machine
(:mod:`certmgr.wpi.interaction`) carries the decision out and decides nothing about authorisation itself.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from cryptography import x509
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import move
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, Deployment, DeploymentState, Device, Enrollment, ProfileMemory
from certmgr.deploy.profiles import choose_profile
from certmgr.deploy.records import current_deployment, deployment_event, hold, interaction_lease
from certmgr.inventory.addresses import peer_is_phone
from certmgr.inventory.phones import phone_policy
from certmgr.issuance.packaging import package, signing_chain
from certmgr.issuance.service import load_key
from certmgr.pki.types import Pkcs12Profile
from certmgr.wpi.certinfo import ExpectedCert
from certmgr.wpi.jobs import Admission, Defer, Job, NoJob, Refuse, Serve
from certmgr.wpi.messages import Reason

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState


class Decision(StrEnum):
    """D10's answer for one opening message."""

    SERVE = "serve"  # run the pending job (write or verify)
    DEFER = "defer"  # a write is pending, the phone called on its own: no key now, contact-me later
    REFUSE = "refuse"  # a solicited call that failed a check: CleanUp + audit
    IGNORE = "ignore"  # a phone-initiated call that failed a check: plain CleanUp (it asked for nothing)


@dataclass(frozen=True)
class CallFacts:
    """What D10 looks at for a phone's opening message with a deployment pending."""

    reason: Reason
    write_pending: bool  # the certificate has not been accepted yet (a write job, with the key)
    started_by_us: bool  # certmgr's contact-me / poll answer awaits this call, or its send-solicited after busy
    peer_matches: bool  # the TCP peer is the phone's known address or a trusted proxy
    approved: bool  # an operator (or the policy) approved the phone

    def problems(self) -> list[str]:
        """The failed checks, in words (for the refusal's audit record)."""
        return [
            text
            for ok, text in (
                (self.started_by_us, "no contact-me or poll by certmgr is pending for this phone"),
                (self.peer_matches, "peer address does not match the phone's known address"),
                (self.approved, "phone not approved"),
            )
            if not ok
        ]


def decide(facts: CallFacts) -> Decision:
    """D10 for one opening message (module docstring). Pure; the only place the rule is written."""
    if facts.write_pending and facts.reason is not Reason.SOLICITED:
        return Decision.DEFER
    if facts.problems():
        return Decision.REFUSE if facts.reason is Reason.SOLICITED else Decision.IGNORE
    return Decision.SERVE


@dataclass(frozen=True)
class Admitted:
    """The decision for a phone's opening message, and whether its TCP peer is the phone (its known address or a
    trusted proxy): only such a peer may hold the phone's place in the interaction table."""

    admission: Admission
    from_phone: bool


def admit(
    runtime: Runtime, *, mac: str, peer: str | None, reason: Reason, now: datetime, busy_until: datetime | None
) -> Admitted:
    """Find the pending deployment for ``mac``, :func:`decide` D10 and build the job. One transaction.

    Serving moves the deployment to ``awaiting_callback`` (if it was not there) and leases it to this node for
    the interaction.

    Raises:
        CertmgrError: if the PKCS#12 cannot be built (CA or key vault unusable); nothing is sent then.
    """
    settings = runtime.settings
    with session_scope(runtime.engine) as session:
        device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
        if device is None or device.id is None:
            return Admitted(NoJob(), False)
        from_phone = peer_is_phone(peer, device.ip, settings.trusted_proxies)
        dep = current_deployment(session, device.id)
        if dep is None or dep.id is None:
            return Admitted(NoJob(), from_phone)
        decision = _admit(runtime, session, device, dep, from_phone, reason, now, busy_until)
        return Admitted(decision, from_phone)


def _admit(
    runtime: Runtime,
    session: Session,
    device: Device,
    dep: Deployment,
    from_phone: bool,
    reason: Reason,
    now: datetime,
    busy_until: datetime | None,
) -> Admission:
    settings = runtime.settings
    assert dep.id is not None
    callback_due = (
        dep.contacted_at is not None and dep.contacted_at + timedelta(seconds=settings.callback_timeout_seconds) >= now
    )
    facts = CallFacts(
        reason=reason,
        write_pending=dep.written_at is None,
        started_by_us=(dep.state in (S.CONTACTING, S.AWAITING_CALLBACK) and callback_due)
        or (busy_until is not None and busy_until >= now and dep.state in (S.QUEUED, S.AWAITING_CALLBACK)),
        peer_matches=from_phone,
        approved=device.enrollment is Enrollment.APPROVED,
    )
    decision = decide(facts)
    if decision is Decision.DEFER:
        return Defer(dep.id)
    if decision is Decision.IGNORE:
        return NoJob()
    if decision is Decision.REFUSE:
        return Refuse("; ".join(facts.problems()), dep.id)
    events: list[NewEvent] = []
    if dep.state is not S.AWAITING_CALLBACK:
        move(dep, S.AWAITING_CALLBACK, now)
        dep.contacted_at = dep.contacted_at or now
    hold(settings, dep, interaction_lease(settings, now))
    # The deployment's changes are written once, at the end: flushed before the job's reads, they were a second
    # UPDATE of the row, and on SQLite the write lock was held while the PKCS#12 was being built.
    with session.no_autoflush:
        job = Job.verify(dep.id, device.mac) if not facts.write_pending else _write_job(runtime, session, dep, device)
    if job is None:
        events.append(deployment_event("deployment.failed", dep, device.mac, reason="no PKCS#12 profile left"))
        move(dep, S.FAILED, now, error="no PKCS#12 profile left")
        session.add(dep)
        append_events(session, now, events)
        return NoJob()
    session.add(dep)
    append_events(session, now, events)
    return Serve(job)


def remembered_profile(session: Session, device: Device) -> Pkcs12Profile | None:
    """The PKCS#12 profile that last worked for the phone's model and firmware (D7), if any."""
    if not device.device_type or not device.software_version:
        return None
    row = session.exec(
        select(ProfileMemory).where(
            col(ProfileMemory.device_type) == device.device_type,
            col(ProfileMemory.software_version) == device.software_version,
        )
    ).first()
    return row.profile if row is not None else None


def _write_job(runtime: Runtime, session: Session, dep: Deployment, device: Device) -> Job | None:
    """The write job of ``dep``: its certificate packaged in the profile this attempt uses (``None``: every
    profile was refused)."""
    cert_row = session.get(Certificate, dep.certificate_id)
    assert cert_row is not None
    identity, policy = phone_policy(runtime.policies, device, device.policy_name)
    if dep.profile_index and dep.profile_used in policy.pkcs12.profiles:
        profile: Pkcs12Profile | None = dep.profile_used  # planned when the previous profile was refused
    else:
        profile = choose_profile(policy.pkcs12.profiles, remembered_profile(session, device), dep.profile_index)
    if profile is None:
        return None
    password = runtime.pkcs12_password(policy.pkcs12.password_secret) if profile.needs_password else None
    chain, root = signing_chain(session, cert_row.issuer_fingerprint)
    cert = x509.load_pem_x509_certificate(cert_row.cert_pem.encode())
    p12 = package(
        load_key(runtime.vault, cert_row),
        cert,
        chain,
        root,
        policy=policy,
        identity=identity,
        profile=profile,
        password=password,
    )
    password_item = None
    if password is not None and policy.pkcs12.password_item is not None:
        password_item = (policy.pkcs12.password_item, password.decode())
    dep.profile_used = profile
    dep.password_item_used = password_item is not None
    assert dep.id is not None
    # A WriteItems left earlier and its answer never came back (certmgr died, the connection broke): the phone may
    # hold the certificate already, so the job reads the phone's info first and writes only if it lacks it.
    unknown = dep.write_sent_at is not None and dep.written_at is None
    return Job.certificate(
        dep.id,
        device.mac,
        base64.b64encode(p12).decode("ascii"),
        password_item=password_item,
        check_first=ExpectedCert.from_certificate(cert) if unknown else None,
    )


__all__ = ["Admitted", "CallFacts", "Decision", "admit", "decide", "remembered_profile"]
