"""``/api/v1/audit``: verify the audit log, list its events, checkpoint it, fetch its public key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from sqlmodel import col

from certmgr.api.common import Cursor, Limit, Text, after, aware, fetch_page
from certmgr.api.deps import Admin, RuntimeDep, SessionDep, Viewer
from certmgr.api.schemas import AuditEventPublic, AuditVerifyResult, CheckpointResult, Page
from certmgr.audit.checkpoint import create_checkpoint, load_verifier, runtime_signer, verify_audit
from certmgr.audit.log import append_event
from certmgr.db.models import AuditEvent
from certmgr.errors import NotFoundError

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("/verify", response_model=AuditVerifyResult)
def audit_verify(_who: Viewer, rt: RuntimeDep, session: SessionDep) -> AuditVerifyResult:
    """Verify the whole chain against its head and every checkpoint signature (viewer)."""
    verdict = verify_audit(session, load_verifier(rt.settings.data_dir))
    return AuditVerifyResult(
        ok=verdict.ok,
        checked=verdict.checked,
        checkpoints=verdict.checkpoints,
        first_bad_seq=verdict.first_bad_seq,
        reason=verdict.reason,
    )


@router.get("/events", response_model=Page[AuditEventPublic])
def audit_events(
    _who: Viewer,
    session: SessionDep,
    since: Annotated[datetime | None, Query(description="Events at or after (ISO 8601 with zone).")] = None,
    until: Annotated[datetime | None, Query(description="Events before (ISO 8601 with zone).")] = None,
    actor: Text = None,
    action: Text = None,
    subject_type: Text = None,
    subject_id: Text = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[AuditEventPublic]:
    """Audit events in chain order, filtered by time range, actor, action and subject (viewer)."""
    query = select(AuditEvent).where(col(AuditEvent.seq) > after(cursor))
    start, end = aware(since, "since"), aware(until, "until")
    if start is not None:
        query = query.where(col(AuditEvent.at) >= start)
    if end is not None:
        query = query.where(col(AuditEvent.at) < end)
    if actor is not None:
        query = query.where(col(AuditEvent.actor) == actor)
    if action is not None:
        query = query.where(col(AuditEvent.action) == action)
    if subject_type is not None:
        query = query.where(col(AuditEvent.subject_type) == subject_type)
    if subject_id is not None:
        query = query.where(col(AuditEvent.subject_id) == subject_id)
    return fetch_page(session, query, col(AuditEvent.seq), limit, AuditEventPublic)


@router.post("/checkpoints", response_model=CheckpointResult)
def audit_checkpoint(who: Admin, rt: RuntimeDep, session: SessionDep) -> CheckpointResult:
    """Sign the current chain head now (admin); the scheduler does this periodically."""
    checkpoint = create_checkpoint(session, runtime_signer(rt), rt.clock.now())
    if checkpoint is None:
        return CheckpointResult(created=False, seq=None, hash=None)
    event = session.get(AuditEvent, checkpoint.event_id)
    assert event is not None
    append_event(
        session,
        at=rt.clock.now(),
        actor=who.actor,
        action="audit.checkpointed",
        subject_type="audit",
        subject_id=str(event.seq),
        details={},
    )
    return CheckpointResult(created=True, seq=event.seq, hash=checkpoint.event_hash)


@router.get("/public-key.pem", response_class=PlainTextResponse)
def audit_public_key(_who: Viewer, rt: RuntimeDep) -> PlainTextResponse:
    """The audit public key (PEM) that signs checkpoints and report manifests (viewer).

    Raises:
        NotFoundError: if no audit key exists yet.
    """
    verifier = load_verifier(rt.settings.data_dir)
    if verifier is None:
        raise NotFoundError("no audit key yet: it is created with the first checkpoint or report")
    return PlainTextResponse(verifier.public_pem.decode("ascii"), media_type="application/x-pem-file")
