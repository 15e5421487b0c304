"""The phone-facing HTTP adapters: the WPI listener (TLS, D1) and the DCMP poll listener (plain HTTP, D5).

These apps serve phones only — never the security team's API. They are thin: the WPI route reads the body
(capped), hands it to :class:`~certmgr.deploy.hub.DeploymentHub` and returns its answer; the poll route asks
:func:`certmgr.deploy.service.poll`.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from certmgr.deploy import service
from certmgr.deploy.hub import COOKIE_NAME, DeploymentHub
from certmgr.deploy.txretry import run_db
from certmgr.errors import CertmgrError, ConfigError, InputError
from certmgr.fsutil import atomic_write, ensure_private_dir
from certmgr.identity import normalize_mac
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf
from certmgr.pki.types import KeyType

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.wpi")

WPI_TLS_DIR = "wpi"
WPI_CERT_FILE = "wpi-server.pem"
WPI_KEY_FILE = "wpi-server.key"
WPI_CERT_VALIDITY = timedelta(days=397)
WPI_CERT_RENEW_BEFORE = timedelta(days=30)


def create_wpi_app(hub: DeploymentHub, *, max_body: int) -> FastAPI:
    """The WPI app: ``POST /DeploymentService/LoginService`` and the same handler on any other path (D1)."""
    app = FastAPI(title="certmgr WPI", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/{path:path}")
    async def wpi(request: Request, path: str) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body:
                return PlainTextResponse("request body too large\n", status_code=413)
        peer = request.client.host if request.client is not None else None
        answer = await hub.handle(bytes(body), peer=peer, cookie=request.cookies.get(COOKIE_NAME), path="/" + path)
        response = Response(answer.body, status_code=answer.status, media_type=answer.content_type)
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
            pending = await run_db(service.poll, runtime, mac, runtime.clock.now())
        except CertmgrError as exc:
            log.error("poll for %s failed: %s", mac, exc.message)
            pending = False
        status = settings.poll_pending_status if pending else settings.poll_idle_status
        return Response(b"", status_code=status, media_type="text/plain")

    return app


def ensure_wpi_tls(runtime: Runtime) -> tuple[Path, Path]:
    """The WPI listener's certificate and key files: the configured ones, or a certificate issued from
    certmgr's own CA into ``<data_dir>/wpi/`` (key 0600) on first start and again shortly before it expires.

    Raises:
        ConfigError: if only one of ``wpi_tls_cert`` / ``wpi_tls_key`` is set or a file is missing.
        CAError: if the CA cannot issue. StorageError: if the files cannot be written.
    """
    settings = runtime.settings
    if settings.wpi_tls_cert or settings.wpi_tls_key:
        if not (settings.wpi_tls_cert and settings.wpi_tls_key):
            raise ConfigError("set both wpi_tls_cert and wpi_tls_key, or neither")
        for path in (settings.wpi_tls_cert, settings.wpi_tls_key):
            if not path.is_file():
                raise ConfigError(f"WPI TLS file {path} does not exist")
        return settings.wpi_tls_cert, settings.wpi_tls_key
    folder = settings.data_dir / WPI_TLS_DIR
    cert_path, key_path = folder / WPI_CERT_FILE, folder / WPI_KEY_FILE
    now = runtime.clock.now()
    if cert_path.is_file() and key_path.is_file():
        try:
            current = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if current.not_valid_after_utc - WPI_CERT_RENEW_BEFORE > now:
                return cert_path, key_path
        except (OSError, ValueError):
            log.warning("WPI TLS certificate %s unreadable; issuing a new one", cert_path)
    ensure_private_dir(folder)
    issuer = runtime.issuer()
    ips = []
    for candidate in (settings.wpi_public_addr, settings.wpi_host):
        if candidate:
            try:
                addr = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if not addr.is_unspecified and addr not in ips:
                ips.append(addr)
    if not ips:
        ips.append(ipaddress.ip_address("127.0.0.1"))
    spec = LeafSpec(
        subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "certmgr WPI")]),
        dns_names=("certmgr-wpi",),
        ip_addresses=tuple(ips),
        validity=WPI_CERT_VALIDITY,
        clip_to_ca=True,
    )
    key, cert = issue_key_and_leaf(spec, KeyType.RSA_2048, issuer, now)
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *issuer.chain))
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, chain_pem, mode=0o600)
    log.info("issued the WPI listener certificate %s", cert_path)
    return cert_path, key_path
