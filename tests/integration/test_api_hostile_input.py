"""Hostile input on the API is a defined 4xx, never a 5xx or a traceback (issue 9, item 8): lone surrogates in
JSON, undecodable echoes in validation errors, input nested past the recursion limit, oversized JSON bodies.

The TestClient raises every server exception (``raise_server_exceptions=True``), so a 500 fails these tests
loudly; they also check that nothing changed."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import logging
from typing import Annotated

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlmodel import Session

from certmgr.api.errors import NESTED_TOO_DEEPLY, install_error_handlers
from certmgr.api.inputs import LONE_SURROGATE, MAX_JSON_BODY
from certmgr.db.models import AuditEvent, Certificate, CertificateStatus, Device
from certmgr.runtime import Runtime
from tests.integration.test_api_support import Fleet, auth, ca_template, client, fleet, rt, tokens  # noqa: F401

JSON = {"Content-Type": "application/json"}


def _counts(rt: Runtime) -> tuple[int, int, int]:
    with Session(rt.engine) as s:
        return (
            s.execute(select(func.count()).select_from(Device)).scalar_one(),
            s.execute(select(func.count()).select_from(AuditEvent)).scalar_one(),
            s.execute(
                select(func.count()).select_from(Certificate).where(Certificate.status == CertificateStatus.REVOKED)  # type: ignore[arg-type]
            ).scalar_one(),
        )


@pytest.mark.parametrize(
    "body",
    [
        b'{"mac": "\\ud800", "ip": "10.0.0.9"}',
        b'{"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.9", "model": "ok\\udfffok"}',
        b'{"mac": "00:1A:E8:00:00:98", "ip": "10.0.0.9", "dns_names": ["a", "\\uDBFF"]}',
        b'{"mac": "00:1A:E8:00:00:97", "ip": "10.0.0.9", "\\ud800": 1}',
        b'{"mac": "00:1A:E8:00:00:96", "ip": "10.0.0.9", "model": "\\udc00\\ud800"}',  # pair in the wrong order
    ],
)
def test_lone_surrogate_in_json_is_422_and_changes_nothing(
    rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet, body: bytes
) -> None:
    """Pins ``certmgr.api.inputs.JsonInputGuard`` (installed by ``install_input_guards`` in ``create_app``):
    without it a lone surrogate reaches pydantic and the route, and the answer is a 500 (the 422 handler or the
    database driver cannot encode it)."""
    before = _counts(rt)
    for path in ("/api/v1/devices", f"/api/v1/certificates/{fleet.certificates['ok']}/revoke"):
        payload = body if path.endswith("devices") else body.replace(b'"mac"', b'"reason"', 1)
        r = client.post(path, content=payload, headers={**auth(tokens["admin"]), **JSON})
        assert r.status_code == 422, r.text
        assert r.json() == {"error": "InputError", "detail": LONE_SURROGATE}
    assert _counts(rt) == before


def test_valid_surrogate_pair_is_text(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    """An escaped surrogate *pair* is one astral character, i.e. ordinary text: the guard lets it through."""
    body = b'{"mac": "00:1A:E8:00:00:95", "ip": "10.0.0.9", "model": "Phone \\ud83d\\ude00"}'
    r = client.post("/api/v1/devices", content=body, headers={**auth(tokens["operator"]), **JSON})
    assert r.status_code == 201, r.text
    assert r.json()["device_type"] == "Phone \U0001f600"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_validation_error_echoing_undecodable_bytes_is_422(
    rt: Runtime, client: TestClient, tokens: dict[str, str], content_type: str
) -> None:
    """Pins the ``RequestValidationError`` handler of ``certmgr.api.errors``: a non-JSON body reaches the model
    as bytes, FastAPI's 422 echoes them, and its default handler fails to decode invalid UTF-8 (a 500)."""
    before = _counts(rt)
    r = client.post(
        "/api/v1/devices",
        content=b"\xff\xfe\xed\xa0\x80 not utf-8",
        headers={**auth(tokens["admin"]), "Content-Type": content_type},
    )
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body"]
    assert err["input"].startswith("\ufffd")
    assert _counts(rt) == before


class _Body(BaseModel):
    mac: Annotated[str, Field(max_length=3)]
    n: int = 0


def test_validation_error_echoing_a_lone_surrogate_is_422() -> None:
    """The 422 handler on its own (an app without the input guard): a lone surrogate in a rejected value is
    echoed as U+FFFD instead of failing to encode. Pins ``errors.encodable`` in the validation handler."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/x")
    def route(body: _Body) -> dict[str, str]:
        return {"mac": body.mac}

    with TestClient(app, raise_server_exceptions=True) as c:
        r = c.post("/x", content=b'{"mac": "ab\\ud800cd"}', headers=JSON)
        assert r.status_code == 422
        assert r.json()["detail"][0]["input"] == "ab\ufffdcd", r.json()
        r = c.post("/x", content=b'{"mac": "a", "n": ' + b"[" * 500 + b"]" * 500 + b"}", headers=JSON)
        assert r.status_code == 422  # a deeply nested echo is elided, not rendered 500 levels deep
        assert len(r.content) < 2000


def test_toml_nested_3000_deep_is_422_with_one_log_line(
    client: TestClient, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Pins the ``RecursionError`` handler of ``certmgr.api.errors``: tomllib recurses once per level, so a
    document nested 3,000 deep ends in RecursionError — without the handler a 500 and a traceback of ~3,000
    lines per request."""
    h = {**auth(tokens["viewer"]), "Content-Type": "application/toml"}
    caplog.set_level(logging.DEBUG)
    for doc in (b"a = " + b"[" * 3000 + b"]" * 3000, b"a = " + b"{b = " * 3000 + b"}" * 3000):
        caplog.clear()
        r = client.post("/api/v1/policies/validate", content=doc, headers=h)
        assert r.status_code == 422, r.text
        assert r.json() == {"error": "InputError", "detail": NESTED_TOO_DEEPLY}
        lines = [rec for rec in caplog.records if rec.name.startswith(("certmgr", "uvicorn", "fastapi"))]
        assert len(lines) == 1, [rec.getMessage() for rec in lines]
        assert lines[0].exc_info is None
        assert "nested too deeply" in lines[0].getMessage()
        assert "Traceback" not in caplog.text


def test_json_nested_deeply_is_4xx(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    before = _counts(rt)
    for depth in (100, 3000, 100_000):
        for body in (b"[" * depth + b"]" * depth, b'{"mac": ' + b"[" * depth + b"]" * depth + b"}"):
            r = client.post("/api/v1/devices", content=body, headers={**auth(tokens["admin"]), **JSON})
            assert 400 <= r.status_code < 500, (depth, r.status_code)
        r = client.post(
            "/api/v1/devices",
            content=b'["\\ud800", ' + b"[" * depth + b"]" * depth + b"]",
            headers=auth(tokens["admin"]),
        )
        assert 400 <= r.status_code < 500, (depth, r.status_code)
    assert _counts(rt) == before


def test_json_body_over_the_cap_is_413(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    """Pins the size cap of ``JsonInputGuard``: a JSON body over :data:`MAX_JSON_BODY` is refused unread."""
    body = b'{"mac": "00:1A:E8:00:00:94", "ip": "10.0.0.9", "model": "' + b"x" * MAX_JSON_BODY + b'"}'
    r = client.post("/api/v1/devices", content=body, headers={**auth(tokens["admin"]), **JSON})
    assert r.status_code == 413
    assert r.json()["error"] == "InputError"
    chunks = (b"[" + b"1," * 4096 + b"1]" for _ in range(200))  # chunked, no Content-Length: ~1.6 MB
    r = client.post("/api/v1/devices", content=chunks, headers={**auth(tokens["admin"]), **JSON})
    assert r.status_code == 413
