"""No key material in any API response, with realistic data: real phones (fake, over real TLS) got real
certificates through the real pipeline — plain and password-protected PKCS#12, a busy phone, a drifting one —
then every GET route of the OpenAPI schema is walked as admin (every id, every enumerated query value: the
report files and bundles included), every action is taken, and every route walked again.

Each body goes through :func:`tests.leaks.leaked_secrets` with ``public_pki=True``: certificates, the CRL and
the audit public key may appear; a PKCS#12 (it opens with ``pkcs12.load_pkcs12``), a private key in any
encoding (PEM, base64 / base64url / hex / escaped DER), unknown DER, the PKCS#12 password or a long base64
run may not. The walk is derived from the schema, so a new route is walked (or, for an action, must be added
here) without anyone remembering to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from certmgr.api.app import create_app
from certmgr.audit.tokens import Role, create_token
from certmgr.db.engine import session_scope
from certmgr.db.models import ApiToken, Certificate, CertificateStatus, Deployment, DeploymentState, Device
from certmgr.runtime import Runtime
from certmgr.settings import Settings
from tests.integration.fake_phone import P12_PASSWORD, FakePhone, Stack, address_block, wait_for
from tests.integration.test_wpi_server import _phone, _runtime, _state
from tests.leaks import leaked_secrets

pytestmark = pytest.mark.timeout(240)

_PARAM = re.compile(r"\{(\w+)\}")


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Iterator[tuple[Runtime, list[FakePhone]]]:
    """Four phones through the real pipeline: verified (plain PKCS#12), verified on the second profile (the
    password-protected ``modern``), verified after a busy answer, drifting (its info names another
    certificate)."""
    block = address_block()
    runtime = _runtime(settings, tmp_path, block)
    stack = Stack(runtime)
    phones = [
        _phone(stack, runtime, tmp_path, block, 1),
        _phone(stack, runtime, tmp_path, block, 2, reject_profiles=1),
        _phone(stack, runtime, tmp_path, block, 3, busy_times=1),
        _phone(stack, runtime, tmp_path, block, 4, info="mismatch", install=False),
    ]
    try:
        for phone in phones:
            phone.report()
        for phone in phones[:3]:
            wait_for(lambda p=phone: _state(runtime, p.mac, DeploymentState.VERIFIED), 60)  # type: ignore[misc]
        wait_for(lambda: _drifting(runtime, phones[3].mac), 60)
        yield runtime, phones
    finally:
        for phone in phones:
            phone.close()
        stack.close()
        runtime.close()


def _drifting(runtime: Runtime, mac: str) -> bool:
    with session_scope(runtime.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == mac)).first()
        return device is not None and device.drift


def _ids(runtime: Runtime) -> dict[str, list[int]]:
    with session_scope(runtime.engine) as s:
        return {
            "device_id": [d.id for d in s.exec(select(Device)).all() if d.id is not None],
            "certificate_id": [c.id for c in s.exec(select(Certificate)).all() if c.id is not None],
            "deployment_id": [d.id for d in s.exec(select(Deployment)).all() if d.id is not None],
            "token_id": [t.id for t in s.exec(select(ApiToken)).all() if t.id is not None],
        }


def _scan(what: str, body: bytes) -> list[str]:
    return [f"{what}: {leak}" for leak in leaked_secrets(body, passwords=[P12_PASSWORD], public_pki=True)]


def _enum(spec: dict[str, Any], schema: dict[str, Any]) -> list[Any] | None:
    """The enumerated values of a parameter schema (through ``$ref`` and ``anyOf``), if it has any."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if "enum" in schema:
        return list(schema["enum"])
    for option in schema.get("anyOf", []):
        values = _enum(spec, option)
        if values:
            return values
    return None


def _walk_gets(
    client: TestClient, spec: dict[str, Any], runtime: Runtime, headers: dict[str, str]
) -> tuple[int, list[str]]:
    """Every GET route with every id and every enumerated query value; returns (responses, leaks)."""
    ids = _ids(runtime)
    seen, leaks = 0, []
    for template, operations in spec["paths"].items():
        get = operations.get("get")
        if get is None:
            continue
        path_values: list[dict[str, Any]] = [{}]
        query_values: list[dict[str, Any]] = [{}]
        for param in get.get("parameters", []):
            enum = _enum(spec, param.get("schema", {}))
            if param["in"] == "path":
                values = enum or ids[param["name"]]
                path_values = [{**pv, param["name"]: v} for pv in path_values for v in values]
            elif param["in"] == "query" and enum:
                query_values = [{**qv, param["name"]: v} for qv in query_values for v in enum]
        for pv in path_values:
            url = _PARAM.sub(lambda m, pv=pv: str(pv[m.group(1)]), template)  # type: ignore[misc]
            for qv in query_values:
                r = client.get(url, params=qv, headers=headers)
                assert r.status_code in (200, 404), (url, qv, r.status_code, r.text[:300])
                seen += 1
                leaks += _scan(f"GET {url} {qv}", r.content)
    return seen, leaks


def _take_every_action(
    client: TestClient, spec: dict[str, Any], runtime: Runtime, phones: list[FakePhone], headers: dict[str, str]
) -> list[str]:
    """Every POST route of the schema once, on realistic objects; returns the leaks in their answers."""
    with session_scope(runtime.engine) as s:
        by_mac = {d.mac: d for d in s.exec(select(Device)).all()}
        certs = {c.device_id: c for c in s.exec(select(Certificate)).all() if c.status is CertificateStatus.ACTIVE}
        deps = list(s.exec(select(Deployment).order_by(col(Deployment.id))).all())
        viewer = s.exec(select(ApiToken).where(col(ApiToken.name) == "viewer-1")).one()
    dev = [by_mac[p.mac] for p in phones]
    cert_of = [certs[d.id] for d in dev if d.id in certs]
    drifting = next(d for d in deps if d.device_id == dev[3].id)
    policy = 'name = "lab"\n[subject]\ncommon_name = "{ip}"\n[validity]\nduration = "90d"\n'
    actions: dict[str, tuple[str, dict[str, Any] | None, str | None]] = {
        "/api/v1/devices": ("/api/v1/devices", {"mac": "00:1A:E8:77:77:77", "ip": "10.7.7.7"}, None),
        "/api/v1/devices/{device_id}/approve": ("/api/v1/devices/{new}/approve", None, None),
        "/api/v1/devices/{device_id}/decommission": ("/api/v1/devices/{new}/decommission", None, None),
        "/api/v1/certificates/{certificate_id}/renew": (f"/api/v1/certificates/{cert_of[0].id}/renew", None, None),
        "/api/v1/certificates/{certificate_id}/revoke": (
            f"/api/v1/certificates/{cert_of[1].id}/revoke",
            {"reason": "keyCompromise"},
            None,
        ),
        "/api/v1/deployments/{deployment_id}/retry": (f"/api/v1/deployments/{drifting.id}/retry", None, None),
        "/api/v1/deployments/{deployment_id}/cancel": (f"/api/v1/deployments/{drifting.id}/cancel", None, None),
        "/api/v1/audit/checkpoints": ("/api/v1/audit/checkpoints", None, None),
        "/api/v1/tokens/{token_id}/revoke": (f"/api/v1/tokens/{viewer.id}/revoke", None, None),
        "/api/v1/policies/validate": ("/api/v1/policies/validate", None, policy),
    }
    posts = {t for t, ops in spec["paths"].items() if "post" in ops}
    assert posts == set(actions), f"add the new action(s) to this walk: {posts ^ set(actions)}"
    leaks: list[str] = []
    new_id: int | None = None
    for template, (url, body, text) in actions.items():
        url = url.replace("{new}", str(new_id))
        if text is not None:
            r = client.post(url, content=text, headers={**headers, "Content-Type": "application/toml"})
        else:
            r = client.post(url, json=body, headers=headers)
        assert r.status_code < 500, (template, r.status_code, r.text[:300])
        assert r.status_code in (200, 201) or template.endswith(("/retry", "/cancel")), (template, r.text[:300])
        if template == "/api/v1/devices":
            new_id = r.json()["id"]
        leaks += _scan(f"POST {url}", r.content)
    return leaks


def test_no_key_material_in_any_api_response(world: tuple[Runtime, list[FakePhone]]) -> None:
    """Pins that no route of the API serialises key material (``CertificatePublic`` / ``DeploymentDetail`` /
    the audit and report views carry no key, no PKCS#12, no password; transcripts hold item names only)."""
    runtime, phones = world
    with session_scope(runtime.engine) as s:
        tokens = {
            role.value: create_token(s, name=f"{role.value}-1", role=role, actor="test", now=runtime.clock.now())[1]
            for role in Role
        }
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    with TestClient(create_app(runtime), raise_server_exceptions=True) as client:
        spec = client.get("/openapi.json").json()
        before, leaks = _walk_gets(client, spec, runtime, headers)
        leaks += _take_every_action(client, spec, runtime, phones, headers)
        after, more = _walk_gets(client, spec, runtime, headers)
        leaks += more
    assert leaks == []
    assert before >= 40
    assert after > before  # the actions added objects (a renewed certificate, a registered device …)
