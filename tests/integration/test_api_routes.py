"""The read routes of the API: devices, certificates, deployments, policies, CA chain, metrics."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

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
from tests.leaks import leaked_secrets


def _get(client: TestClient, token: str, url: str, **params: object) -> dict[str, Any]:
    r = client.get(url, params=params, headers=auth(token))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _macs(body: dict[str, Any]) -> list[str]:
    items = body["items"]
    assert isinstance(items, list)
    return [i["mac"][-2:] for i in items]


def test_devices_filters(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    t = tokens["viewer"]
    assert _macs(_get(client, t, "/api/v1/devices")) == ["01", "02", "03", "04"]
    assert _macs(_get(client, t, "/api/v1/devices", status="failed")) == ["03"]
    assert _macs(_get(client, t, "/api/v1/devices", model="OpenStage 60")) == ["01", "03"]
    assert _macs(_get(client, t, "/api/v1/devices", firmware="V3 R5.1")) == ["01", "02"]
    assert _macs(_get(client, t, "/api/v1/devices", policy="default")) == ["01", "02", "03", "04"]
    assert _macs(_get(client, t, "/api/v1/devices", expiring_within=30)) == ["02", "03"]
    assert _macs(_get(client, t, "/api/v1/devices", q="10.0.1.")) == ["03", "04"]
    assert _macs(_get(client, t, "/api/v1/devices", q="00:1a:e8:00:00:02")) == ["02"]
    assert _macs(_get(client, t, "/api/v1/devices", q="4989100001")) == ["01"]
    assert _macs(_get(client, t, "/api/v1/devices", q="%")) == []  # LIKE wildcards are literal


def test_devices_pagination(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    t = tokens["viewer"]
    first = _get(client, t, "/api/v1/devices", limit=3)
    assert _macs(first) == ["01", "02", "03"]
    assert first["next_cursor"]
    second = _get(client, t, "/api/v1/devices", limit=3, cursor=first["next_cursor"])
    assert _macs(second) == ["04"]
    assert second["next_cursor"] is None


def test_bad_input_is_422_never_500(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    h = auth(tokens["viewer"])
    for url, params in [
        ("/api/v1/devices", {"limit": 501}),
        ("/api/v1/devices", {"status": "happy"}),
        ("/api/v1/devices", {"expiring_within": -1}),
        ("/api/v1/devices", {"cursor": "abc"}),
        ("/api/v1/devices", {"q": "a\x00b"}),
        ("/api/v1/certificates", {"serial": "zz"}),
        ("/api/v1/deployments", {"state": "exploded"}),
    ]:
        r = client.get(url, params=params, headers=h)
        assert r.status_code == 422, (url, params, r.text)
    for url in ("/api/v1/devices/0", "/api/v1/devices/abc", "/api/v1/devices/99999999999999999999"):
        assert client.get(url, headers=h).status_code == 422, url
    for url in ("/api/v1/devices/999", "/api/v1/certificates/999", "/api/v1/certificates/999/pem"):
        r = client.get(url, headers=h)
        assert r.status_code == 404, url
        assert r.json()["error"] == "NotFoundError"
    assert client.get("/api/v1/deployments/999", headers=h).status_code == 404


def test_device_detail(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    body = _get(client, tokens["viewer"], f"/api/v1/devices/{fleet.devices['expired']}")
    device = body["device"]
    assert isinstance(device, dict)
    assert device["mac"] == "00:1A:E8:00:00:03"
    current = body["current_certificate"]
    assert isinstance(current, dict)
    assert current["id"] == fleet.certificates["expired"]
    assert "key_blob" not in current
    assert [c["id"] for c in body["certificates"]] == [fleet.certificates["expired"]]
    assert [d["state"] for d in body["deployments"]] == ["failed"]
    empty = _get(client, tokens["viewer"], f"/api/v1/devices/{fleet.devices['new']}")
    assert empty["current_certificate"] is None
    assert empty["certificates"] == []


def test_device_effective_policy(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    body = _get(client, tokens["viewer"], f"/api/v1/devices/{fleet.devices['expired']}/policy")
    assert body["mac"] == "00:1A:E8:00:00:03"
    assert body["selected_now"] == "default"
    policy = body["policy"]
    assert isinstance(policy, dict)
    assert policy["name"] == "default"
    assert body["ip_addresses"]  # the default policy puts the phone's address in an IP SAN
    assert str(body["subject"]).startswith("CN=") or "CN=" in str(body["subject"])
    missing = client.get("/api/v1/devices/999999/policy", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert missing.status_code == 404


def test_certificates(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    t = tokens["viewer"]
    listed = _get(client, t, "/api/v1/certificates")
    items = listed["items"]
    assert isinstance(items, list)
    assert len(items) == 3
    assert all("key" not in k for i in items for k in i if k != "key_type")
    assert len(_get(client, t, "/api/v1/certificates", expiring_within=10)["items"]) == 2
    one = _get(client, t, "/api/v1/certificates", serial=items[0]["serial"].upper())["items"]
    assert [c["id"] for c in one] == [items[0]["id"]]
    r = client.get(f"/api/v1/certificates/{fleet.certificates['ok']}/pem", headers=auth(t))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-pem-file")
    assert r.text.startswith("-----BEGIN CERTIFICATE-----")
    assert leaked_secrets(r.content, public_pki=True) == []
    assert "sealed-key" not in r.text


def test_deployments(client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    t = tokens["viewer"]
    assert [d["state"] for d in _get(client, t, "/api/v1/deployments")["items"]] == ["verified", "failed"]
    failed = _get(client, t, "/api/v1/deployments", state="failed")["items"]
    assert [d["id"] for d in failed] == [fleet.deployments["expired"]]
    assert "transcript" not in failed[0]
    detail = _get(client, t, f"/api/v1/deployments/{fleet.deployments['expired']}")
    assert detail["transcript"] == [
        {"step": "contact-me", "status": 204},
        {"step": "write", "password": "[redacted]"},
    ]
    assert detail["last_error"] == "phone unreachable"


def test_policies(client: TestClient, tokens: dict[str, str]) -> None:
    t = tokens["viewer"]
    items = _get(client, t, "/api/v1/policies")["items"]
    assert [p["name"] for p in items] == ["default"]
    good = 'name = "lab"\n[match]\ndevice_types = ["OpenStage*"]\n[subject]\ncommon_name = "{ip}"\n'
    good += '[validity]\nduration = "90d"\n'
    r = client.post("/api/v1/policies/validate", content=good, headers={**auth(t), "Content-Type": "application/toml"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "lab"
    assert r.json()["validity"] == "90d"
    bad = 'name = "lab"\n[subject]\ncommon_name = "{ip}"\n[key]\ntype = "rsa-1024"\n'
    r = client.post("/api/v1/policies/validate", content=bad, headers=auth(t))
    assert r.status_code == 422
    assert any(e["key"] == "key.type" for e in r.json()["errors"]), r.json()
    r = client.post("/api/v1/policies/validate", content="name = ", headers=auth(t))
    assert r.status_code == 422
    assert "TOML" in r.json()["detail"]
    r = client.post("/api/v1/policies/validate", content=b"\xff\xfe", headers=auth(t))
    assert r.status_code == 422
    r = client.post("/api/v1/policies/validate", content="#" * (64 * 1024 + 1), headers=auth(t))
    assert r.status_code == 422
    assert "at most" in r.json()["detail"]


def test_metrics(rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    r = client.get("/metrics", headers=auth(tokens["viewer"]))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = dict(line.rsplit(" ", 1) for line in r.text.splitlines() if not line.startswith("#"))
    assert lines['certmgr_certificates{status="active"}'] == "3"
    assert lines['certmgr_certificates{status="revoked"}'] == "0"
    assert lines['certmgr_devices{status="verified"}'] == "2"
    assert lines['certmgr_deployments{state="failed"}'] == "1"
    assert int(lines["certmgr_earliest_expiry_seconds"]) == -3 * 86400
