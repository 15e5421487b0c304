"""Operator use cases on phones: register one before it first reports, approve a pending one, decommission one.

Each is one transaction holding the change and its audit events (actor ``token:<name>``, ``cli`` or
``console:<name>``). Unknown ids raise :class:`~certmgr.errors.NotFoundError`; an action the phone's state does
not allow raises :class:`~certmgr.errors.ConflictError`. The API, the CLI and the web console all call these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlmodel import col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import UNFINISHED_STATES, move
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
)
from certmgr.errors import ConflictError, PolicyError
from certmgr.identity import DeviceIdentity
from certmgr.inventory.enrollment import approve_device, phone_by_mac
from certmgr.inventory.phones import policy_for
from certmgr.issuance.revocation import revoke_in_session
from certmgr.operations.common import LIVE_CERTS, get_device, refresh_crl_quietly, transaction
from certmgr.pki.crl import RevocationReason

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

S = DeploymentState


def register_device(
    runtime: Runtime,
    *,
    mac: str,
    ip: str,
    e164: str | None,
    model: str | None,
    dns_names: Sequence[str],
    actor: str,
    hostname: str | None = None,
) -> Device:
    """Pre-register a phone before it first reports: approved at once if its policy says ``enrollment = auto``,
    else pending approval. The reconciler issues its certificate once it is approved.

    Raises:
        InputError: invalid MAC, IP, E.164 number or DNS name. ConflictError: the MAC is already known.
    """
    identity = DeviceIdentity.create(
        mac=mac, ips=[ip], dns_names=list(dns_names), e164=e164, model=model, hostname=hostname
    )
    now = runtime.clock.now()
    try:
        policy = policy_for(runtime.policies, None, identity).policy
    except PolicyError:
        policy = None
    approved = policy is not None and policy.enrollment == "auto"
    with transaction(runtime) as session:
        if session.exec(select(Device).where(col(Device.mac) == identity.mac)).first() is not None:
            raise ConflictError(f"a phone with MAC {identity.mac} is already registered", mac=identity.mac)
        device = Device(
            mac=identity.mac,
            ip=str(identity.ips[0]),
            e164=identity.e164,
            device_type=identity.model,
            dns_names=list(identity.dns_names),
            hostname=identity.hostname,
            policy_name=policy.name if policy is not None else None,
            enrollment=Enrollment.APPROVED if approved else Enrollment.PENDING,
            status=DeviceStatus.ENROLLED if approved else DeviceStatus.NEW,
            created_at=now,
            updated_at=now,
        )
        session.add(device)
        session.flush()
        events = [
            NewEvent(
                actor,
                "device.registered",
                "device",
                device.mac,
                {"ip": device.ip, "policy": device.policy_name, "enrollment": device.enrollment.value},
            )
        ]
        if not approved:
            events.append(
                NewEvent(actor, "device.approval-pending", "device", device.mac, {"policy": policy and policy.name})
            )
        append_events(session, now, events)
    return device


def approve(runtime: Runtime, device_id: int, actor: str, *, move_to: str | None = None) -> Device:
    """Approve a pending phone (idempotent for an approved one), or its held address move to ``move_to``
    (:func:`~certmgr.inventory.enrollment.approve_device`).

    Raises:
        NotFoundError: unknown id. ConflictError: the phone is decommissioned; a move is held elsewhere than
        ``move_to``.
    """
    with transaction(runtime) as session:
        device = get_device(session, device_id)
        return approve_device(session, device.mac, runtime.clock.now(), actor, move_to=move_to)


def approve_mac(runtime: Runtime, mac: str, actor: str, *, move_to: str | None = None) -> Device:
    """:func:`approve` for the phone with MAC ``mac`` (the CLI names phones by MAC).

    Raises:
        InputError: invalid MAC. NotFoundError: unknown phone. ConflictError: the phone is decommissioned; a move
        is held elsewhere than ``move_to``.
    """
    with transaction(runtime) as session:
        return approve_device(session, mac, runtime.clock.now(), actor, move_to=move_to)


@dataclass(frozen=True)
class DecommissionResult:
    """The decommissioned phone, what was cancelled and revoked, and the CRL number that lists it."""

    device: Device
    cancelled_deployments: tuple[int, ...]
    revoked_certificates: tuple[int, ...]
    crl_number: int | None


def decommission_device(runtime: Runtime, device_id: int, actor: str) -> DecommissionResult:
    """Take a phone out of service: unfinished deployments cancelled, every unexpired certificate of it revoked
    (``cessationOfOperation``), enrollment and status ``decommissioned``; then the CRL is re-signed.

    Raises:
        NotFoundError: unknown id. ConflictError: already decommissioned.
    """
    now = runtime.clock.now()
    cancelled: list[int] = []
    revoked: list[int] = []
    with transaction(runtime) as session:
        device = get_device(session, device_id)
        if device.enrollment is Enrollment.DECOMMISSIONED:
            raise ConflictError(f"phone {device.mac} is already decommissioned", mac=device.mac)
        events = [NewEvent(actor, "device.decommissioned", "device", device.mac, {"previous": device.enrollment.value})]
        for dep in session.exec(
            select(Deployment).where(
                col(Deployment.device_id) == device_id,
                col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]),
            )
        ):
            move(dep, S.CANCELLED, now, error="device decommissioned")
            session.add(dep)
            assert dep.id is not None
            cancelled.append(dep.id)
            events.append(
                NewEvent(
                    actor,
                    "deployment.cancelled",
                    "deployment",
                    str(dep.id),
                    {"mac": device.mac, "reason": "decommissioned"},
                )
            )
        certs = session.exec(
            select(Certificate).where(
                col(Certificate.device_id) == device_id,
                col(Certificate.status).in_([s.value for s in (*LIVE_CERTS, CertificateStatus.SUPERSEDED)]),
                col(Certificate.not_after) > now,
            )
        ).all()
        for cert in certs:
            events += revoke_in_session(
                session, cert, RevocationReason.CESSATION_OF_OPERATION, now, actor, mac=device.mac
            )
            assert cert.id is not None
            revoked.append(cert.id)
        device.enrollment = Enrollment.DECOMMISSIONED
        device.status = DeviceStatus.DECOMMISSIONED
        device.pending_ip = device.pending_contact_me_uri = device.pending_since = None  # a held move ends too
        device.updated_at = now
        session.add(device)
        append_events(session, now, events)
    crl_number = refresh_crl_quietly(runtime) if revoked else None
    return DecommissionResult(device, tuple(cancelled), tuple(revoked), crl_number)


def decommission_mac(runtime: Runtime, mac: str, actor: str) -> DecommissionResult:
    """:func:`decommission_device` for the phone with MAC ``mac`` (the CLI names phones by MAC).

    Raises:
        InputError: invalid MAC. NotFoundError: unknown phone. ConflictError: already decommissioned.
    """
    with transaction(runtime) as session:
        device_id = phone_by_mac(session, mac).id
    assert device_id is not None
    return decommission_device(runtime, device_id, actor)


__all__ = [
    "DecommissionResult",
    "approve",
    "approve_mac",
    "decommission_device",
    "decommission_mac",
    "register_device",
]
