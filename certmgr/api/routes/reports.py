"""``/api/v1/reports``: report exports (viewer), plain, with their signed manifest, or as an evidence pack.

* ``GET /api/v1/reports/{kind}?format=csv|json|pdf`` answers the bare report (no manifest).
* ``GET /api/v1/reports/{kind}/bundle?format=…`` answers a zip of ``{kind}.{format}`` and its signed
  ``{kind}.{format}.manifest.json`` — exactly the pair ``certmgr report`` writes, so ``certmgr report verify``
  and the openssl commands of ``docs/reports.md`` check it unchanged.
* ``GET /api/v1/reports/bundle?since=…&until=…&format=pdf&format=csv`` answers the evidence pack
  (:mod:`certmgr.reports.bundle`), the same zip as ``certmgr report bundle``.

A report is rendered into an anonymous temporary file in the data dir (hashed on the way, never buffered in
memory) before the first byte is sent, so that its ``report.exported`` audit event (``via: api``) can name the
SHA-256 of exactly what is served, and the caller's token name, before anything leaves; the response is then
streamed from that file, which vanishes when the response ends.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from certmgr.api.common import Text, aware
from certmgr.api.deps import RuntimeDep, Viewer
from certmgr.fsutil import ensure_private_dir
from certmgr.reports.bundle import DEFAULT_FORMATS, pack_params, write_evidence_pack
from certmgr.reports.delivery import SPOOL_DIR_NAME, render_to_spool, stream_spool, zip_stream
from certmgr.reports.queries import MAX_MONTHS, MAX_WEEKS, ReportKind, ReportParams
from certmgr.reports.render import ReportFormat
from certmgr.runtime import Runtime

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

BUNDLE_MEDIA_TYPE = "application/zip"


class _Params:
    """The query parameters shared by the report routes, checked once."""

    def __init__(
        self,
        format: Annotated[ReportFormat, Query(description="csv, json or pdf")] = ReportFormat.CSV,
        weeks: Annotated[
            int | None, Query(ge=1, le=MAX_WEEKS, description="expiry: forecast per week, over this many weeks")
        ] = None,
        months: Annotated[
            int | None, Query(ge=1, le=MAX_MONTHS, description="expiry: months to forecast (default: whole horizon)")
        ] = None,
        since: Annotated[datetime | None, Query(description="deployments/audit: from (ISO 8601 with zone)")] = None,
        until: Annotated[datetime | None, Query(description="deployments/audit: before (ISO 8601 with zone)")] = None,
        actor: Text = None,
        action: Text = None,
    ) -> None:
        self.format = format
        self.params = ReportParams(
            weeks=weeks,
            months=months,
            since=aware(since, "since"),
            until=aware(until, "until"),
            actor=actor,
            action=action,
        )


def _render(rt: Runtime, who: str, kind: ReportKind, q: _Params, name: str, *, bundle: bool) -> tuple[IO[bytes], Any]:
    return render_to_spool(rt, actor=who, via="api", kind=kind, fmt=q.format, params=q.params, name=name, bundle=bundle)


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


_REPORT_CONTENT: dict[str, dict[str, Any]] = {"text/csv": {}, "application/json": {}, "application/pdf": {}}


@router.get(
    "/bundle",
    response_class=StreamingResponse,
    responses={200: {"content": {BUNDLE_MEDIA_TYPE: {}}, "description": "The evidence pack (zip)."}},
)
def evidence_pack(
    who: Viewer,
    rt: RuntimeDep,
    since: Annotated[datetime | None, Query(description="from (ISO 8601 with zone); default 30 days ago")] = None,
    until: Annotated[datetime | None, Query(description="before (ISO 8601 with zone); default now")] = None,
    format: Annotated[list[ReportFormat] | None, Query(description="formats (repeat); default pdf and csv")] = None,
) -> StreamingResponse:
    """The evidence pack (viewer): every report kind with its signed manifest, the CA chain, the CRL, the audit
    public key, SHA256SUMS signed by the audit key and a README for the auditor — the zip ``certmgr report
    bundle`` writes.

    Raises:
        ConfigError: (503) no CA passphrase configured, so the audit key cannot be used.
        StorageError: (503) the data dir has no room or cannot be written.
    """
    from certmgr.audit.checkpoint import runtime_signer

    signer = runtime_signer(rt)
    now = rt.clock.now()
    params = pack_params(now, aware(since, "since"), aware(until, "until"))
    folder = rt.settings.data_dir / SPOOL_DIR_NAME
    ensure_private_dir(folder)
    out = folder / f"evidence-{os.getpid()}-{secrets.token_hex(8)}.zip"
    result = write_evidence_pack(
        rt, out, signer, params=params, formats=format or list(DEFAULT_FORMATS), actor=who.actor, via="api"
    )
    try:
        spool: IO[bytes] = out.open("rb")
    finally:
        out.unlink(missing_ok=True)  # the open handle keeps the data until the response ends
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        stream_spool(spool),
        media_type=BUNDLE_MEDIA_TYPE,
        headers={**_attachment(f"evidence-{stamp}.zip"), "Content-Length": str(result.size)},
    )


@router.get(
    "/{kind}",
    response_class=StreamingResponse,
    responses={200: {"content": _REPORT_CONTENT, "description": "The report in the requested format."}},
)
def report(kind: ReportKind, who: Viewer, rt: RuntimeDep, q: Annotated[_Params, Depends()]) -> StreamingResponse:
    """A report: inventory, expiry forecast, deployment history, audit trail or compliance exceptions (viewer).
    For its signed manifest use ``/api/v1/reports/{kind}/bundle``.

    Raises:
        ConfigError: (503) no CA passphrase (the audit key checks the log) or no report font (PDF).
        StorageError: (503) the data dir has no room or cannot be written.
    """
    now = rt.clock.now()
    name = f"{kind.value}-{now.strftime('%Y%m%dT%H%M%SZ')}.{q.format.value}"
    spool, doc = _render(rt, who.actor, kind, q, name, bundle=False)
    return StreamingResponse(
        stream_spool(spool),
        media_type=q.format.media_type,
        headers={**_attachment(name), "Content-Length": str(doc["size"])},
    )


@router.get(
    "/{kind}/bundle",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {BUNDLE_MEDIA_TYPE: {}},
            "description": "A zip of KIND.FORMAT and KIND.FORMAT.manifest.json (signed by the audit key).",
        }
    },
)
def report_bundle(kind: ReportKind, who: Viewer, rt: RuntimeDep, q: Annotated[_Params, Depends()]) -> StreamingResponse:
    """A report with its signed SHA-256 manifest, as a zip: ``unzip`` it, then ``certmgr report verify
    KIND.FORMAT`` or the openssl commands of ``docs/reports.md`` (viewer).

    Raises:
        ConfigError: (503) no CA passphrase configured, so the audit key cannot be used.
        StorageError: (503) the data dir has no room or cannot be written.
    """
    name = f"{kind.value}.{q.format.value}"
    spool, doc = _render(rt, who.actor, kind, q, name, bundle=True)
    stamp = datetime.fromisoformat(str(doc["generated_at"])).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        zip_stream(spool, doc, name),
        media_type=BUNDLE_MEDIA_TYPE,
        headers=_attachment(f"{kind.value}-{stamp}.{q.format.value}.zip"),
    )
