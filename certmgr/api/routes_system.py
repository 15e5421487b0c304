"""``/api/v1/ca/chain.pem`` and ``/api/v1/ca/crl`` (public), ``/api/v1/ca/status``, ``/api/v1/policies`` and
``/metrics`` (Prometheus text)."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlmodel import Session, col

from certmgr.api.app import RuntimeDep
from certmgr.api.auth import Viewer
from certmgr.api.routes_common import IdPath, Page, SessionDep, get_or_404
from certmgr.db.models import Certificate, CertificateStatus, Deployment, DeploymentState, Device, DeviceStatus
from certmgr.errors import InputError, PolicyError, PolicySetError
from certmgr.inventory.phones import PolicySource, identity_of, policy_for
from certmgr.issuance.revocation import crl_status, refresh_crl
from certmgr.pki.crl import MEDIA_TYPE
from certmgr.pki.keys import fingerprint_sha256
from certmgr.policy import Policy, format_duration, parse_policy
from certmgr.policy.templates import render_leaf_names

router = APIRouter(tags=["system"])

MAX_POLICY_BYTES = 64 * 1024
VALIDATE_SOURCE = "<request>"


# --- CA ---------------------------------------------------------------------------------------------------
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


class ChainCertificate(BaseModel):
    """One certificate of the CA chain (public facts only)."""

    role: str
    subject: str
    issuer: str
    serial: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    days_left: int


class CRLSummary(BaseModel):
    """The published CRL."""

    number: int
    this_update: datetime
    next_update: datetime
    entries: int
    stale: bool


class CAStatus(BaseModel):
    """The CA chain (issuing first) and the published CRL (``null`` before the first one)."""

    chain: list[ChainCertificate]
    crl: CRLSummary | None


def _chain_entry(role: str, cert: x509.Certificate, now: datetime) -> ChainCertificate:
    return ChainCertificate(
        role=role,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        fingerprint_sha256=fingerprint_sha256(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        days_left=(cert.not_valid_after_utc - now) // timedelta(days=1),
    )


@router.get("/api/v1/ca/status", response_model=CAStatus)
def ca_status(_who: Viewer, rt: RuntimeDep) -> CAStatus:
    """The CA chain's subjects, fingerprints, expiry and days left, and the CRL's number and next update
    (viewer).

    Raises:
        CANotInitialisedError: 503 while no CA exists.
    """
    now = rt.clock.now()
    info = rt.ca_info()
    chain = [_chain_entry("issuing" if i == 0 else "intermediate", cert, now) for i, cert in enumerate(info.chain)]
    if info.root_cert is not None:
        chain.append(_chain_entry("root", info.root_cert, now))
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


# --- policies ---------------------------------------------------------------------------------------------
class PolicySummary(BaseModel):
    """What a policy decides, in brief."""

    name: str
    description: str
    source: str
    digest: str
    catch_all: bool
    key_type: str
    validity: str
    renewal: str
    pkcs12_profiles: list[str]
    enrollment: str
    windows: int


class PolicyProblem(BaseModel):
    """One problem of a policy document: the dotted key and the reason."""

    key: str
    reason: str


class PolicyInvalid(BaseModel):
    """422 body of ``POST /api/v1/policies/validate``."""

    error: str
    detail: str
    errors: list[PolicyProblem]


def _summary(policy: Policy) -> PolicySummary:
    renewal = policy.renewal
    if renewal.renew_before is not None:
        rule = f"{format_duration(renewal.renew_before)} before expiry"
    else:
        rule = f"after {renewal.renew_at_fraction} of the lifetime"
    return PolicySummary(
        name=policy.name,
        description=policy.description,
        source=policy.source,
        digest=policy.digest,
        catch_all=policy.is_catch_all,
        key_type=policy.key_type.value,
        validity=format_duration(policy.validity),
        renewal=rule,
        pkcs12_profiles=[p.value for p in policy.pkcs12.profiles],
        enrollment=str(policy.enrollment),
        windows=len(policy.windows),
    )


@router.get("/api/v1/policies", response_model=Page[PolicySummary], tags=["policies"])
def policies_list(_who: Viewer, rt: RuntimeDep) -> Page[PolicySummary]:
    """The loaded policies in selection order (first match wins) (viewer)."""
    return Page(items=[_summary(p) for p in rt.policies], next_cursor=None)


def _invalid(problems: list[PolicyError]) -> JSONResponse:
    body = PolicyInvalid(
        error="PolicySetError",
        detail="; ".join(f"{p.key or '(document)'}: {p.reason}" for p in problems),
        errors=[PolicyProblem(key=p.key, reason=p.reason) for p in problems],
    )
    return JSONResponse(status_code=422, content=body.model_dump())


@router.post(
    "/api/v1/policies/validate",
    response_model=PolicySummary,
    tags=["policies"],
    responses={422: {"model": PolicyInvalid, "description": "The document is invalid: each key and reason."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/toml": {"schema": {"type": "string", "maxLength": MAX_POLICY_BYTES}},
                "text/plain": {"schema": {"type": "string", "maxLength": MAX_POLICY_BYTES}},
            },
        }
    },
)
async def policies_validate(request: Request, _who: Viewer, rt: RuntimeDep) -> PolicySummary | JSONResponse:
    """Validate a policy TOML document (the body, at most 64 KiB) without loading it (viewer).

    200 with the parsed policy's summary, or 422 naming each key and reason.

    Raises:
        InputError: 422 if the body is too large or not UTF-8.
    """
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > MAX_POLICY_BYTES:
            raise InputError(f"body: a policy document is at most {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _invalid([PolicyError(VALIDATE_SOURCE, "", "the document is not UTF-8")])
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return _invalid([PolicyError(VALIDATE_SOURCE, "", f"TOML syntax: {exc}")])
    try:
        policy = parse_policy(document, VALIDATE_SOURCE, known_secrets=set(rt.settings.pkcs12_passwords))
    except PolicySetError as exc:
        return _invalid(exc.errors)
    except PolicyError as exc:
        return _invalid([exc])
    return _summary(policy)


# --- metrics ----------------------------------------------------------------------------------------------
def _counts(session: Session, column: object) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()  # type: ignore[call-overload]
    return {str(getattr(value, "value", value)): int(count) for value, count in rows}


def _family(name: str, help_text: str, label: str, values: list[str], counts: dict[str, int]) -> Iterator[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} gauge"
    for value in values:
        yield f'{name}{{{label}="{value}"}} {counts.get(value, 0)}'


@router.get("/metrics", response_class=PlainTextResponse, tags=["metrics"])
def metrics(_who: Viewer, rt: RuntimeDep, session: SessionDep) -> PlainTextResponse:
    """Prometheus text exposition: certificates by status, seconds to the earliest expiry of a current
    certificate, deployments by state, devices by status (viewer; configure the scraper with a bearer token)."""
    lines: list[str] = []
    lines += _family(
        "certmgr_certificates",
        "Certificates by status.",
        "status",
        [s.value for s in CertificateStatus],
        _counts(session, col(Certificate.status)),
    )
    lines += _family(
        "certmgr_deployments",
        "Deployments by state.",
        "state",
        [s.value for s in DeploymentState],
        _counts(session, col(Deployment.state)),
    )
    lines += _family(
        "certmgr_devices",
        "Devices by status.",
        "status",
        [s.value for s in DeviceStatus],
        _counts(session, col(Device.status)),
    )
    earliest = session.execute(
        select(func.min(Certificate.not_after))
        .join(Device, col(Device.current_certificate_id) == col(Certificate.id))
        .where(col(Device.status) != DeviceStatus.DECOMMISSIONED)
    ).scalar_one_or_none()
    lines.append("# HELP certmgr_earliest_expiry_seconds Seconds until the earliest current certificate expires.")
    lines.append("# TYPE certmgr_earliest_expiry_seconds gauge")
    if earliest is not None:
        if earliest.tzinfo is None:  # defensive: aggregates keep the column type, so this is aware UTC
            earliest = earliest.replace(tzinfo=UTC)
        seconds = (earliest - rt.clock.now()) / timedelta(seconds=1)
        lines.append(f"certmgr_earliest_expiry_seconds {seconds:.0f}")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")


class EffectivePolicy(BaseModel):
    """The policy that governs a phone, why, and what its next certificate would look like under it."""

    device_id: int
    mac: str
    policy: PolicySummary
    assigned: str | None  # the policy recorded for the phone
    selected_now: str  # the policy the selectors pick today (first match)
    source: PolicySource  # assigned | selected (none recorded) | replaced (the recorded one is gone)
    reason: str  # the same, in words
    subject: str
    dns_names: list[str]
    ip_addresses: list[str]


@router.get("/api/v1/devices/{device_id}/policy", response_model=EffectivePolicy, tags=["policies"])
def device_effective_policy(device_id: IdPath, _who: Viewer, rt: RuntimeDep, session: SessionDep) -> EffectivePolicy:
    """The effective policy of one phone (viewer) — :func:`certmgr.inventory.phones.policy_for`, the answer every
    path uses: its assigned policy if still loaded, else the first match; with the subject and SANs its next
    certificate would get. 404 for an unknown id; 422 if no SAN can be built (e.g. a pre-registered phone without
    an address under a policy that needs one)."""
    device = get_or_404(session, Device, device_id, "device")
    identity = identity_of(device)
    choice = policy_for(rt.policies, device.policy_name, identity)
    names = render_leaf_names(choice.policy, identity)
    return EffectivePolicy(
        device_id=device_id,
        mac=device.mac,
        policy=_summary(choice.policy),
        assigned=device.policy_name,
        selected_now=rt.policies.select(identity).name,
        source=choice.source,
        reason=choice.reason,
        subject=names.subject.rfc4514_string(),
        dns_names=list(names.dns_names),
        ip_addresses=[str(ip) for ip in names.ip_addresses],
    )
