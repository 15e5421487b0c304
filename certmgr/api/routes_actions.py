"""The write side of the fleet: actions on devices, certificates and deployments (operator; admin to revoke
or decommission). The logic lives in :mod:`certmgr.operations`; these routes validate the body, pass the
caller's identity (audited as ``token:<name>``) and shape the answer.

Unknown ids answer 404, an action the object's state does not allow 409, a bad body 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from certmgr import operations as actions
from certmgr.api.app import RuntimeDep
from certmgr.api.auth import Admin, Operator
from certmgr.api.routes_common import NO_NUL, IdPath
from certmgr.api.routes_inventory import CertificatePublic, DeploymentPublic, DevicePublic
from certmgr.pki.crl import RevocationReason

router = APIRouter(prefix="/api/v1", tags=["actions"])

MAX_DNS_NAMES = 16


class DeviceCreate(BaseModel):
    """A phone to pre-register before it first reports."""

    model_config = ConfigDict(extra="forbid")

    mac: Annotated[str, Field(min_length=12, max_length=17, pattern=NO_NUL, examples=["00:1A:E8:12:34:56"])]
    ip: Annotated[str, Field(min_length=2, max_length=45, pattern=NO_NUL, examples=["10.1.2.3"])]
    e164: Annotated[str | None, Field(max_length=32, pattern=NO_NUL, examples=["+498912345"])] = None
    model: Annotated[str | None, Field(max_length=64, pattern=NO_NUL, examples=["OpenStage 60"])] = None
    dns_names: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253, pattern=NO_NUL)]],
        Field(max_length=MAX_DNS_NAMES),
    ] = Field(default_factory=list)


class RevokeRequest(BaseModel):
    """Why a certificate is revoked: an RFC 5280 CRLReason name."""

    model_config = ConfigDict(extra="forbid")

    reason: RevocationReason


class DecommissionResponse(BaseModel):
    """The decommissioned phone, the deployments cancelled and certificates revoked, and the CRL listing them."""

    device: DevicePublic
    cancelled_deployments: list[int]
    revoked_certificates: list[int]
    crl_number: int | None


class RevokeResponse(BaseModel):
    """The revoked certificate, its replacement being deployed (if the phone needed one) and the CRL number."""

    certificate: CertificatePublic
    replacement_certificate_id: int | None
    replacement_deployment_id: int | None
    crl_number: int | None


class RenewResponse(BaseModel):
    """The new certificate and its queued deployment."""

    certificate_id: int
    deployment_id: int
    serial: str


class RetryResponse(BaseModel):
    """The deployment now due, and the failed or cancelled one it continues (``null`` if the same row)."""

    deployment: DeploymentPublic
    retried_from: int | None


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown id."},
    409: {"description": "The object's state does not allow this action."},
}


# --- devices ------------------------------------------------------------------------------------------------
@router.post("/devices", response_model=DevicePublic, status_code=201, responses={409: _ERRORS[409]})
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


@router.post("/devices/{device_id}/approve", response_model=DevicePublic, responses=_ERRORS)
def device_approve(device_id: IdPath, who: Operator, rt: RuntimeDep) -> DevicePublic:
    """Approve a pending phone's enrollment (operator); idempotent.

    Raises:
        NotFoundError: 404. ConflictError: 409 for a decommissioned phone.
    """
    return DevicePublic.model_validate(actions.approve(rt, device_id, who.actor))


@router.post("/devices/{device_id}/decommission", response_model=DecommissionResponse, responses=_ERRORS)
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


# --- certificates -------------------------------------------------------------------------------------------
@router.post("/certificates/{certificate_id}/revoke", response_model=RevokeResponse, responses=_ERRORS)
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
    responses={**_ERRORS, 422: {"description": "The certificate cannot be issued (e.g. beyond the CA)."}},
)
def certificate_renew(certificate_id: IdPath, who: Operator, rt: RuntimeDep) -> RenewResponse:
    """Issue a new certificate for this certificate's phone now (operator) and queue its deployment.

    Raises:
        NotFoundError: 404. ConflictError: 409 if the certificate is not current or the phone not approved.
    """
    result = actions.renew_certificate(rt, certificate_id, who.actor)
    return RenewResponse(certificate_id=result.certificate_id, deployment_id=result.deployment_id, serial=result.serial)


# --- deployments --------------------------------------------------------------------------------------------
@router.post("/deployments/{deployment_id}/retry", response_model=RetryResponse, responses=_ERRORS)
def deployment_retry(deployment_id: IdPath, who: Operator, rt: RuntimeDep) -> RetryResponse:
    """Make a queued, failed or cancelled deployment due now (operator).

    Raises:
        NotFoundError: 404. ConflictError: 409 if it is in progress, verified or superseded.
    """
    result = actions.retry_deployment(rt, deployment_id, who.actor)
    return RetryResponse(
        deployment=DeploymentPublic.model_validate(result.deployment), retried_from=result.retried_from
    )


@router.post("/deployments/{deployment_id}/cancel", response_model=DeploymentPublic, responses=_ERRORS)
def deployment_cancel(deployment_id: IdPath, who: Operator, rt: RuntimeDep) -> DeploymentPublic:
    """Cancel an unfinished deployment (operator).

    Raises:
        NotFoundError: 404. ConflictError: 409 if it has finished.
    """
    return DeploymentPublic.model_validate(actions.cancel_deployment(rt, deployment_id, who.actor))
