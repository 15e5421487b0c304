"""``/api/v1/reports/{kind}``: report exports streamed as CSV or JSON, or a PDF (viewer).

Signed manifests come with exports written by ``certmgr report``; an HTTP download is checked against the
audit log instead (every download is audited with its kind, format and parameters).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session

from certmgr.api.app import RuntimeDep
from certmgr.api.auth import Viewer
from certmgr.api.routes_common import Text, aware
from certmgr.audit.log import append_event
from certmgr.db.engine import session_scope
from certmgr.reports.queries import MAX_WEEKS, ReportKind, ReportParams, ReportSpec, build_report
from certmgr.reports.render import ReportFormat, iter_csv, iter_json, write_pdf

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

_SPOOL_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 256 * 1024


def _stream(engine: Engine, spec: ReportSpec, fmt: ReportFormat) -> Iterator[bytes]:
    """The rendered report, produced while the client reads (one read-only session for the whole stream)."""
    with Session(engine) as session:
        rows = spec.rows(session)
        yield from iter_csv(spec, rows) if fmt is ReportFormat.CSV else iter_json(spec, rows)


@router.get(
    "/{kind}",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {}, "application/json": {}, "application/pdf": {}},
            "description": "The report in the requested format.",
        }
    },
)
def report(
    kind: ReportKind,
    who: Viewer,
    rt: RuntimeDep,
    format: Annotated[ReportFormat, Query(description="csv, json or pdf")] = ReportFormat.CSV,
    weeks: Annotated[int, Query(ge=1, le=MAX_WEEKS, description="expiry: weeks to forecast")] = 12,
    since: Annotated[datetime | None, Query(description="deployments/audit: from (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="deployments/audit: before (ISO 8601 with zone)")] = None,
    actor: Text = None,
    action: Text = None,
) -> StreamingResponse:
    """A report: inventory, expiry forecast, deployment history, audit log or compliance exceptions (viewer)."""
    params = ReportParams(
        weeks=weeks, since=aware(since, "since"), until=aware(until, "until"), actor=actor, action=action
    )
    now = rt.clock.now()
    spec = build_report(kind, params, now)
    with session_scope(rt.engine) as session:
        append_event(
            session,
            at=now,
            actor=who.actor,
            action="report.exported",
            subject_type="report",
            subject_id=kind.value,
            details={"format": format.value, "via": "api", **{k: v for k, v in params.as_dict(kind).items() if v}},
        )
    name = f"{kind.value}-{now.strftime('%Y%m%dT%H%M%SZ')}.{format.value}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format is ReportFormat.PDF:
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 - closed by the generator
        with session_scope(rt.engine) as session:
            write_pdf(spec, spec.rows(session), spool)  # type: ignore[arg-type]
        spool.seek(0)

        def chunks() -> Iterator[bytes]:
            with spool:
                while data := spool.read(_READ_CHUNK):
                    yield data

        return StreamingResponse(chunks(), media_type=format.media_type, headers=headers)
    return StreamingResponse(_stream(rt.engine, spec, format), media_type=format.media_type, headers=headers)
