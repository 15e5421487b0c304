"""``certmgr token create|list|revoke``: the value is printed once, alone on the last line, and works; each step
is audited; the database holds only the hash."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from certmgr.audit.tokens import TOKEN_PREFIX, hash_token
from certmgr.db.models import ApiToken, AuditEvent
from certmgr.runtime import Runtime
from tests.integration.test_api_support import auth, ca_template, client, rt  # noqa: F401 - fixtures
from tests.integration.test_api_support import cli_main as _run


def test_create_list_revoke(rt: Runtime, client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "token", "create", "--role", "operator", "--name", "alice")
    assert code == 0, err
    token = out.rstrip("\n").splitlines()[-1]  # stderr (the notice) is printed before it
    assert out.strip() == token  # stdout is exactly the token: `TOKEN=$(certmgr token create …)` works
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) >= len(TOKEN_PREFIX) + 43
    with Session(rt.engine) as s:
        row = s.exec(select(ApiToken).where(col(ApiToken.name) == "alice")).one()
        assert row.token_hash == hash_token(token)
        assert row.role == "operator"
    r = client.get("/api/v1/devices", headers=auth(token))
    assert r.status_code == 200

    code, out, _ = _run(capsys, "token", "list")
    assert code == 0
    assert "alice" in out
    assert "operator" in out
    assert token not in out
    assert hash_token(token) not in out

    code, out, _ = _run(capsys, "token", "revoke", "alice")
    assert code == 0
    assert client.get("/api/v1/devices", headers=auth(token)).status_code == 401

    with Session(rt.engine) as s:
        events = list(s.exec(select(AuditEvent).where(col(AuditEvent.subject_id) == "alice")))
    assert [(e.action, e.actor) for e in events] == [
        ("token.created", "cli"),
        ("token.revoked", "cli"),
        ("auth.failed", "token:alice"),
    ]
    assert all(token not in str(e.details) for e in events)


def test_errors(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "token", "create", "--role", "root", "--name", "x")[0] == 4
    assert _run(capsys, "token", "create", "--role", "viewer", "--name", "bad name!")[0] == 4
    assert _run(capsys, "token", "create", "--role", "viewer", "--name", "bob")[0] == 0
    code, _, err = _run(capsys, "token", "create", "--role", "admin", "--name", "bob")
    assert code == 9
    assert "already exists" in err
    assert _run(capsys, "token", "revoke", "nobody")[0] == 8
    assert _run(capsys, "token", "revoke", "bob")[0] == 0
    assert _run(capsys, "token", "revoke", "bob")[0] == 9
