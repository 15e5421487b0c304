"""``/api/v1/devices``, ``/api/v1/certificates``, ``/api/v1/deployments``: the read side of the fleet (viewer).

Private keys never leave through these routes: :class:`CertificatePublic` has no key field and the PEM download
is the certificate alone. Deployment transcripts are returned as stored (redacted when recorded).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import or_, select
from sqlmodel import Session, col

from certmgr.api.app import RuntimeDep
from certmgr.api.auth import Viewer
from certmgr.api.routes_common import (
    Cursor,
    IdPath,
    Limit,
    Page,
    SessionDep,
    Text,
    after,
    fetch_page,
    get_or_404,
    like_pattern,
)
from certmgr.db.models import (
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
    IssueReason,
)

router = APIRouter(prefix="/api/v1", tags=["inventory"])

HISTORY_CAP = 100
ExpiringWithin = Annotated[
    int | None, Query(ge=0, le=36500, description="Only those whose (current) certificate expires within N days.")
]


class DevicePublic(BaseModel):
    """A phone."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    mac: str
    e164: str | None
    device_type: str | None
    software_version: str | None
    ip: str | None
    hostname: str | None
    dns_names: list[str]
    policy_name: str | None
    enrollment: Enrollment
    status: DeviceStatus
    drift: bool
    last_seen_at: datetime | None
    last_contact_me_at: datetime | None
    last_verified_at: datetime | None
    current_certificate_id: int | None
    created_at: datetime
    updated_at: datetime


class CertificatePublic(BaseModel):
    """A leaf certificate (no key material)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: int
    serial: str
    subject: str
    sans: list[str]
    key_type: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    issuer_fingerprint: str
    policy_name: str | None
    status: CertificateStatus
    reason: IssueReason
    revoked_at: datetime | None
    revocation_reason: str | None
    previous_certificate_id: int | None
    created_at: datetime


class DeploymentPublic(BaseModel):
    """A deployment, without its transcript."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: int
    certificate_id: int
    state: DeploymentState
    attempts: int
    next_attempt_at: datetime | None
    profile_used: str | None
    last_error: str | None
    contacted_at: datetime | None
    written_at: datetime | None
    verified_at: datetime | None
    finished_at: datetime | None
    check_reply: str | None
    check_info: str | None
    check_probe: str | None
    created_at: datetime
    updated_at: datetime


class DeploymentDetail(DeploymentPublic):
    """A deployment with what the phone reported and the (redacted) transcript."""

    info_raw: str | None
    transcript: list[dict[str, Any]]


class DeviceDetail(BaseModel):
    """A phone with its current certificate, certificate history and deployments (newest first, capped)."""

    device: DevicePublic
    current_certificate: CertificatePublic | None
    certificates: list[CertificatePublic]
    deployments: list[DeploymentPublic]


# --- devices ----------------------------------------------------------------------------------------------
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


def _device(session: Session, device_id: int) -> Device:
    return get_or_404(session, Device, device_id, "device")


@router.get("/devices/{device_id}", response_model=DeviceDetail)
def device_detail(device_id: IdPath, _who: Viewer, session: SessionDep) -> DeviceDetail:
    """One phone with its current certificate, certificate history and deployments (viewer); 404 if unknown."""
    device = _device(session, device_id)
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


# --- certificates -----------------------------------------------------------------------------------------
@router.get("/certificates", response_model=Page[CertificatePublic])
def certificates_list(
    _who: Viewer,
    rt: RuntimeDep,
    session: SessionDep,
    status: CertificateStatus | None = None,
    device_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    serial: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9a-fA-F:]*$")] = None,
    policy: Text = None,
    expiring_within: ExpiringWithin = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[CertificatePublic]:
    """Certificates, filtered (viewer)."""
    query = select(Certificate).where(col(Certificate.id) > after(cursor))
    if status is not None:
        query = query.where(col(Certificate.status) == status)
    if device_id is not None:
        query = query.where(col(Certificate.device_id) == device_id)
    if serial is not None:
        query = query.where(col(Certificate.serial) == serial.replace(":", "").lower().lstrip("0"))
    if policy is not None:
        query = query.where(col(Certificate.policy_name) == policy)
    if expiring_within is not None:
        query = query.where(col(Certificate.not_after) <= rt.clock.now() + timedelta(days=expiring_within))
    return fetch_page(session, query, col(Certificate.id), limit, CertificatePublic)


def _certificate(session: Session, certificate_id: int) -> Certificate:
    return get_or_404(session, Certificate, certificate_id, "certificate")


@router.get("/certificates/{certificate_id}", response_model=CertificatePublic)
def certificate_detail(certificate_id: IdPath, _who: Viewer, session: SessionDep) -> CertificatePublic:
    """One certificate (viewer); 404 if unknown."""
    return CertificatePublic.model_validate(_certificate(session, certificate_id))


@router.get(
    "/certificates/{certificate_id}/pem",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}, "description": "The certificate in PEM."}},
)
def certificate_pem(certificate_id: IdPath, _who: Viewer, session: SessionDep) -> Response:
    """The certificate as PEM — the certificate only, never a key (viewer)."""
    row = _certificate(session, certificate_id)
    return Response(
        content=row.cert_pem,
        media_type="application/x-pem-file",
        headers={"Content-Disposition": f'attachment; filename="{row.serial}.pem"'},
    )


# --- deployments ------------------------------------------------------------------------------------------
@router.get("/deployments", response_model=Page[DeploymentPublic])
def deployments_list(
    _who: Viewer,
    session: SessionDep,
    state: DeploymentState | None = None,
    device_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    certificate_id: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[DeploymentPublic]:
    """Deployments, filtered (viewer)."""
    query = select(Deployment).where(col(Deployment.id) > after(cursor))
    if state is not None:
        query = query.where(col(Deployment.state) == state)
    if device_id is not None:
        query = query.where(col(Deployment.device_id) == device_id)
    if certificate_id is not None:
        query = query.where(col(Deployment.certificate_id) == certificate_id)
    return fetch_page(session, query, col(Deployment.id), limit, DeploymentPublic)


@router.get("/deployments/{deployment_id}", response_model=DeploymentDetail)
def deployment_detail(deployment_id: IdPath, _who: Viewer, session: SessionDep) -> DeploymentDetail:
    """One deployment with its transcript as stored (viewer); 404 if unknown."""
    return DeploymentDetail.model_validate(get_or_404(session, Deployment, deployment_id, "deployment"))
