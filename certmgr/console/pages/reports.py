"""``/ui/reports``: every report kind in every format, downloaded as a zip of the report and its signed manifest
(the pair ``certmgr report`` writes, checked by ``certmgr report verify``). Thin: the report, its rendering and
its manifest are :mod:`certmgr.reports`; this page only spools and zips (bounded memory) and audits the download
(``report.exported``, ``via: console``)."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlmodel import Session

from certmgr.api.deps import RuntimeDep
from certmgr.audit.checkpoint import load_verifier, public_key_fingerprint, runtime_signer
from certmgr.audit.log import append_event
from certmgr.console.auth import User
from certmgr.console.pages.common import ROUTE
from certmgr.console.render import render_page
from certmgr.db.engine import session_scope
from certmgr.errors import NotFoundError, StorageError
from certmgr.fsutil import ensure_private_dir
from certmgr.reports import ReportFormat, ReportKind, ReportParams, build_report
from certmgr.reports.manifest import MANIFEST_SUFFIX, manifest_bytes, render_signed

router = APIRouter(**ROUTE)  # type: ignore[arg-type]

SPOOL_DIR_NAME = "tmp"
_CHUNK = 256 * 1024


@router.get("/ui/reports")
def reports_page(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """The report kinds and formats, and the audit key that signs the manifests."""
    verifier = load_verifier(rt.settings.data_dir)
    return render_page(
        request,
        "reports.html",
        {
            "kinds": [k.value for k in ReportKind],
            "formats": [f.value for f in ReportFormat],
            "key_fp": public_key_fingerprint(verifier.public_pem) if verifier is not None else None,
        },
    )


def _stream(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        spool.seek(0)
        while chunk := spool.read(_CHUNK):
            yield chunk
    finally:
        spool.close()


@router.get("/ui/reports/{name}")
def report_download(request: Request, rt: RuntimeDep, user: User, name: str) -> Response:
    """``KIND.FORMAT.zip``: the report and its signed manifest (any role).

    Raises:
        NotFoundError: for an unknown kind or format. ConfigError / StorageError: 503 (no audit key, no room).
    """
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "zip" or parts[0] not in {k.value for k in ReportKind}:
        raise NotFoundError(f"no report {name[:64]!r}")
    if parts[1] not in {f.value for f in ReportFormat}:
        raise NotFoundError(f"no report format {parts[1][:16]!r}")
    kind, fmt = ReportKind(parts[0]), ReportFormat(parts[1])
    signer = runtime_signer(rt)
    spec = build_report(kind, ReportParams(), rt.clock.now())
    file_name = f"{kind.value}.{fmt.value}"
    folder = rt.settings.data_dir / SPOOL_DIR_NAME
    try:
        ensure_private_dir(folder)
        with tempfile.TemporaryFile(dir=folder) as report:
            with Session(rt.engine) as session:
                doc = render_signed(spec, spec.rows(session), fmt, report, file_name, signer)
            report.flush()
            report.seek(0)
            bundle = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by the response stream
            when = spec.generated_at.timetuple()[:6]
            with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
                with archive.open(zipfile.ZipInfo(file_name, when), "w", force_zip64=True) as entry:
                    while data := report.read(_CHUNK):
                        entry.write(data)
                archive.writestr(zipfile.ZipInfo(file_name + MANIFEST_SUFFIX, when), manifest_bytes(doc))
    except OSError as exc:
        raise StorageError(f"cannot spool the {kind.value} report: {exc.strerror or exc}") from exc
    with session_scope(rt.engine) as session:
        append_event(
            session,
            at=spec.generated_at,
            actor=user.actor,
            action="report.exported",
            subject_type="report",
            subject_id=kind.value,
            details={
                "format": fmt.value,
                "via": "console",
                "bundle": True,
                "sha256": doc["sha256"],
                "rows": doc["rows"],
            },
        )
    stamp = spec.generated_at.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _stream(bundle),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{kind.value}-{stamp}.{fmt.value}.zip"'},
    )


__all__ = ["router"]
