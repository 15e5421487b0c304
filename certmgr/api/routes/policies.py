"""``/api/v1/policies``: the loaded policies and validating a policy document (viewer)."""

from __future__ import annotations

import tomllib

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from certmgr.api.deps import RuntimeDep, Viewer
from certmgr.api.schemas import Page, PolicyInvalid, PolicyProblem, PolicySummary
from certmgr.errors import InputError, PolicyError, PolicySetError
from certmgr.policy import parse_policy

router = APIRouter(tags=["system", "policies"])

MAX_POLICY_BYTES = 64 * 1024
VALIDATE_SOURCE = "<request>"


@router.get("/api/v1/policies", response_model=Page[PolicySummary])
def policies_list(_who: Viewer, rt: RuntimeDep) -> Page[PolicySummary]:
    """The loaded policies in selection order (first match wins) (viewer)."""
    return Page(items=[PolicySummary.of(p) for p in rt.policies], next_cursor=None)


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
    return PolicySummary.of(policy)
