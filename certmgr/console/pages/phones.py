"""``/ui/phones`` (search, filters, sort, keyset pages) and ``/ui/phones/{mac}`` (one phone's proof and actions).

Actions (operator: renew now, approve; admin: decommission, revoke with a reason) are the use cases of
:mod:`certmgr.operations`, audited with the actor ``console:<token name>``; after the POST the browser is sent
back to the phone's page (303), which says what happened.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from certmgr import operations
from certmgr.api.deps import RuntimeDep
from certmgr.audit.tokens import Role
from certmgr.console.auth import Form, User, field, require
from certmgr.console.fleet import SORTS, parse_filter, phones_page
from certmgr.console.pages.common import ROUTE, int_id, params, see_other
from certmgr.console.phone import find_device, page_mac, phone_detail
from certmgr.console.render import render_page
from certmgr.db.engine import session_scope
from certmgr.db.models import DeviceStatus
from certmgr.errors import InputError
from certmgr.pki.crl import RevocationReason

router = APIRouter(**ROUTE)  # type: ignore[arg-type]

DONE = {
    "renewed": "A new certificate was issued and its deployment queued.",
    "approved": "The phone is approved: certmgr will issue and deploy its certificate.",
    "decommissioned": "The phone is decommissioned: its deployments are cancelled and its certificates revoked.",
    "revoked": "The certificate is revoked; a replacement is queued if the phone is in service.",
    "retried": "The deployment is due now.",
    "cancelled": "The deployment is cancelled.",
}


def phone_path(mac: str) -> str:
    """The page of the phone with MAC ``mac``."""
    return f"/ui/phones/{quote(mac, safe=':')}"


@router.get("/ui/phones")
def phones_list(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """The phone list: the filter is the query string (bookmarkable)."""
    flt, problems = parse_filter(params(request))
    with session_scope(rt.engine) as session:
        page = phones_page(session, flt, rt.clock.now())
    return render_page(
        request,
        "phones.html",
        {
            "flt": flt,
            "problems": problems,
            "page": page,
            "sorts": SORTS,
            "statuses": [s.value for s in DeviceStatus],
            "policies": [p.name for p in rt.policies],
        },
        status=200,
    )


def _detail(request: Request, rt: RuntimeDep, mac: str, template: str) -> Response:
    with session_scope(rt.engine) as session:
        device = find_device(session, mac)
        detail = phone_detail(session, rt.policies, device)
        session.expunge_all()
    done = DONE.get(params(request).get("done", ""))
    return render_page(
        request,
        template,
        {"d": detail, "done": done, "reasons": [r.value for r in RevocationReason], "phone_path": phone_path},
    )


@router.get("/ui/phones/{mac}")
def phone_page(request: Request, rt: RuntimeDep, _user: User, mac: str) -> Response:
    """One phone: identity, effective policy, issued → written → served, timeline, deployments, history."""
    return _detail(request, rt, mac, "phone.html")


@router.get("/ui/phones/{mac}/progress")
def phone_progress(request: Request, rt: RuntimeDep, _user: User, mac: str) -> Response:
    """The phone's status and proof section alone (what htmx polls while a deployment is under way)."""
    return _detail(request, rt, mac, "phone_progress.html")


def _device_id(rt: RuntimeDep, mac: str) -> tuple[int, str]:
    with session_scope(rt.engine) as session:
        device = find_device(session, mac)
        assert device.id is not None
        return device.id, device.mac


@router.post("/ui/phones/{mac}/renew")
def phone_renew(request: Request, rt: RuntimeDep, user: User, _form: Form, mac: str) -> Response:
    """Issue a new certificate now and queue its deployment (operator)."""
    require(rt, user, Role.OPERATOR, request)
    normalised = page_mac(mac)  # a 404 page for a non-MAC; renew_mac's NotFoundError for an unknown phone
    operations.renew_mac(rt, normalised, user.actor)
    return see_other(phone_path(normalised) + "?done=renewed")


@router.post("/ui/phones/{mac}/approve")
def phone_approve(request: Request, rt: RuntimeDep, user: User, form: Form, mac: str) -> Response:
    """Approve a pending phone, or its held address move to the address the page showed (``move_to``) (operator)."""
    require(rt, user, Role.OPERATOR, request)
    device_id, normalised = _device_id(rt, mac)
    operations.approve(rt, device_id, user.actor, move_to=field(form, "move_to", max_length=64) or None)
    return see_other(phone_path(normalised) + "?done=approved")


@router.post("/ui/phones/{mac}/decommission")
def phone_decommission(request: Request, rt: RuntimeDep, user: User, form: Form, mac: str) -> Response:
    """Take the phone out of service (admin; the form's ``confirm`` box must be ticked)."""
    require(rt, user, Role.ADMIN, request)
    device_id, normalised = _device_id(rt, mac)
    if field(form, "confirm") != "yes":
        raise InputError("tick the box to confirm the decommissioning")
    operations.decommission_device(rt, device_id, user.actor)
    return see_other(phone_path(normalised) + "?done=decommissioned")


@router.post("/ui/certificates/{certificate_id}/revoke")
def certificate_revoke(request: Request, rt: RuntimeDep, user: User, form: Form, certificate_id: str) -> Response:
    """Revoke a certificate with an RFC 5280 reason (admin); back to its phone."""
    require(rt, user, Role.ADMIN, request)
    ident = int_id(certificate_id, "certificate")
    raw = field(form, "reason", max_length=64)
    try:
        reason = RevocationReason(raw)
    except ValueError:
        raise InputError(f"reason: one of {', '.join(r.value for r in RevocationReason)}") from None
    result = operations.revoke_certificate(rt, ident, reason, user.actor)
    with session_scope(rt.engine) as session:
        from certmgr.db.models import Device

        device = session.get(Device, result.certificate.device_id)
        mac = device.mac if device is not None else ""
    return see_other(phone_path(mac) + "?done=revoked" if mac else "/ui/phones")


__all__ = ["DONE", "phone_path", "router"]
