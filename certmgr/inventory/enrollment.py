"""Inventory and enrollment (D9): what phones tell certmgr about themselves, address moves, operator approval.

Every function runs in the caller's transaction and writes its audit events there.

**Who may change a phone's record.** In Default Mode nothing is authenticated, so a message only speaks for a
phone when its TCP peer is the phone's known address or a trusted NAT/proxy
(:func:`~certmgr.inventory.addresses.peer_is_phone`):

* a **new** phone (unknown MAC) is recorded from its first message (D9), its address taken from its
  ``contact-me-uri`` when the peer agrees with it (or is a trusted proxy); its policy's enrollment mode decides
  whether it is approved at once;
* a **known** phone's record (E.164, model, firmware, ``contact-me-uri``) is updated only from its known address;
* a message for a known phone from **another** address changes nothing. If it is self-consistent (its
  ``contact-me-uri`` names the sender) it is an **address claim** (:class:`AddressClaim`): the adapter TLS-probes the
  claimed address and :func:`resolve_claim` moves the phone only on proof of possession (only a message the phone
  sends of its own accord — start-up, local-changes, inventory-changes — claims; a refused ``solicited`` claims
  nothing) — the new address serves
  the certificate certmgr last deployed to the phone (the handshake proves it holds the key). Without proof the
  move is **held** for an operator (``pending_ip``), except for a phone that never received a certificate from
  certmgr, which follows its policy's enrollment mode. A later message from the known address withdraws the claim.

A ``contact-me-uri`` is kept only if certmgr may send a contact-me there
(:func:`~certmgr.inventory.addresses.contact_me_target`): the phone's own address (or a trusted proxy), an IP
literal, the protocol's contact-me path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import ColumnElement, and_, or_
from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import UNFINISHED_STATES, move
from certmgr.db.models import Certificate, Deployment, DeploymentState, Device, DeviceStatus, Enrollment
from certmgr.errors import ConflictError, InputError, NotFoundError, PolicyError, ProtocolError
from certmgr.identity import normalize_mac
from certmgr.inventory.addresses import (
    canonical_ip,
    contact_me_target,
    peer_is_phone,
    peer_is_trusted_proxy,
    same_ip,
)
from certmgr.inventory.phones import identity_of, policy_for
from certmgr.policy import PolicySet
from certmgr.wpi.contactme import parse_contact_me_uri
from certmgr.wpi.messages import ITEM_CONTACT_ME_URI, ITEM_DEVICE_TYPE, ITEM_E164, ITEM_SOFTWARE_VERSION

ACTOR = "wpi"
#: The reasons for contact a phone reports its own details with (D9): only these can claim a new address. A
#: ``solicited`` or ``status`` call answers certmgr; from another address it is refused and claims nothing.
CLAIMING_REASONS = frozenset({"start-up", "local-changes", "inventory-changes"})


@dataclass(frozen=True)
class AddressClaim:
    """A known phone reported from another address, naming it in its ``contact-me-uri``: to be proven."""

    mac: str
    ip: str
    contact_me_uri: str


@dataclass(frozen=True)
class ReportResult:
    """What :func:`record_report` did: the device (``None`` if nothing was recorded), whether it is new, whether its
    address changed, and an address claim to prove (see the module docstring)."""

    device: Device | None
    created: bool
    ip_changed: bool
    claim: AddressClaim | None = None


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


def _reported_address(
    items: Mapping[str, str | None], peer: str | None, trusted: Sequence[str]
) -> tuple[str | None, str | None, str | None]:
    """``(address, contact-me-uri, problem)`` of a report: the address the message speaks for (the URI's IP when the
    peer agrees or is a trusted proxy, else the peer), the URI if certmgr may send contact-me there
    (:func:`~certmgr.inventory.addresses.contact_me_target`, the one rule), and what was refused."""
    uri = _clip(items.get(ITEM_CONTACT_ME_URI), 255)
    peer_trusted = peer_is_trusted_proxy(peer, trusted)
    own = None if peer_trusted else canonical_ip(peer)
    if uri is None:
        return own, None, None
    try:
        uri_ip = parse_contact_me_uri(uri).ip
    except ProtocolError as exc:
        return own, None, exc.message
    address = str(uri_ip) if uri_ip is not None and (peer_trusted or same_ip(peer, str(uri_ip))) else own
    try:
        contact_me_target(uri, address, trusted)
    except ProtocolError as exc:
        return address, None, exc.message
    return address, uri, None


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
    """Take an opening message's items for phone ``mac`` (D9), under the rules of the module docstring.

    Raises:
        InputError: for an invalid MAC.
    """
    mac = normalize_mac(mac)
    trusted = list(trusted_proxies)
    address, uri, problem = _reported_address(items, peer, trusted)
    device = session.exec(select(Device).where(col(Device.mac) == mac)).first()
    events: list[NewEvent] = []
    if problem is not None:
        events.append(NewEvent(ACTOR, "device.bad-contact-me-uri", "device", mac, {"reason": problem, "peer": peer}))
    if device is None:
        device = _new_device(session, mac, items, reason, address, uri, now, policies, events)
        append_events(session, now, events)
        return ReportResult(device, True, False)
    if not peer_is_phone(peer, device.ip, trusted) and device.ip is not None:
        # Another address speaks for a known phone: nothing changes; a self-consistent message is a claim to prove.
        claim = None
        if reason in CLAIMING_REASONS and uri is not None and address is not None and not same_ip(address, device.ip):
            claim = AddressClaim(mac, address, uri)
        events.append(
            NewEvent(ACTOR, "device.address-claim" if claim else "device.address-mismatch", "device", mac,
                     {"peer": peer, "claimed": address, "known": device.ip, "reason": reason})
        )  # fmt: skip
        append_events(session, now, events)
        return ReportResult(None, False, False, claim)
    for attr, key, limit in (
        ("e164", ITEM_E164, 32),
        ("device_type", ITEM_DEVICE_TYPE, 64),
        ("software_version", ITEM_SOFTWARE_VERSION, 64),
    ):
        value = _clip(items.get(key), limit)
        if value is not None:
            setattr(device, attr, value)
    ip_changed = False
    if device.ip is None and address is not None:
        device.ip = address  # a pre-registered phone's first report, or one recorded without an address
    if uri is not None and same_ip(address, device.ip):
        device.contact_me_uri = uri
    elif address is not None and not same_ip(address, device.ip):
        # A trusted proxy speaks for another address than the known one: a move to prove.
        claim = AddressClaim(mac, address, uri) if uri and reason in CLAIMING_REASONS else None
        append_events(session, now, events)
        return ReportResult(device, False, False, claim)
    if device.pending_ip is not None:
        events.append(NewEvent(ACTOR, "device.move-withdrawn", "device", mac, {"pending": device.pending_ip}))
        device.pending_ip = device.pending_contact_me_uri = device.pending_since = None
    device.last_seen_at = now
    device.updated_at = now
    session.add(device)
    session.flush()
    append_events(session, now, events)
    return ReportResult(device, False, ip_changed)


def _new_device(
    session: Session,
    mac: str,
    items: Mapping[str, str | None],
    reason: str,
    address: str | None,
    uri: str | None,
    now: datetime,
    policies: PolicySet,
    events: list[NewEvent],
) -> Device:
    device = Device(
        mac=mac,
        ip=address,
        contact_me_uri=uri,
        e164=_clip(items.get(ITEM_E164), 32),
        device_type=_clip(items.get(ITEM_DEVICE_TYPE), 64),
        software_version=_clip(items.get(ITEM_SOFTWARE_VERSION), 64),
        last_seen_at=now,
        created_at=now,
        updated_at=now,
    )
    try:
        policy = policy_for(policies, None, identity_of(device)).policy
    except PolicyError:
        policy = None
    approved = policy is not None and policy.enrollment == "auto"
    device.policy_name = policy.name if policy is not None else None
    device.enrollment = Enrollment.APPROVED if approved else Enrollment.PENDING
    device.status = DeviceStatus.ENROLLED if approved else DeviceStatus.NEW
    session.add(device)
    session.flush()
    details = {"reason": reason, "policy": device.policy_name, "enrollment": device.enrollment.value, "ip": address}
    events.append(NewEvent(ACTOR, "device.discovered", "device", mac, details))
    if not approved:
        events.append(NewEvent(ACTOR, "device.approval-pending", "device", mac, {"policy": device.policy_name}))
    return device


# --- address moves --------------------------------------------------------------------------------------------
def resolve_claim(
    session: Session,
    claim: AddressClaim,
    *,
    served_sha256: str | None,
    probe_error: str | None,
    now: datetime,
    policies: PolicySet,
) -> str:
    """Decide an address claim after the TLS probe of the claimed address (module docstring); returns what was
    done: ``moved``, ``held`` or ``stale`` (the phone's record changed meanwhile; nothing done).

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    device = session.exec(select(Device).where(col(Device.mac) == claim.mac)).first()
    if device is None or same_ip(device.ip, claim.ip) or device.enrollment is Enrollment.DECOMMISSIONED:
        return "stale"
    current = session.get(Certificate, device.current_certificate_id) if device.current_certificate_id else None
    if current is not None and served_sha256 is not None and served_sha256 == current.fingerprint_sha256:
        proof = f"the new address serves certificate {current.serial}"
    elif current is None and _auto_enrolled(device, policies):
        proof = "the phone never received a certificate from certmgr; its policy enrolls automatically"
    else:
        why = (
            "the new address did not serve the phone's certificate"
            if current is not None
            else "the phone's policy requires approval"
        )
        device.pending_ip, device.pending_contact_me_uri, device.pending_since = claim.ip, claim.contact_me_uri, now
        device.updated_at = now
        session.add(device)
        details = {"from": device.ip, "to": claim.ip, "reason": why, "probe_error": probe_error}
        append_events(session, now, [NewEvent(ACTOR, "device.move-held", "device", device.mac, details)])
        return "held"
    events = move_device(session, device, claim.ip, claim.contact_me_uri, now)
    events.insert(0, NewEvent(ACTOR, "device.moved", "device", device.mac, {"to": claim.ip, "proof": proof}))
    append_events(session, now, events)
    return "moved"


def _auto_enrolled(device: Device, policies: PolicySet) -> bool:
    try:
        return policy_for(policies, device.policy_name, identity_of(device)).policy.enrollment == "auto"
    except (PolicyError, InputError):
        return False


def move_device(session: Session, device: Device, ip: str, contact_me_uri: str | None, now: datetime) -> list[NewEvent]:
    """Give ``device`` its new address (and contact-me URI); its unfinished deployments are superseded (their
    certificates name the old address) and the reconciler issues for the new one. Returns the audit events.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    old = device.ip
    device.ip = ip
    device.contact_me_uri = contact_me_uri
    device.pending_ip = device.pending_contact_me_uri = device.pending_since = None
    device.last_seen_at = device.updated_at = now
    session.add(device)
    session.flush()
    events = [NewEvent(ACTOR, "device.ip-changed", "device", device.mac, {"old": old, "new": ip})]
    events.extend(supersede_unfinished(session, device, now, "ip-change"))
    return events


class _Waiting(Protocol):
    @property
    def enrollment(self) -> Enrollment: ...
    @property
    def pending_ip(self) -> str | None: ...


def held_move(device: _Waiting) -> str | None:
    """The address a move of ``device`` (a ``Device`` row or anything with its ``enrollment`` and ``pending_ip``)
    is held to for want of proof of possession (module docstring), or ``None``. :func:`held_move_clause` is the
    same rule in SQL."""
    return None if device.enrollment is Enrollment.DECOMMISSIONED else device.pending_ip


def awaits_approval(device: _Waiting) -> bool:
    """Whether ``device`` waits for an operator: its enrollment is pending, or a move of its address is held
    (:func:`held_move`). :func:`approve_device` ends both; :func:`awaits_approval_clause` is the same rule in SQL.
    """
    return device.enrollment is Enrollment.PENDING or held_move(device) is not None


def held_move_clause() -> ColumnElement[bool]:
    """:func:`held_move` as a SQL condition on ``Device``: a move of the phone's address is held."""
    return and_(col(Device.pending_ip).is_not(None), col(Device.enrollment) != Enrollment.DECOMMISSIONED.value)


def awaits_approval_clause() -> ColumnElement[bool]:
    """:func:`awaits_approval` as a SQL condition on ``Device`` (counts and filters over the whole fleet)."""
    return or_(col(Device.enrollment) == Enrollment.PENDING.value, held_move_clause())


def phone_by_mac(session: Session, mac: str) -> Device:
    """The phone with MAC ``mac`` (any spelling :func:`~certmgr.identity.normalize_mac` accepts).

    Raises:
        InputError: ``mac`` is not a MAC address. NotFoundError: no phone has it.
    """
    normalised = normalize_mac(mac)
    device = session.exec(select(Device).where(col(Device.mac) == normalised)).first()
    if device is None:
        raise NotFoundError(f"no phone with MAC {normalised}", mac=normalised)
    return device


def approve_device(session: Session, mac: str, now: datetime, actor: str, *, move_to: str | None = None) -> Device:
    """Approve a pending phone so that certmgr deploys to it, and a held address move (the phone gets the new
    address; a certificate for it is issued and deployed there).

    A held move is approved only when ``move_to`` names the address it holds: the operator vouches for the address
    they were shown, and a later claim (which replaces the held address) is not approved in its place.

    Raises:
        InputError: invalid MAC. NotFoundError: unknown phone. ConflictError: decommissioned phone; a move is held
        and ``move_to`` does not name its address; ``move_to`` names an address no move is held to (withdrawn or
        decided meanwhile) and the phone is not at.
    """
    device = phone_by_mac(session, mac)
    mac = device.mac
    if device.enrollment is Enrollment.DECOMMISSIONED:
        raise ConflictError(f"phone {mac} is decommissioned", mac=mac)
    if device.pending_ip is not None and not same_ip(move_to, device.pending_ip):
        asked = f"approving a move to {move_to}" if move_to else "approving without naming the address"
        raise ConflictError(
            f"phone {mac}: a move to {device.pending_ip} is held; {asked} is refused (look again and name it)",
            mac=mac,
            held=device.pending_ip,
        )
    if device.pending_ip is None and move_to is not None and not same_ip(move_to, device.ip):
        raise ConflictError(
            f"phone {mac}: no move to {move_to} is held (withdrawn or decided meanwhile); it is at {device.ip}",
            mac=mac,
        )
    if device.pending_ip is not None:  # a held address move: the operator vouches for the new address
        pending = device.pending_ip
        events = [NewEvent(actor, "device.move-approved", "device", mac, {"from": device.ip, "to": pending})]
        events += move_device(session, device, pending, device.pending_contact_me_uri, now)
        append_events(session, now, events)
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
