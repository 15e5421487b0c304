"""``/api/v1/reports/{kind}``: report exports, streamed (viewer), plain or as a signed bundle.

* ``GET /api/v1/reports/{kind}?format=csv|json|pdf`` streams the bare report while it is rendered (no manifest).
* ``GET /api/v1/reports/{kind}/bundle?format=…`` answers a zip of ``{kind}.{format}`` and its signed
  ``{kind}.{format}.manifest.json`` — exactly the pair ``certmgr report`` writes, so ``certmgr report verify``
  and the openssl commands of ``docs/reports.md`` check it unchanged. The report is rendered into an anonymous
  temporary file in the data dir (hashed on the way, never buffered in memory), the manifest is signed with the
  audit key, and then the zip is streamed from that file; the file vanishes when the response ends.

Every download is audited (``report.exported``, ``via: api``); a bundle's event also records the SHA-256 and
row count of the file served.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Engine
from sqlmodel import Session

from certmgr.api.common import Text, aware
from certmgr.api.deps import RuntimeDep, Viewer
from certmgr.audit.log import append_event
from certmgr.db.engine import session_scope
from certmgr.errors import StorageError
from certmgr.fsutil import ensure_private_dir
from certmgr.reports.manifest import MANIFEST_SUFFIX, manifest_bytes, render_signed
from certmgr.reports.queries import MAX_WEEKS, ReportKind, ReportParams, ReportSpec, build_report
from certmgr.reports.render import ReportFormat, iter_report
from certmgr.runtime import Runtime

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

BUNDLE_MEDIA_TYPE = "application/zip"
SPOOL_DIR_NAME = "tmp"  # under the data dir: the same (private) file system as the exports
_READ_CHUNK = 256 * 1024
_ZIP64_FROM = 1 << 31


class _Params:
    """The query parameters shared by both routes, checked once."""

    def __init__(
        self,
        format: Annotated[ReportFormat, Query(description="csv, json or pdf")] = ReportFormat.CSV,
        weeks: Annotated[int, Query(ge=1, le=MAX_WEEKS, description="expiry: weeks to forecast")] = 12,
        since: Annotated[datetime | None, Query(description="deployments/audit: from (ISO 8601 with zone)")] = None,
        until: Annotated[datetime | None, Query(description="deployments/audit: before (ISO 8601 with zone)")] = None,
        actor: Text = None,
        action: Text = None,
    ) -> None:
        self.format = format
        self.params = ReportParams(
            weeks=weeks, since=aware(since, "since"), until=aware(until, "until"), actor=actor, action=action
        )


def _audit(rt: Runtime, who: str, spec: ReportSpec, fmt: ReportFormat, **extra: Any) -> None:
    params = {k: v for k, v in spec.params.as_dict(spec.kind).items() if v}
    with session_scope(rt.engine) as session:
        append_event(
            session,
            at=spec.generated_at,
            actor=who,
            action="report.exported",
            subject_type="report",
            subject_id=spec.kind.value,
            details={"format": fmt.value, "via": "api", **params, **extra},
        )


def _stream(engine: Engine, spec: ReportSpec, fmt: ReportFormat) -> Iterator[bytes]:
    """The rendered report, produced while the client reads (one read-only session for the whole stream)."""
    with Session(engine) as session:
        yield from iter_report(spec, spec.rows(session), fmt)


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


_REPORT_CONTENT: dict[str, dict[str, Any]] = {"text/csv": {}, "application/json": {}, "application/pdf": {}}


@router.get(
    "/{kind}",
    response_class=StreamingResponse,
    responses={200: {"content": _REPORT_CONTENT, "description": "The report in the requested format."}},
)
def report(kind: ReportKind, who: Viewer, rt: RuntimeDep, q: Annotated[_Params, Depends()]) -> StreamingResponse:
    """A report, streamed: inventory, expiry forecast, deployment history, audit log or compliance exceptions
    (viewer). For a signed manifest use ``/api/v1/reports/{kind}/bundle``."""
    spec = build_report(kind, q.params, rt.clock.now())
    _audit(rt, who.actor, spec, q.format)
    name = f"{kind.value}-{spec.generated_at.strftime('%Y%m%dT%H%M%SZ')}.{q.format.value}"
    return StreamingResponse(
        _stream(rt.engine, spec, q.format), media_type=q.format.media_type, headers=_attachment(name)
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
    from certmgr.audit.checkpoint import runtime_signer

    signer = runtime_signer(rt)
    spec = build_report(kind, q.params, rt.clock.now())
    name = f"{kind.value}.{q.format.value}"
    folder = rt.settings.data_dir / SPOOL_DIR_NAME
    try:
        ensure_private_dir(folder)
        spool = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - anonymous; closed by the zip stream
    except OSError as exc:
        raise StorageError(f"cannot create a temporary file in {folder}: {exc.strerror or exc}") from exc
    try:
        with Session(rt.engine) as session:
            doc = render_signed(spec, spec.rows(session), q.format, spool, name, signer)
        spool.flush()
    except OSError as exc:
        spool.close()
        raise StorageError(f"cannot spool the {kind.value} report: {exc.strerror or exc}") from exc
    except BaseException:
        spool.close()
        raise
    _audit(rt, who.actor, spec, q.format, bundle=True, sha256=doc["sha256"], rows=doc["rows"])
    stamp = spec.generated_at.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _zip_stream(spool, int(doc["size"]), name, manifest_bytes(doc), spec.generated_at),
        media_type=BUNDLE_MEDIA_TYPE,
        headers=_attachment(f"{kind.value}-{stamp}.{q.format.value}.zip"),
    )
