"""The security-team API (FastAPI). Served only on the API listener, never on the
phone-facing ports.

Layout: :mod:`certmgr.api.deps` (every dependency: runtime, session, token and role), :mod:`certmgr.api.schemas`
(request and response bodies), :mod:`certmgr.api.common` (parameter types, pagination), one module per resource
under :mod:`certmgr.api.routes`, :mod:`certmgr.api.errors` (the one mapping of certmgr errors to HTTP). The web
console (:mod:`certmgr.console`) is mounted on the same application, at ``/ui/``, by
:func:`certmgr.console.app.create_web_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from certmgr import __version__
from certmgr.api.errors import install_error_handlers
from certmgr.api.inputs import install_input_guards
from certmgr.api.routes import ROUTERS
from certmgr.runtime import Runtime

if TYPE_CHECKING:
    from certmgr.scheduling.scheduler import SchedulerMonitor


def create_app(runtime: Runtime, scheduler: SchedulerMonitor | None = None) -> FastAPI:
    """Build the API application around an opened :class:`Runtime`; ``scheduler`` is the status of the scheduler
    running in this process (``None``: this process runs none, ``GET /api/v1/scheduler`` says so). The web console
    is mounted on it by :func:`certmgr.console.app.create_web_app` (the API knows nothing of the console)."""
    app = FastAPI(
        title="certmgr",
        version=__version__,
        description="Keeps the WBM HTTPS certificates of OpenStage / OpenScape Desk Phones valid and verified.",
    )
    app.state.runtime = runtime
    app.state.scheduler = scheduler
    install_error_handlers(app)
    install_input_guards(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
