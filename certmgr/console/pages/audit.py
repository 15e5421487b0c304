"""``/ui/audit``: audit events filtered by time range, actor, action and phone; verify the chain (the result is
itself audited as ``audit.verified``, which the overview shows); the signed checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import or_, select
from sqlmodel import col

from certmgr.api.deps import RuntimeDep
from certmgr.audit.checkpoint import load_verifier, public_key_fingerprint, verify_audit
from certmgr.audit.log import append_event
from certmgr.console.auth import Form, User
from certmgr.console.overview import AUDIT_VERIFIED
from certmgr.console.pages.common import ROUTE, params
from certmgr.console.render import render_page
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditCheckpoint, AuditEvent, Deployment, Device
from certmgr.errors import CertmgrError
from certmgr.identity import normalize_mac

router = APIRouter(**ROUTE)  # type: ignore[arg-type]

PAGE = 100
CHECKPOINTS = 20


def _when(value: str, name: str, problems: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        problems.append(f"{name}: a date like 2026-11-26 or 2026-11-26T09:00 (UTC)")
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@router.get("/ui/audit")
def audit_page(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """Events (newest first, keyset by sequence number), the checkpoints, and the verification form."""
    p = params(request)
    problems: list[str] = []
    since, until = _when(p.get("since", ""), "from", problems), _when(p.get("until", ""), "until", problems)
    actor, action, phone = p.get("actor", "")[:128], p.get("action", "")[:64], p.get("phone", "").strip()
    before = p.get("before", "")
    before_seq = int(before) if before.isdigit() and len(before) <= 18 else None
    if before and before_seq is None:
        problems.append("that page link is not valid: showing the newest events")
    query = select(AuditEvent)
    if since is not None:
        query = query.where(col(AuditEvent.at) >= since)
    if until is not None:
        query = query.where(col(AuditEvent.at) < until)
    if actor:
        query = query.where(col(AuditEvent.actor) == actor)
    if action:
        query = query.where(col(AuditEvent.action) == action)
    if before_seq is not None:
        query = query.where(col(AuditEvent.seq) < before_seq)
    mac = None
    if phone:
        try:
            mac = normalize_mac(phone[:64])
        except CertmgrError:
            problems.append(f"phone {phone[:32]!r}: give a MAC address")
    with session_scope(rt.engine) as session:
        if mac is not None:
            dep_ids = [
                str(i)
                for i in session.execute(
                    select(col(Deployment.id))
                    .join(Device, col(Device.id) == col(Deployment.device_id))
                    .where(col(Device.mac) == mac)
                ).scalars()
            ]
            query = query.where(
                or_(
                    (col(AuditEvent.subject_type) == "device") & (col(AuditEvent.subject_id) == mac),
                    (col(AuditEvent.subject_type) == "deployment") & col(AuditEvent.subject_id).in_(dep_ids),
                )
            )
        events = list(session.execute(query.order_by(col(AuditEvent.seq).desc()).limit(PAGE + 1)).scalars())
        checkpoints = session.execute(
            select(col(AuditCheckpoint.at), col(AuditEvent.seq), col(AuditCheckpoint.event_hash))
            .join(AuditEvent, col(AuditEvent.id) == col(AuditCheckpoint.event_id))
            .order_by(col(AuditCheckpoint.id).desc())
            .limit(CHECKPOINTS)
        ).all()
        session.expunge_all()
    next_before = events[PAGE - 1].seq if len(events) > PAGE else None
    verifier = load_verifier(rt.settings.data_dir)
    key_fp = public_key_fingerprint(verifier.public_pem) if verifier is not None else None
    keep = {"since": p.get("since", ""), "until": p.get("until", ""), "actor": actor, "action": action, "phone": phone}
    return render_page(
        request,
        "audit.html",
        {
            "events": events[:PAGE],
            "next_before": next_before,
            "checkpoints": checkpoints,
            "problems": problems,
            "keep": {k: v for k, v in keep.items() if v},
            "key_fp": key_fp,
            "verdict": None,
        },
    )


@router.post("/ui/audit/verify")
def audit_verify(request: Request, rt: RuntimeDep, user: User, _form: Form) -> Response:
    """Verify the chain against its head and every checkpoint signature (any role); the result is audited."""
    now = rt.clock.now()
    with session_scope(rt.engine) as session:
        verdict = verify_audit(session, load_verifier(rt.settings.data_dir))
    with session_scope(rt.engine) as session:
        append_event(
            session,
            at=now,
            actor=user.actor,
            action=AUDIT_VERIFIED,
            subject_type="audit",
            subject_id="",
            details={
                "ok": verdict.ok,
                "checked": verdict.checked,
                "checkpoints": verdict.checkpoints,
                "first_bad_seq": verdict.first_bad_seq,
                "reason": verdict.reason,
            },
        )
    bad = None
    if verdict.first_bad_seq is not None:
        with session_scope(rt.engine) as session:
            bad = session.execute(
                select(AuditEvent).where(col(AuditEvent.seq) == verdict.first_bad_seq)
            ).scalar_one_or_none()
            if bad is not None:
                session.expunge(bad)
    return render_page(request, "audit_verified.html", {"verdict": verdict, "bad": bad})


__all__ = ["router"]
