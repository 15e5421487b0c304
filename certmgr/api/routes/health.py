"""``/healthz`` (liveness) and ``/readyz`` (readiness: the database takes writes and the CA is present). Public."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from certmgr.api.deps import RuntimeDep
from certmgr.db.engine import check_writable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(rt: RuntimeDep) -> dict[str, Any]:
    """Readiness: the database takes writes (SQLite: its write lock can be taken — not held past the busy timeout by
    another writer) and the CA is present.

    Raises:
        DatabaseError: 503 while the database is unreachable or locked. CANotInitialisedError: 503 while no CA exists.
    """
    check_writable(rt.engine)
    info = rt.ca_info()
    return {"status": "ready", "ca": info.issuing_subject, "ca_not_after": info.not_after.isoformat()}
