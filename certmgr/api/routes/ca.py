"""``/api/v1/ca/chain.pem`` and ``/api/v1/ca/crl`` (public), ``/api/v1/ca/status`` (viewer)."""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter
from fastapi.responses import Response

from certmgr.api.deps import RuntimeDep, Viewer
from certmgr.api.schemas import CAStatus, ChainCertificate, CRLSummary
from certmgr.issuance.revocation import crl_status, refresh_crl
from certmgr.pki.crl import MEDIA_TYPE
from certmgr.runtime import Runtime

router = APIRouter(tags=["system"])


@router.get(
    "/api/v1/ca/chain.pem",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}, "description": "Issuing chain, then the root."}},
)
def ca_chain(rt: RuntimeDep) -> Response:
    """The CA chain to trust (issuing CA first, root last), PEM. Public: no token needed.

    Raises:
        CANotInitialisedError: 503 while no CA exists.
    """
    info = rt.ca_info()
    certs = list(info.chain)
    if info.root_cert is not None and info.root_cert not in certs:
        certs.append(info.root_cert)
    body = b"".join(cert.public_bytes(Encoding.PEM) for cert in certs)
    return Response(content=body, media_type="application/x-pem-file")


@router.get(
    "/api/v1/ca/crl",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The issuing CA's current CRL, DER."}},
)
def ca_crl(rt: RuntimeDep) -> Response:
    """The issuing CA's certificate revocation list (X.509 v2, DER). Public: no token needed.

    Re-signed on the way if it is missing, lists other revocations than the database, or its nextUpdate is
    near (``crl_refresh_before_hours``).

    Raises:
        CANotInitialisedError: 503 while no CA exists. CAError: 503 if the CA cannot sign.
    """
    stored = refresh_crl(rt)
    return Response(
        content=stored.der,
        media_type=MEDIA_TYPE,
        headers={
            "Content-Disposition": 'attachment; filename="issuing.crl"',
            "Cache-Control": "public, max-age=3600",
        },
    )


def ca_status_of(rt: Runtime) -> CAStatus:
    """The CA chain's public facts and the published CRL's summary (what ``GET /api/v1/ca/status`` answers and
    the console's CA page shows).

    Raises:
        CANotInitialisedError: while no CA exists.
    """
    now = rt.clock.now()
    info = rt.ca_info()
    chain = [ChainCertificate.of("issuing" if i == 0 else "intermediate", c, now) for i, c in enumerate(info.chain)]
    if info.root_cert is not None:
        chain.append(ChainCertificate.of("root", info.root_cert, now))
    crl = crl_status(rt.settings)
    summary = None
    if crl is not None:
        summary = CRLSummary(
            number=crl.number,
            this_update=crl.this_update,
            next_update=crl.next_update,
            entries=crl.entries,
            stale=crl.next_update <= now or crl.issuer_fingerprint != info.issuing_fingerprint_sha256,
        )
    return CAStatus(chain=chain, crl=summary)


@router.get("/api/v1/ca/status", response_model=CAStatus)
def ca_status(_who: Viewer, rt: RuntimeDep) -> CAStatus:
    """The CA chain's subjects, fingerprints, expiry and days left, and the CRL's number and next update
    (viewer).

    Raises:
        CANotInitialisedError: 503 while no CA exists.
    """
    return ca_status_of(rt)
