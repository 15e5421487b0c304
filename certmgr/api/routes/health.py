"""``/healthz`` (liveness) and ``/readyz`` (readiness: the database answers and the CA is present). Public."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from certmgr.api.deps import RuntimeDep
from certmgr.errors import DatabaseError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(rt: RuntimeDep) -> dict[str, Any]:
    """Readiness: the database answers and the CA is present.

    Raises:
        DatabaseError: 503 if the database is unreachable. CANotInitialisedError: 503 while no CA exists.
    """
    try:
        with rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise DatabaseError("database unreachable") from exc
    info = rt.ca_info()
    return {"status": "ready", "ca": info.issuing_subject, "ca_not_after": info.not_after.isoformat()}
