"""``/ui/deployments``: deployments by state — failed and stuck first — with retry and cancel (operator)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlmodel import col

from certmgr import operations
from certmgr.api.deps import RuntimeDep
from certmgr.audit.tokens import Role
from certmgr.console.auth import Form, User, field, require, safe_next
from certmgr.console.pages.common import ROUTE, int_id, params, see_other
from certmgr.console.phone import transcript_lines
from certmgr.console.render import render_page
from certmgr.db.deployments import IN_FLIGHT_STATES
from certmgr.db.engine import session_scope
from certmgr.db.models import Deployment, DeploymentState, Device
from certmgr.errors import NotFoundError

router = APIRouter(**ROUTE)  # type: ignore[arg-type]

PAGE = 50
#: The order of the page: what needs a person first.
ORDER = (
    DeploymentState.FAILED,
    DeploymentState.VERIFYING,
    DeploymentState.WRITTEN,
    DeploymentState.AWAITING_CALLBACK,
    DeploymentState.CONTACTING,
    DeploymentState.QUEUED,
    DeploymentState.VERIFIED,
    DeploymentState.CANCELLED,
    DeploymentState.SUPERSEDED,
)


@router.get("/ui/deployments")
def deployments_page(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """Deployments of one state (``?state=``), newest first; stuck in-flight ones are marked."""
    p = params(request)
    problems: list[str] = []
    state = DeploymentState.FAILED
    if p.get("state"):
        try:
            state = DeploymentState(p["state"])
        except ValueError:
            problems.append(f"state: one of {', '.join(s.value for s in DeploymentState)}")
    before = p.get("before", "")
    before_id = int(before) if before.isdigit() and len(before) <= 10 else None
    if before and before_id is None:
        problems.append("that page link is not valid: showing the first page")
    now = rt.clock.now()
    stuck_after = timedelta(seconds=rt.settings.stuck_timeout_seconds)
    with session_scope(rt.engine) as session:
        counts: dict[str, int] = {
            str(getattr(s, "value", s)): int(n)
            for s, n in session.execute(select(col(Deployment.state), func.count()).group_by(col(Deployment.state)))
        }
        query = (
            select(Deployment, col(Device.mac))
            .join(Device, col(Device.id) == col(Deployment.device_id))
            .where(col(Deployment.state) == state.value)
        )
        if before_id is not None:
            query = query.where(col(Deployment.id) < before_id)
        rows = session.execute(query.order_by(col(Deployment.id).desc()).limit(PAGE + 1)).all()
        session.expunge_all()
    items = [
        {
            "dep": dep,
            "mac": mac,
            "stuck": dep.state in IN_FLIGHT_STATES and now - dep.updated_at >= stuck_after,
        }
        for dep, mac in rows[:PAGE]
    ]
    next_before = items[-1]["dep"].id if len(rows) > PAGE else None
    tabs = [(s.value, counts.get(s.value, 0)) for s in ORDER]
    return render_page(
        request,
        "deployments.html",
        {"state": state.value, "tabs": tabs, "items": items, "next_before": next_before, "problems": problems},
    )


@router.get("/ui/deployments/{deployment_id}")
def deployment_page(request: Request, rt: RuntimeDep, _user: User, deployment_id: str) -> Response:
    """One deployment with its (redacted) transcript."""
    ident = int_id(deployment_id, "deployment")
    with session_scope(rt.engine) as session:
        dep = session.get(Deployment, ident)
        if dep is None:
            raise NotFoundError(f"no deployment {ident}", id=ident)
        device = session.get(Device, dep.device_id)
        session.expunge_all()
    return render_page(
        request,
        "deployment.html",
        {"dep": dep, "mac": device.mac if device else "", "transcript": transcript_lines(dep.transcript)},
    )


def _back(form_value: str, fallback: str) -> str:
    back = safe_next(form_value)
    return back if back != "/ui/" else fallback


@router.post("/ui/deployments/{deployment_id}/retry")
def deployment_retry(request: Request, rt: RuntimeDep, user: User, form: Form, deployment_id: str) -> Response:
    """Make a queued, failed or cancelled deployment due now (operator)."""
    require(rt, user, Role.OPERATOR, request)
    result = operations.retry_deployment(rt, int_id(deployment_id, "deployment"), user.actor)
    back = _back(field(form, "back", max_length=1024), f"/ui/deployments/{result.deployment.id}")
    return see_other(back + ("&" if "?" in back else "?") + "done=retried")


@router.post("/ui/deployments/{deployment_id}/cancel")
def deployment_cancel(request: Request, rt: RuntimeDep, user: User, form: Form, deployment_id: str) -> Response:
    """Cancel an unfinished deployment (operator)."""
    require(rt, user, Role.OPERATOR, request)
    dep = operations.cancel_deployment(rt, int_id(deployment_id, "deployment"), user.actor)
    back = _back(field(form, "back", max_length=1024), f"/ui/deployments/{dep.id}")
    return see_other(back + ("&" if "?" in back else "?") + "done=cancelled")


__all__ = ["router"]
