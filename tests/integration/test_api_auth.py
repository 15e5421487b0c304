"""Bearer-token access control: 401 / 403 / allowed for every route and role, audited refusals, attribution."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from certmgr.api.app import create_app
from certmgr.audit.tokens import LAST_USED_GRANULARITY, Role, hash_token
from certmgr.clock import ManualClock
from certmgr.db.models import ApiToken, AuditEvent
from certmgr.runtime import Runtime
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    auth,
    ca_template,
    client,
    fleet,
    rt,
    tokens,
)

PUBLIC = {
    "/healthz",
    "/readyz",
    "/api/v1/ca/chain.pem",
    "/api/v1/ca/crl",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
ADMIN_ONLY = {
    ("POST", "/api/v1/audit/checkpoints"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens/{token_id}/revoke"),
    ("POST", "/api/v1/devices/{device_id}/decommission"),
    ("POST", "/api/v1/certificates/{certificate_id}/revoke"),
}
OPERATOR_AND_ADMIN = {
    ("POST", "/api/v1/devices"),
    ("POST", "/api/v1/devices/{device_id}/approve"),
    ("POST", "/api/v1/certificates/{certificate_id}/renew"),
    ("POST", "/api/v1/deployments/{deployment_id}/retry"),
    ("POST", "/api/v1/deployments/{deployment_id}/cancel"),
}


def _routes(rt: Runtime) -> list[tuple[str, str]]:
    schema = create_app(rt).openapi()
    return [
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path not in PUBLIC
        for method in operations
    ]


def _fill(path: str, fleet: Fleet) -> str:
    values = {
        "device_id": fleet.devices["ok"],
        "certificate_id": fleet.certificates["ok"],
        "deployment_id": fleet.deployments["ok"],
        "token_id": 999,
        "kind": "inventory",
    }
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.seq))))


def test_every_route_is_protected_by_role(
    rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet
) -> None:
    routes = _routes(rt)
    assert len(routes) >= 14
    for method, path in routes:
        url = _fill(path, fleet)
        body: dict[str, Any] = {"content": b'name = "x"\n'} if path.endswith("/validate") else {}
        anonymous = client.request(method, url, **body)
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        for role in Role:
            r = client.request(method, url, headers=auth(tokens[role.value]), **body)
            if ((method, path) in ADMIN_ONLY and role is not Role.ADMIN) or (
                (method, path) in OPERATOR_AND_ADMIN and role is Role.VIEWER
            ):
                assert r.status_code == 403, (method, path, role)
            else:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
                assert r.status_code < 500


def test_public_routes_need_no_token(client: TestClient) -> None:
    r = client.get("/api/v1/ca/chain.pem")
    assert r.status_code == 200
    assert r.text.count("BEGIN CERTIFICATE") == 2
    assert "PRIVATE" not in r.text


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        "Bearer cmt_" + "A" * 43,
    ],
)
def test_bad_credentials_are_401_and_audited_without_the_value(
    rt: Runtime, client: TestClient, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    r = client.get("/api/v1/devices", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "AuthenticationError"
    (event,) = _events(rt, "auth.failed")
    assert event.actor == "anonymous"
    assert event.details["path"] == "/api/v1/devices"
    assert event.details["method"] == "GET"
    if header:
        value = header.split(" ", 1)[-1]
        assert value not in json.dumps(event.details)


def test_revoked_token_is_401_and_attributed(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    with Session(rt.engine) as s:
        viewer = s.exec(select(ApiToken).where(col(ApiToken.name) == "viewer-1")).one()
    assert client.get("/api/v1/devices", headers=auth(tokens["viewer"])).status_code == 200
    r = client.post(f"/api/v1/tokens/{viewer.id}/revoke", headers=auth(tokens["admin"]))
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    assert "token" not in {k for k in r.json() if k not in ("id", "name", "role")} - {"token_hash"}
    assert "cmt_" not in r.text
    (revoked,) = _events(rt, "token.revoked")
    assert revoked.actor == "token:admin-1"
    assert revoked.subject_id == "viewer-1"
    r = client.get("/api/v1/devices", headers=auth(tokens["viewer"]))
    assert r.status_code == 401
    (failed,) = _events(rt, "auth.failed")
    assert failed.actor == "token:viewer-1"
    assert failed.details["reason"] == "revoked token"
    again = client.post(f"/api/v1/tokens/{viewer.id}/revoke", headers=auth(tokens["admin"]))
    assert again.status_code == 409
    assert client.post("/api/v1/tokens/424242/revoke", headers=auth(tokens["admin"])).status_code == 404


def test_role_too_low_is_403_and_audited(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    r = client.get("/api/v1/tokens", headers=auth(tokens["operator"]))
    assert r.status_code == 403
    assert r.json()["error"] == "PermissionDeniedError"
    (event,) = _events(rt, "auth.denied")
    assert event.actor == "token:operator-1"
    assert event.details["needed"] == "admin"


def test_last_used_is_updated_cheaply(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    assert isinstance(rt.clock, ManualClock)

    def last_used() -> object:
        with Session(rt.engine) as s:
            row = s.exec(select(ApiToken).where(col(ApiToken.token_hash) == hash_token(tokens["viewer"]))).one()
            return row.last_used_at

    assert last_used() is None
    client.get("/api/v1/devices", headers=auth(tokens["viewer"]))
    first = last_used()
    assert first == rt.clock.now()
    rt.clock.advance(timedelta(seconds=5))
    client.get("/api/v1/devices", headers=auth(tokens["viewer"]))
    assert last_used() == first  # within the granularity: no write
    rt.clock.advance(LAST_USED_GRANULARITY)
    client.get("/api/v1/devices", headers=auth(tokens["viewer"]))
    assert last_used() == rt.clock.now()


def test_token_list_never_shows_values_or_hashes(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    r = client.get("/api/v1/tokens", headers=auth(tokens["admin"]))
    assert r.status_code == 200
    names = {t["name"]: t["role"] for t in r.json()["items"]}
    assert names == {"viewer-1": "viewer", "operator-1": "operator", "admin-1": "admin"}
    for value in tokens.values():
        assert value not in r.text
        assert hash_token(value) not in r.text
