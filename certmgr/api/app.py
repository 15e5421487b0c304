"""The security-team API (FastAPI). Served only on the API listener, never on the phone-facing ports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request

from certmgr import __version__
from certmgr.api.errors import install_error_handlers
from certmgr.api.inputs import install_input_guards
from certmgr.db.engine import check_writable
from certmgr.runtime import Runtime

if TYPE_CHECKING:
    from certmgr.scheduling.scheduler import SchedulerMonitor


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def create_app(runtime: Runtime, scheduler: SchedulerMonitor | None = None) -> FastAPI:
    """Build the API application around an opened :class:`Runtime`; ``scheduler`` is the status of the scheduler
    running in this process (``None``: this process runs none, ``GET /api/v1/scheduler`` says so)."""
    app = FastAPI(
        title="certmgr",
        version=__version__,
        description="Keeps the WBM HTTPS certificates of OpenStage / OpenScape Desk Phones valid and verified.",
    )
    app.state.runtime = runtime
    app.state.scheduler = scheduler
    install_error_handlers(app)
    install_input_guards(app)
    # Imported here: the route modules depend on get_runtime above (no import cycle, no import-time app).
    from certmgr.api import (
        routes_actions,
        routes_audit,
        routes_inventory,
        routes_reports,
        routes_scheduler,
        routes_system,
        routes_tokens,
    )

    for module in (
        routes_inventory,
        routes_actions,
        routes_system,
        routes_audit,
        routes_tokens,
        routes_reports,
        routes_scheduler,
    ):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(rt: RuntimeDep) -> dict[str, Any]:
        """Readiness: the database takes writes (SQLite: its write lock can be taken — not held past the busy timeout
        by another writer) and the CA is present. 503 otherwise."""
        check_writable(rt.engine)
        info = rt.ca_info()
        return {"status": "ready", "ca": info.issuing_subject, "ca_not_after": info.not_after.isoformat()}

    return app
