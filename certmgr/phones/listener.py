"""The phone-facing HTTP adapters: the WPI listener (TLS, D1) and the DCMP poll listener (plain HTTP, D5).

These apps serve phones only — never the security team's API. They are thin: the WPI route reads the body
(capped), hands it to :class:`~certmgr.phones.hub.DeploymentHub` and returns its answer; the poll route asks
:func:`certmgr.deploy.queue.poll`. The listener's own TLS certificate is :mod:`certmgr.phones.tls`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from certmgr.db.txretry import run_db
from certmgr.deploy.queue import poll
from certmgr.errors import CertmgrError, DatabaseError, InputError
from certmgr.identity import normalize_mac
from certmgr.phones.hub import COOKIE_NAME, DeploymentHub

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.wpi")


#: Seconds a phone is asked to wait while the database is unavailable.
RETRY_AFTER_S = 30


def _unavailable() -> Response:
    """The answer while the database is unavailable (locked, restarting): 503 with Retry-After, never a traceback;
    nothing was recorded, so the phone simply asks again later."""
    return PlainTextResponse(
        "service temporarily unavailable\n", status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _peer(request: Request) -> str | None:
    """The TCP peer's address — never a header (X-Forwarded-For and friends are ignored: uvicorn runs with
    ``proxy_headers=False``, and nothing here reads them); the trusted-proxy rule decides the rest."""
    return request.client.host if request.client is not None else None


def create_wpi_app(hub: DeploymentHub, *, max_body: int) -> FastAPI:
    """The WPI app: ``POST /DeploymentService/LoginService`` and the same handler on any other path (D1)."""
    app = FastAPI(title="certmgr WPI", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub

    @app.post("/{path:path}")
    async def wpi(request: Request, path: str) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return PlainTextResponse("invalid Content-Length\n", status_code=400)
        if declared is not None and int(declared) > max_body:
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body:
                return PlainTextResponse("request body too large\n", status_code=413)
        peer = _peer(request)
        try:
            answer = await hub.handle(bytes(body), peer=peer, cookie=request.cookies.get(COOKIE_NAME), path="/" + path)
        except DatabaseError:
            return _unavailable()
        response = Response(answer.body, status_code=answer.status, media_type=answer.content_type)
        if answer.retry_after is not None:
            response.headers["retry-after"] = str(answer.retry_after)
        if answer.set_cookie is not None:
            response.headers["set-cookie"] = answer.set_cookie
        return response

    return app


def create_poll_app(runtime: Runtime) -> FastAPI:
    """The DCMP poll app: ``GET /dcmp/contact-me?device-id=MAC`` → pending / idle status (D5)."""
    app = FastAPI(title="certmgr DCMP", docs_url=None, redoc_url=None, openapi_url=None)
    settings = runtime.settings

    @app.get("/dcmp/contact-me")
    async def contact_me(request: Request) -> Response:
        raw = request.query_params.get("device-id", "")
        try:
            mac = normalize_mac(raw[:64])
        except InputError:
            return PlainTextResponse("invalid device-id\n", status_code=400)
        try:
            pending = await run_db(poll, runtime, mac, runtime.clock.now(), peer=_peer(request))
        except DatabaseError:
            return _unavailable()
        except CertmgrError as exc:
            log.error("poll for %s failed: %s", mac, exc.message)
            pending = False
        status = settings.poll_pending_status if pending else settings.poll_idle_status
        return Response(b"", status_code=status, media_type="text/plain")

    return app
