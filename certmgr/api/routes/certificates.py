"""``/api/v1/certificates``: list, one certificate and its PEM (viewer); renew now (operator), revoke (admin).

Private keys never leave through these routes: :class:`CertificatePublic` has no key field and the PEM download
is the certificate alone. The use cases live in :mod:`certmgr.operations`; unknown ids answer 404, an action the
certificate's state does not allow 409, a bad body 422.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response
from sqlalchemy import select
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
)
from certmgr.api.deps import Admin, Operator, RuntimeDep, SessionDep, Viewer
from certmgr.api.schemas import CertificatePublic, Page, RenewResponse, RevokeRequest, RevokeResponse
from certmgr.db.models import MAX_ID, Certificate, CertificateStatus

router = APIRouter(prefix="/api/v1")


@router.get("/certificates", response_model=Page[CertificatePublic], tags=["inventory"])
def certificates_list(
    _who: Viewer,
    rt: RuntimeDep,
    session: SessionDep,
    status: CertificateStatus | None = None,
    device_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
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


@router.get("/certificates/{certificate_id}", response_model=CertificatePublic, tags=["inventory"])
def certificate_detail(certificate_id: IdPath, _who: Viewer, session: SessionDep) -> CertificatePublic:
    """One certificate (viewer); 404 if unknown."""
    return CertificatePublic.model_validate(get_or_404(session, Certificate, certificate_id, "certificate"))


@router.get(
    "/certificates/{certificate_id}/pem",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}, "description": "The certificate in PEM."}},
    tags=["inventory"],
)
def certificate_pem(certificate_id: IdPath, _who: Viewer, session: SessionDep) -> Response:
    """The certificate as PEM — the certificate only, never a key (viewer)."""
    row = get_or_404(session, Certificate, certificate_id, "certificate")
    return Response(
        content=row.cert_pem,
        media_type="application/x-pem-file",
        headers={"Content-Disposition": f'attachment; filename="{row.serial}.pem"'},
    )


@router.post("/certificates/{certificate_id}/revoke", response_model=RevokeResponse, responses=ERRORS, tags=["actions"])
def certificate_revoke(
    certificate_id: IdPath, body: Annotated[RevokeRequest, Body()], who: Admin, rt: RuntimeDep
) -> RevokeResponse:
    """Revoke a certificate (admin) with an RFC 5280 reason; the CRL is re-signed and a phone still in service
    gets a replacement queued for deployment.

    Raises:
        NotFoundError: 404. ConflictError: 409 if already revoked or expired.
    """
    result = actions.revoke_certificate(rt, certificate_id, body.reason, who.actor)
    return RevokeResponse(
        certificate=CertificatePublic.model_validate(result.certificate),
        replacement_certificate_id=result.replacement_certificate_id,
        replacement_deployment_id=result.replacement_deployment_id,
        crl_number=result.crl_number,
    )


@router.post(
    "/certificates/{certificate_id}/renew",
    response_model=RenewResponse,
    status_code=201,
    responses={**ERRORS, 422: {"description": "The certificate cannot be issued (e.g. beyond the CA)."}},
    tags=["actions"],
)
def certificate_renew(certificate_id: IdPath, who: Operator, rt: RuntimeDep) -> RenewResponse:
    """Issue a new certificate for this certificate's phone now (operator) and queue its deployment.

    Raises:
        NotFoundError: 404. ConflictError: 409 if the certificate is not current or the phone not approved.
    """
    result = actions.renew_certificate(rt, certificate_id, who.actor)
    return RenewResponse(certificate_id=result.certificate_id, deployment_id=result.deployment_id, serial=result.serial)
