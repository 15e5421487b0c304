"""``/ui/reports``: every report kind in every format, downloaded as a zip of the report and its signed manifest
(the pair ``certmgr report`` writes, checked by ``certmgr report verify``). Thin: rendering, signing, auditing the
download (``report.exported``, ``via: console``) and zipping are :mod:`certmgr.reports.delivery`, the path the API
takes too."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from certmgr.api.deps import RuntimeDep
from certmgr.audit.checkpoint import load_verifier, public_key_fingerprint
from certmgr.console.auth import User
from certmgr.console.pages.common import ROUTE
from certmgr.console.render import render_page
from certmgr.errors import NotFoundError
from certmgr.reports import ReportFormat, ReportKind, ReportParams
from certmgr.reports.delivery import render_to_spool, zip_stream

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
    file_name = f"{kind.value}.{fmt.value}"
    spool, doc = render_to_spool(
        rt, actor=user.actor, via="console", kind=kind, fmt=fmt, params=ReportParams(), name=file_name, bundle=True
    )
    stamp = datetime.fromisoformat(str(doc["generated_at"])).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        zip_stream(spool, doc, file_name),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{kind.value}-{stamp}.{fmt.value}.zip"'},
    )


__all__ = ["router"]
