"""``/api/v1/devices``: the phones — list, one phone with its history, its effective policy (viewer); register and
approve (operator), decommission (admin). The use cases live in :mod:`certmgr.operations`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import not_, or_, select
from sqlmodel import col

from certmgr import operations as actions
from certmgr.api.common import (
    ERRORS,
    Cursor,
    ExpiringWithin,
    IdPath,
    Limit,
    Text,
    after,
    fetch_page,
    get_or_404,
    like_pattern,
)
from certmgr.api.deps import Admin, Operator, RuntimeDep, SessionDep, Viewer
from certmgr.api.schemas import (
    NO_NUL,
    CertificatePublic,
    DecommissionResponse,
    DeploymentPublic,
    DeviceCreate,
    DeviceDetail,
    DevicePublic,
    EffectivePolicy,
    Page,
    PolicySummary,
)
from certmgr.db.models import Certificate, Deployment, Device, DeviceStatus
from certmgr.inventory.enrollment import awaits_approval_clause
from certmgr.inventory.phones import identity_of, policy_for
from certmgr.policy.templates import render_leaf_names

router = APIRouter(prefix="/api/v1", tags=["inventory"])

HISTORY_CAP = 100


@router.get("/devices", response_model=Page[DevicePublic])
def devices_list(
    _who: Viewer,
    rt: RuntimeDep,
    session: SessionDep,
    status: DeviceStatus | None = None,
    policy: Text = None,
    model: Text = None,
    firmware: Text = None,
    expiring_within: ExpiringWithin = None,
    awaiting_approval: Annotated[
        bool | None, Query(description="Only phones awaiting an operator (pending enrollment or a held move).")
    ] = None,
    q: Annotated[
        str | None, Query(max_length=64, pattern=r"^[^\x00]*$", description="Part of MAC, E.164 or IP.")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[DevicePublic]:
    """Phones, filtered; ``q`` searches MAC, number and IP (viewer)."""
    query = select(Device).where(col(Device.id) > after(cursor))
    if status is not None:
        query = query.where(col(Device.status) == status)
    if policy is not None:
        query = query.where(col(Device.policy_name) == policy)
    if model is not None:
        query = query.where(col(Device.device_type) == model)
    if firmware is not None:
        query = query.where(col(Device.software_version) == firmware)
    if expiring_within is not None:
        limit_at = rt.clock.now() + timedelta(days=expiring_within)
        query = query.join(Certificate, col(Certificate.id) == col(Device.current_certificate_id)).where(
            col(Certificate.not_after) <= limit_at
        )
    if awaiting_approval is not None:
        waiting = awaits_approval_clause()
        query = query.where(waiting if awaiting_approval else not_(waiting))
    if q:
        pattern = like_pattern(q)
        query = query.where(
            or_(
                col(Device.mac).ilike(pattern, escape="\\"),
                col(Device.e164).ilike(pattern, escape="\\"),
                col(Device.ip).ilike(pattern, escape="\\"),
            )
        )
    return fetch_page(session, query, col(Device.id), limit, DevicePublic)


@router.get("/devices/{device_id}", response_model=DeviceDetail)
def device_detail(device_id: IdPath, _who: Viewer, session: SessionDep) -> DeviceDetail:
    """One phone with its current certificate, certificate history and deployments (viewer); 404 if unknown."""
    device = get_or_404(session, Device, device_id, "device")
    certs = list(
        session.execute(
            select(Certificate)
            .where(col(Certificate.device_id) == device_id)
            .order_by(col(Certificate.id).desc())
            .limit(HISTORY_CAP)
        ).scalars()
    )
    current = None
    if device.current_certificate_id is not None:
        current = session.get(Certificate, device.current_certificate_id)
    deployments = session.execute(
        select(Deployment)
        .where(col(Deployment.device_id) == device_id)
        .order_by(col(Deployment.id).desc())
        .limit(HISTORY_CAP)
    ).scalars()
    return DeviceDetail(
        device=DevicePublic.model_validate(device),
        current_certificate=CertificatePublic.model_validate(current) if current is not None else None,
        certificates=[CertificatePublic.model_validate(c) for c in certs],
        deployments=[DeploymentPublic.model_validate(d) for d in deployments],
    )


@router.get("/devices/{device_id}/policy", response_model=EffectivePolicy, tags=["policies"])
def device_effective_policy(device_id: IdPath, _who: Viewer, rt: RuntimeDep, session: SessionDep) -> EffectivePolicy:
    """The effective policy of one phone (viewer) — :func:`certmgr.inventory.phones.policy_for`, the answer every
    path uses: its assigned policy if still loaded, else the first match; with the subject and SANs its next
    certificate would get. 404 for an unknown id; 422 if no SAN can be built (e.g. a pre-registered phone without
    an address under a policy that needs one)."""
    device = get_or_404(session, Device, device_id, "device")
    identity = identity_of(device)
    choice = policy_for(rt.policies, device.policy_name, identity)
    names = render_leaf_names(choice.policy, identity)
    return EffectivePolicy(
        device_id=device_id,
        mac=device.mac,
        policy=PolicySummary.of(choice.policy),
        assigned=device.policy_name,
        selected_now=rt.policies.select(identity).name,
        source=choice.source,
        reason=choice.reason,
        subject=names.subject.rfc4514_string(),
        dns_names=list(names.dns_names),
        ip_addresses=[str(ip) for ip in names.ip_addresses],
    )


@router.post("/devices", response_model=DevicePublic, status_code=201, responses={409: ERRORS[409]}, tags=["actions"])
def device_register(body: DeviceCreate, who: Operator, rt: RuntimeDep) -> DevicePublic:
    """Pre-register a phone (operator): approved at once or pending, as its policy's enrollment says.

    Raises:
        InputError: 422 for an invalid MAC, IP, number or DNS name. ConflictError: 409 if the MAC is known.
    """
    device = actions.register_device(
        rt,
        mac=body.mac,
        ip=body.ip,
        e164=body.e164,
        model=body.model,
        dns_names=body.dns_names,
        actor=who.actor,
    )
    return DevicePublic.model_validate(device)


@router.post("/devices/{device_id}/approve", response_model=DevicePublic, responses=ERRORS, tags=["actions"])
def device_approve(
    device_id: IdPath,
    who: Operator,
    rt: RuntimeDep,
    move_to: Annotated[
        str | None,
        Query(max_length=64, pattern=NO_NUL, description="The held move's address (its pending_ip) being approved."),
    ] = None,
) -> DevicePublic:
    """Approve a pending phone's enrollment, or its address move held for want of proof (operator; the move only
    with ``move_to`` naming its address, so that a later claim is not approved in its place); idempotent.

    Raises:
        NotFoundError: 404. ConflictError: 409 for a decommissioned phone, or a move held elsewhere than move_to.
    """
    return DevicePublic.model_validate(actions.approve(rt, device_id, who.actor, move_to=move_to))


@router.post(
    "/devices/{device_id}/decommission", response_model=DecommissionResponse, responses=ERRORS, tags=["actions"]
)
def device_decommission(device_id: IdPath, who: Admin, rt: RuntimeDep) -> DecommissionResponse:
    """Take a phone out of service (admin): cancel its unfinished deployments and revoke its unexpired
    certificates (cessationOfOperation); the CRL is re-signed.

    Raises:
        NotFoundError: 404. ConflictError: 409 if already decommissioned.
    """
    result = actions.decommission_device(rt, device_id, who.actor)
    return DecommissionResponse(
        device=DevicePublic.model_validate(result.device),
        cancelled_deployments=list(result.cancelled_deployments),
        revoked_certificates=list(result.revoked_certificates),
        crl_number=result.crl_number,
    )
