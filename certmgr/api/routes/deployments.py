"""``/api/v1/deployments``: list and one deployment with its transcript (viewer); retry and cancel (operator).

Transcripts are returned as stored (redacted when recorded). The use cases live in :mod:`certmgr.operations`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlmodel import col

from certmgr import operations as actions
from certmgr.api.common import ERRORS, Cursor, IdPath, Limit, after, fetch_page, get_or_404
from certmgr.api.deps import Operator, RuntimeDep, SessionDep, Viewer
from certmgr.api.schemas import DeploymentDetail, DeploymentPublic, Page, RetryResponse
from certmgr.db.models import MAX_ID, Deployment, DeploymentState

router = APIRouter(prefix="/api/v1")


@router.get("/deployments", response_model=Page[DeploymentPublic], tags=["inventory"])
def deployments_list(
    _who: Viewer,
    session: SessionDep,
    state: DeploymentState | None = None,
    device_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    certificate_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
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


@router.get("/deployments/{deployment_id}", response_model=DeploymentDetail, tags=["inventory"])
def deployment_detail(deployment_id: IdPath, _who: Viewer, session: SessionDep) -> DeploymentDetail:
    """One deployment with its transcript as stored (viewer); 404 if unknown."""
    return DeploymentDetail.model_validate(get_or_404(session, Deployment, deployment_id, "deployment"))


@router.post("/deployments/{deployment_id}/retry", response_model=RetryResponse, responses=ERRORS, tags=["actions"])
def deployment_retry(deployment_id: IdPath, who: Operator, rt: RuntimeDep) -> RetryResponse:
    """Make a queued, failed or cancelled deployment due now (operator).

    Raises:
        NotFoundError: 404. ConflictError: 409 if it is in progress, verified or superseded.
    """
    result = actions.retry_deployment(rt, deployment_id, who.actor)
    return RetryResponse(
        deployment=DeploymentPublic.model_validate(result.deployment), retried_from=result.retried_from
    )


@router.post("/deployments/{deployment_id}/cancel", response_model=DeploymentPublic, responses=ERRORS, tags=["actions"])
def deployment_cancel(deployment_id: IdPath, who: Operator, rt: RuntimeDep) -> DeploymentPublic:
    """Cancel an unfinished deployment (operator).

    Raises:
        NotFoundError: 404. ConflictError: 409 if it has finished.
    """
    return DeploymentPublic.model_validate(actions.cancel_deployment(rt, deployment_id, who.actor))
