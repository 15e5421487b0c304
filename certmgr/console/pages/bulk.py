"""``/ui/bulk`` (preview and confirm a bulk action over a phone filter) and ``/ui/jobs`` (its progress).

GET ``/ui/bulk?action=renew|retry|approve&<phone filter>`` shows how many phones match and the first rows; the
confirmation POSTs the same filter, and the job runs server-side (:mod:`certmgr.console.bulk`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from certmgr.api.deps import RuntimeDep
from certmgr.audit.tokens import Role
from certmgr.console.auth import Form, User, field, require
from certmgr.console.bulk import ACTIONS, create_job, describe, get_job, preview, recent_jobs
from certmgr.console.fleet import parse_filter
from certmgr.console.pages.common import ROUTE, int_id, params, see_other
from certmgr.console.render import render_page
from certmgr.errors import ConflictError, InputError

router = APIRouter(**ROUTE)  # type: ignore[arg-type]

_FILTER_FIELDS = ("q", "status", "policy", "model", "firmware", "expiring", "drift", "pending")


def _action(value: str) -> str:
    if value not in ACTIONS:
        raise InputError(f"action: one of {', '.join(ACTIONS)}")
    return value


@router.get("/ui/bulk")
def bulk_preview(request: Request, rt: RuntimeDep, user: User) -> Response:
    """What the bulk action would touch, and the button that confirms it (operator)."""
    require(rt, user, Role.OPERATOR, request)
    p = params(request)
    action = _action(p.get("action", ""))
    flt, problems = parse_filter({k: v for k, v in p.items() if k in _FILTER_FIELDS})
    result = preview(rt, flt, action)
    return render_page(
        request, "bulk.html", {"p": result, "what": ACTIONS[action], "problems": problems, "fields": flt.params()}
    )


@router.post("/ui/bulk")
def bulk_start(request: Request, rt: RuntimeDep, user: User, form: Form) -> Response:
    """Start the confirmed bulk job (operator) and show its progress."""
    require(rt, user, Role.OPERATOR, request)
    action = _action(field(form, "action", max_length=16))
    flt, problems = parse_filter({k: field(form, k) for k in _FILTER_FIELDS})
    if problems:
        raise InputError("; ".join(problems))
    expected_raw = field(form, "expected", max_length=10)
    expected = int(expected_raw) if expected_raw.isdigit() else 0
    runner = request.app.state.console_jobs
    if runner.busy():
        raise ConflictError("two bulk jobs are already running: wait for one to finish")
    job_id = create_job(rt, flt, action, user.actor, expected)
    runner.start(job_id)
    return see_other(f"/ui/jobs/{job_id}")


@router.get("/ui/jobs")
def jobs_page(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """The newest bulk jobs."""
    return render_page(request, "jobs.html", {"jobs": recent_jobs(rt), "describe": describe})


def _job(request: Request, rt: RuntimeDep, job_id: str, template: str) -> Response:
    job = get_job(rt, int_id(job_id, "bulk job"))
    return render_page(request, template, {"job": job, "what": describe(job)})


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, rt: RuntimeDep, _user: User, job_id: str) -> Response:
    """One bulk job and its progress (refreshes itself with htmx while it runs)."""
    return _job(request, rt, job_id, "job.html")


@router.get("/ui/jobs/{job_id}/progress")
def job_progress(request: Request, rt: RuntimeDep, _user: User, job_id: str) -> Response:
    """The progress section alone (what htmx polls)."""
    return _job(request, rt, job_id, "job_progress.html")


__all__ = ["router"]
