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
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlmodel import Session

from certmgr.api.app import RuntimeDep
from certmgr.api.auth import Viewer
from certmgr.api.routes_common import Text, aware
from certmgr.errors import StorageError
from certmgr.fsutil import ensure_private_dir
from certmgr.reports.bundle import DEFAULT_FORMATS, pack_params, write_evidence_pack
from certmgr.reports.generate import export_record, record_exports, report_context
from certmgr.reports.manifest import MANIFEST_SUFFIX, manifest_bytes, render_signed
from certmgr.reports.queries import MAX_MONTHS, MAX_WEEKS, ReportKind, ReportParams, build_report
from certmgr.reports.render import ReportFormat
from certmgr.runtime import Runtime

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

BUNDLE_MEDIA_TYPE = "application/zip"
SPOOL_DIR_NAME = "tmp"  # under the data dir: the same (private) file system as the exports
_READ_CHUNK = 256 * 1024
_ZIP64_FROM = 1 << 31


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


def _spool(rt: Runtime) -> IO[bytes]:
    folder = rt.settings.data_dir / SPOOL_DIR_NAME
    try:
        ensure_private_dir(folder)
        return tempfile.TemporaryFile(dir=folder)
    except OSError as exc:
        raise StorageError(f"cannot create a temporary file in {folder}: {exc.strerror or exc}") from exc


def _render(rt: Runtime, who: str, kind: ReportKind, q: _Params, name: str, *, bundle: bool) -> tuple[IO[bytes], Any]:
    """Render the report into a spool file, sign its manifest and audit it; (spool, manifest)."""
    from certmgr.audit.checkpoint import runtime_signer

    signer = runtime_signer(rt)
    now = rt.clock.now()
    spool = _spool(rt)
    try:
        with Session(rt.engine) as session:
            ctx = report_context(rt, session, signer, now=now, actor=who, via="api")
            spec = build_report(kind, q.params, now, ctx.tz)
            doc = render_signed(spec, spec.open(session), q.format, spool, name, signer, ctx)
        spool.flush()
    except OSError as exc:
        spool.close()
        raise StorageError(f"cannot spool the {kind.value} report: {exc.strerror or exc}") from exc
    except BaseException:
        spool.close()
        raise
    params = {k: v for k, v in spec.params.as_dict(spec.kind).items() if v}
    record_exports(rt, now, who, [export_record(doc, name, "api", bundle=bundle, **params)])
    return spool, doc


def _from_spool(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        spool.seek(0)
        while data := spool.read(_READ_CHUNK):
            yield data
    finally:
        spool.close()


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
        _from_spool(spool),
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
        _from_spool(spool),
        media_type=q.format.media_type,
        headers={**_attachment(name), "Content-Length": str(doc["size"])},
    )


class _Sink:
    """The unseekable output of a streamed zip: collects what zipfile writes until it is taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the parts are taken by the response."""

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def _zip_entry(name: str, when: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100600 << 16  # a regular file, readable by its owner only once unzipped
    return info


def _zip_stream(spool: IO[bytes], size: int, name: str, manifest: bytes, when: datetime) -> Iterator[bytes]:
    """A zip of the spooled report (as ``name``) and its manifest, produced while the client reads."""
    sink = _Sink()
    try:
        spool.seek(0)
        with zipfile.ZipFile(sink, "w") as bundle:  # type: ignore[call-overload] # any object with write()
            with bundle.open(_zip_entry(name, when), "w", force_zip64=size >= _ZIP64_FROM) as entry:
                while data := spool.read(_READ_CHUNK):
                    entry.write(data)
                    if chunk := sink.take():
                        yield chunk
            bundle.writestr(_zip_entry(name + MANIFEST_SUFFIX, when), manifest)
        yield sink.take()
    finally:
        spool.close()


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
    now = datetime.fromisoformat(str(doc["generated_at"]))
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _zip_stream(spool, int(doc["size"]), name, manifest_bytes(doc), now),
        media_type=BUNDLE_MEDIA_TYPE,
        headers=_attachment(f"{kind.value}-{stamp}.{q.format.value}.zip"),
    )
