"""``/ui/ca``: the CA chain (subjects, fingerprints, expiry, days left) and the CRL — the facts of
``GET /api/v1/ca/status`` (:func:`certmgr.api.routes.ca.ca_status_of`), with links to the public chain and CRL."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from certmgr.api.deps import RuntimeDep
from certmgr.api.routes.ca import ca_status_of
from certmgr.console.auth import User
from certmgr.console.pages.common import ROUTE
from certmgr.console.render import render_page

router = APIRouter(**ROUTE)  # type: ignore[arg-type]


@router.get("/ui/ca")
def ca_page(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """The CA chain and the CRL."""
    return render_page(request, "ca.html", {"status": ca_status_of(rt)})


__all__ = ["router"]
