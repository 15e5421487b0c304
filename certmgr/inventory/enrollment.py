"""Inventory and enrollment (D9): what phones tell certmgr about themselves, and operator approval.

Every function runs in the caller's transaction and writes its audit events there.

Address rule (D9, §8 (b)): the phone's IP is taken from its ``contact-me-uri`` when the TCP peer agrees with it
(or the peer is a trusted NAT/proxy address); a phone whose URI names no IP literal gets the peer address. When
URI and peer disagree, the known address is kept and the mismatch is audited: an unauthenticated message must
not be able to move a phone (and with it the key, D10) to another address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import UNFINISHED_STATES, move
from certmgr.db.models import Deployment, DeploymentState, Device, DeviceStatus, Enrollment
from certmgr.errors import ConflictError, InputError, NotFoundError, PolicyError, ProtocolError
from certmgr.identity import DeviceIdentity, normalize_mac
from certmgr.inventory.addresses import peer_is_trusted_proxy, same_ip
from certmgr.inventory.phones import policy_for
from certmgr.policy import PolicySet
from certmgr.wpi.contactme import parse_contact_me_uri
from certmgr.wpi.messages import ITEM_CONTACT_ME_URI, ITEM_DEVICE_TYPE, ITEM_E164, ITEM_SOFTWARE_VERSION

ACTOR = "wpi"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`record_report` did: the device, whether it is new, and whether its IP changed."""

    device: Device
    created: bool
    ip_changed: bool


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:limit] if value else None


def supersede_unfinished(
    session: Session, device: Device, now: datetime, reason: str, keep: int | None = None
) -> list[NewEvent]:
    """Mark every unfinished deployment of ``device`` (except ``keep``) superseded; returns the audit events."""
    events: list[NewEvent] = []
    rows = session.exec(
        select(Deployment).where(
            col(Deployment.device_id) == device.id, col(Deployment.state).in_([s.value for s in UNFINISHED_STATES])
        )
    ).all()
    for dep in rows:
        if dep.id == keep:
            continue
        move(dep, DeploymentState.SUPERSEDED, now, error=reason)
        session.add(dep)
        events.append(
            NewEvent(ACTOR, "deployment.superseded", "deployment", str(dep.id), {"mac": device.mac, "reason": reason})
        )
    return events


def record_report(
    session: Session,
    *,
    mac: str,
    items: Mapping[str, str | None],
    reason: str,
    peer: str | None,
    now: datetime,
    policies: PolicySet,
    trusted_proxies: Iterable[str] = (),
) -> ReportResult:
    """Create or update the device ``mac`` from an opening message's items (D9).

    A new phone gets its policy; ``enrollment = auto`` approves it at once, ``approve`` leaves it pending (with
    an audit event) until an operator approves it. A changed IP supersedes the device's unfinished deployments
    (their certificate's SANs are stale); the reconciler issues the new certificate.

    Raises:
        InputError: for an invalid MAC.
    """
    mac = normalize_mac(mac)
    trusted = list(trusted_proxies)
    uri = _clip(items.get(ITEM_CONTACT_ME_URI), 255)
    uri_ip: str | None = None
    events: list[NewEvent] = []
    if uri is not None:
        try:
            target = parse_contact_me_uri(uri)
            uri_ip = str(target.ip) if target.ip is not None else None
        except ProtocolError:
            events.append(NewEvent(ACTOR, "device.bad-contact-me-uri", "device", mac, {"reason": reason}))
            uri = None
    peer_trusted = peer_is_trusted_proxy(peer, trusted)
    new_ip: str | None
    mismatch = False
    if uri_ip is not None:
        if peer is None or same_ip(peer, uri_ip) or peer_trusted:
            new_ip = uri_ip
        else:
            new_ip, mismatch = None, True
    else:
        new_ip = peer if peer is not None and not peer_trusted else None

    device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
    created = device is None
    if device is None:
        identity = DeviceIdentity(
            mac=mac,
            ips=(ipaddress.ip_address(new_ip),) if new_ip else (),
            e164=_clip(items.get(ITEM_E164), 32),
            model=_clip(items.get(ITEM_DEVICE_TYPE), 64),
            firmware=_clip(items.get(ITEM_SOFTWARE_VERSION), 64),
        )
        try:
            policy = policy_for(policies, None, identity).policy
        except PolicyError:
            policy = None
        approved = policy is not None and policy.enrollment == "auto"
        device = Device(
            mac=mac,
            policy_name=policy.name if policy is not None else None,
            enrollment=Enrollment.APPROVED if approved else Enrollment.PENDING,
            status=DeviceStatus.ENROLLED if approved else DeviceStatus.NEW,
            created_at=now,
            updated_at=now,
        )
        events.append(
            NewEvent(
                ACTOR,
                "device.discovered",
                "device",
                mac,
                {
                    "reason": reason,
                    "policy": device.policy_name,
                    "enrollment": device.enrollment.value,
                    "ip": new_ip,
                },
            )
        )
        if not approved:
            events.append(NewEvent(ACTOR, "device.approval-pending", "device", mac, {"policy": device.policy_name}))
    old_ip = device.ip
    for attr, key, limit in (
        ("e164", ITEM_E164, 32),
        ("device_type", ITEM_DEVICE_TYPE, 64),
        ("software_version", ITEM_SOFTWARE_VERSION, 64),
    ):
        value = _clip(items.get(key), limit)
        if value is not None:
            setattr(device, attr, value)
    if uri is not None and not mismatch:
        device.contact_me_uri = uri
    if mismatch:
        events.append(
            NewEvent(ACTOR, "device.address-mismatch", "device", mac, {"peer": peer, "contact_me_ip": uri_ip})
        )
    ip_changed = False
    if new_ip is not None and not same_ip(new_ip, old_ip):
        device.ip = new_ip
        ip_changed = not created and old_ip is not None
    device.last_seen_at = now
    device.updated_at = now
    session.add(device)
    session.flush()
    if ip_changed:
        events.append(NewEvent(ACTOR, "device.ip-changed", "device", mac, {"old": old_ip, "new": new_ip}))
        events.extend(supersede_unfinished(session, device, now, "ip-change"))
    append_events(session, now, events)
    return ReportResult(device, created, ip_changed)


def approve_device(session: Session, mac: str, now: datetime, actor: str) -> Device:
    """Approve a pending phone so that certmgr deploys to it.

    Raises:
        InputError: invalid MAC. NotFoundError: unknown phone. ConflictError: decommissioned phone.
    """
    try:
        mac = normalize_mac(mac)
    except InputError:
        raise
    device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
    if device is None:
        raise NotFoundError(f"no phone with MAC {mac}", mac=mac)
    if device.enrollment is Enrollment.DECOMMISSIONED:
        raise ConflictError(f"phone {mac} is decommissioned", mac=mac)
    if device.enrollment is Enrollment.APPROVED:
        return device
    device.enrollment = Enrollment.APPROVED
    if device.status is DeviceStatus.NEW:
        device.status = DeviceStatus.ENROLLED
    device.updated_at = now
    session.add(device)
    session.flush()
    append_events(session, now, [NewEvent(actor, "device.approved", "device", mac, {"policy": device.policy_name})])
    return device


def list_devices(session: Session, limit: int = 1000) -> list[Device]:
    """Devices ordered by MAC (at most ``limit``)."""
    return list(session.exec(select(Device).order_by(col(Device.mac)).limit(limit)).all())
