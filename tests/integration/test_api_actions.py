"""The action routes: register/approve/decommission devices, revoke/renew certificates, retry/cancel deployments.

Every route and role (401 / 403 / allowed), unknown ids 404, wrong states 409, bad bodies 422, and every change
audited with the caller's token in the same transaction.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Enrollment,
)
from certmgr.deploy.reconcile import Reconciler
from certmgr.policy import load_policies
from certmgr.runtime import Runtime
from tests.conftest import REPO
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

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# (method, path template, least role)
ACTION_ROUTES = [
    ("POST", "/api/v1/devices", "operator"),
    ("POST", "/api/v1/devices/{id}/approve", "operator"),
    ("POST", "/api/v1/devices/{id}/decommission", "admin"),
    ("POST", "/api/v1/certificates/{id}/revoke", "admin"),
    ("POST", "/api/v1/certificates/{id}/renew", "operator"),
    ("POST", "/api/v1/deployments/{id}/retry", "operator"),
    ("POST", "/api/v1/deployments/{id}/cancel", "operator"),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.seq))))


def _post(client: TestClient, token: str, url: str, body: Any = None, status: int = 200) -> dict[str, Any]:
    r = client.post(url, json=body, headers=auth(token))
    assert r.status_code == status, r.text
    data: dict[str, Any] = r.json()
    return data


@dataclass(frozen=True)
class Issued:
    device_id: int
    certificate_id: int
    deployment_id: int
    serial: str


def _issue(rt: Runtime, client: TestClient, token: str, mac: str, ip: str, *, active: bool = True) -> Issued:
    """Register a phone through the API and let the reconciler issue it a real certificate (queued deployment);
    with ``active`` the deployment is marked verified and the certificate active (as after a real deployment)."""
    device = _post(client, token, "/api/v1/devices", {"mac": mac, "ip": ip}, status=201)
    assert Reconciler(rt).run(rt.clock.now()) >= 1  # (also phones of the ``fleet`` fixture, if present)
    with session_scope(rt.engine) as s:
        dep = s.exec(select(Deployment).where(col(Deployment.device_id) == device["id"])).one()
        cert = s.get(Certificate, dep.certificate_id)
        assert cert is not None
        if active:
            dep.state = DeploymentState.VERIFIED
            dep.finished_at = rt.clock.now()
            cert.status = CertificateStatus.ACTIVE
            row = s.get(Device, device["id"])
            assert row is not None
            row.current_certificate_id = cert.id
            row.status = DeviceStatus.VERIFIED
            s.add_all([dep, cert, row])
        assert dep.id is not None
        assert cert.id is not None
        return Issued(device["id"], cert.id, dep.id, cert.serial)


# --- access control ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "least"), ACTION_ROUTES)
def test_roles(client: TestClient, tokens: dict[str, str], method: str, path: str, least: str) -> None:
    url = path.replace("{id}", "424242")
    anonymous = client.request(method, url)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for role, token in tokens.items():
        r = client.request(method, url, headers=auth(token), json={"reason": "keyCompromise"})
        if RANK[role] < RANK[least]:
            assert r.status_code == 403, (role, r.text)
            assert r.json()["error"] == "PermissionDeniedError"
        elif path == "/api/v1/devices":
            assert r.status_code == 422, r.text  # allowed, but {"reason": …} is no device
        else:
            assert r.status_code == 404, (role, r.text)
            assert r.json()["error"] == "NotFoundError"


def test_denied_action_is_audited_and_changes_nothing(
    rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet
) -> None:
    url = f"/api/v1/certificates/{fleet.certificates['ok']}/revoke"
    r = client.post(url, json={"reason": "keyCompromise"}, headers=auth(tokens["operator"]))
    assert r.status_code == 403
    (denied,) = _events(rt, "auth.denied")
    assert denied.actor == "token:operator-1"
    with Session(rt.engine) as s:
        cert = s.get(Certificate, fleet.certificates["ok"])
        assert cert is not None
        assert cert.status is CertificateStatus.ACTIVE


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"mac": "00:1A:E8:00:00:99"},
        {"mac": "nonsense", "ip": "10.0.0.9"},
        {"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.300"},
        {"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.9", "e164": "call me"},
        {"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.9", "dns_names": ["-bad-.example"]},
        {"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.9", "dns_names": [f"h{i}.example" for i in range(17)]},
        {"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.9", "model": "x\x00y"},
        {"mac": "00:1A:E8:00:00:99", "ip": "10.0.0.9", "secret": "extra fields are refused"},
        [1, 2],
    ],
)
def test_register_bad_bodies_are_422(client: TestClient, tokens: dict[str, str], body: Any) -> None:
    r = client.post("/api/v1/devices", json=body, headers=auth(tokens["operator"]))
    assert r.status_code == 422, r.text


@pytest.mark.parametrize(
    "body",
    [None, {}, {"reason": "certificateHold"}, {"reason": "removeFromCRL"}, {"reason": "KEYCOMPROMISE"}, {"reason": 1}],
)
def test_revoke_bad_bodies_are_422(client: TestClient, tokens: dict[str, str], fleet: Fleet, body: Any) -> None:
    r = client.post(f"/api/v1/certificates/{fleet.certificates['ok']}/revoke", json=body, headers=auth(tokens["admin"]))
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("path", [p for _, p, _ in ACTION_ROUTES if "{id}" in p])
def test_bad_ids_are_422(client: TestClient, tokens: dict[str, str], path: str) -> None:
    for bad in ("0", "-1", "abc", "99999999999999999999"):
        r = client.post(path.replace("{id}", bad), json={"reason": "unspecified"}, headers=auth(tokens["admin"]))
        assert r.status_code == 422, (bad, r.text)


# --- devices ----------------------------------------------------------------------------------------------
def test_register_device_auto_policy(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    body = {
        "mac": "00-1a-e8-00-00-99",
        "ip": "10.0.0.9",
        "e164": "+4989100099",
        "model": "OpenStage 60",
        "dns_names": ["Phone99.Example.NET"],
    }
    device = _post(client, tokens["operator"], "/api/v1/devices", body, status=201)
    assert device["mac"] == "00:1A:E8:00:00:99"
    assert device["enrollment"] == "approved"
    assert device["status"] == "enrolled"
    assert device["policy_name"] == "default"
    assert device["dns_names"] == ["phone99.example.net"]
    (event,) = _events(rt, "device.registered")
    assert event.actor == "token:operator-1"
    assert event.subject_id == "00:1A:E8:00:00:99"
    again = client.post("/api/v1/devices", json=body, headers=auth(tokens["admin"]))
    assert again.status_code == 409
    assert again.json()["error"] == "ConflictError"
    assert len(_events(rt, "device.registered")) == 1
    # the reconciler picks it up: a certificate for its IP and a queued deployment
    assert Reconciler(rt).run(rt.clock.now()) == 1


def test_register_pending_then_approve(
    rt: Runtime, client: TestClient, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "default.toml").write_bytes((REPO / "policies" / "default.toml").read_bytes())
    lab = (REPO / "policies" / "default.toml").read_text()
    lab = lab.replace('name = "default"', 'name = "lab"').replace('mode = "auto"', 'mode = "approve"')
    (policies / "10-lab.toml").write_text(lab.replace("[key]", '[match]\nnetworks = ["10.99.0.0/16"]\n\n[key]', 1))
    monkeypatch.setattr(rt, "policies", load_policies(policies, known_secrets=set()))
    device = _post(client, tokens["operator"], "/api/v1/devices", {"mac": "001AE8009901", "ip": "10.99.1.1"}, 201)
    assert (device["enrollment"], device["status"], device["policy_name"]) == ("pending", "new", "lab")
    assert Reconciler(rt).run(rt.clock.now()) == 0  # not approved: nothing issued
    approved = _post(client, tokens["operator"], f"/api/v1/devices/{device['id']}/approve")
    assert (approved["enrollment"], approved["status"]) == ("approved", "enrolled")
    assert _post(client, tokens["operator"], f"/api/v1/devices/{device['id']}/approve")["enrollment"] == "approved"
    (event,) = _events(rt, "device.approved")
    assert event.actor == "token:operator-1"
    assert Reconciler(rt).run(rt.clock.now()) == 1


def test_decommission(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    issued = _issue(rt, client, tokens["operator"], "00:1A:E8:00:00:A1", "10.0.0.21")
    with session_scope(rt.engine) as s:  # a further deployment under way (a redeploy of the same certificate)
        s.add(
            Deployment(
                device_id=issued.device_id,
                certificate_id=issued.certificate_id,
                state=DeploymentState.AWAITING_CALLBACK,
                created_at=rt.clock.now(),
                updated_at=rt.clock.now(),
            )
        )
    body = _post(client, tokens["admin"], f"/api/v1/devices/{issued.device_id}/decommission")
    assert body["device"]["enrollment"] == "decommissioned"
    assert body["device"]["status"] == "decommissioned"
    assert body["revoked_certificates"] == [issued.certificate_id]
    assert len(body["cancelled_deployments"]) == 1
    assert body["crl_number"] >= 1
    with Session(rt.engine) as s:
        cert = s.get(Certificate, issued.certificate_id)
        assert cert is not None
        assert (cert.status, cert.revocation_reason, cert.revoked_at) == (
            CertificateStatus.REVOKED,
            "cessationOfOperation",
            rt.clock.now(),
        )
        states = {d.state for d in s.exec(select(Deployment).where(col(Deployment.device_id) == issued.device_id))}
        assert states == {DeploymentState.VERIFIED, DeploymentState.CANCELLED}
    crl = x509.load_der_x509_crl(client.get("/api/v1/ca/crl").content)
    entry = crl.get_revoked_certificate_by_serial_number(int(issued.serial, 16))
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.cessation_of_operation
    )
    actors = {
        e.actor
        for a in ("device.decommissioned", "certificate.revoked", "deployment.cancelled")
        for e in _events(rt, a)
    }
    assert actors == {"token:admin-1"}
    # a second time, and approving it again, are conflicts; nothing is reissued for it
    assert (
        client.post(f"/api/v1/devices/{issued.device_id}/decommission", headers=auth(tokens["admin"])).status_code
        == 409
    )
    assert client.post(f"/api/v1/devices/{issued.device_id}/approve", headers=auth(tokens["admin"])).status_code == 409
    assert Reconciler(rt).run(rt.clock.now()) == 0


# --- certificates -----------------------------------------------------------------------------------------
def test_revoke_active_certificate_queues_a_replacement(
    rt: Runtime, client: TestClient, tokens: dict[str, str]
) -> None:
    issued = _issue(rt, client, tokens["operator"], "00:1A:E8:00:00:B1", "10.0.0.31")
    body = _post(
        client, tokens["admin"], f"/api/v1/certificates/{issued.certificate_id}/revoke", {"reason": "keyCompromise"}
    )
    assert body["certificate"]["status"] == "revoked"
    assert body["certificate"]["revocation_reason"] == "keyCompromise"
    assert body["certificate"]["revoked_at"] is not None
    assert "key_blob" not in body["certificate"]
    assert body["crl_number"] >= 1
    new_id, dep_id = body["replacement_certificate_id"], body["replacement_deployment_id"]
    assert new_id is not None
    assert dep_id is not None
    with Session(rt.engine) as s:
        new = s.get(Certificate, new_id)
        dep = s.get(Deployment, dep_id)
        assert new is not None
        assert dep is not None
        assert (new.status.value, new.reason.value, new.device_id) == ("pending", "revocation", issued.device_id)
        assert (dep.state, dep.certificate_id) == (DeploymentState.QUEUED, new_id)
    (revoked,) = _events(rt, "certificate.revoked")
    assert revoked.actor == "token:admin-1"
    assert revoked.details["reason"] == "keyCompromise"
    issued_events = [e for e in _events(rt, "certificate.issued") if e.subject_id == new.serial]
    assert [e.actor for e in issued_events] == ["token:admin-1"]
    assert revoked.seq < issued_events[0].seq  # one transaction, in order
    assert Reconciler(rt).run(rt.clock.now()) == 0  # the replacement covers the phone
    again = client.post(
        f"/api/v1/certificates/{issued.certificate_id}/revoke",
        json={"reason": "superseded"},
        headers=auth(tokens["admin"]),
    )
    assert again.status_code == 409
    assert (
        client.post(f"/api/v1/certificates/{issued.certificate_id}/renew", headers=auth(tokens["operator"])).status_code
        == 409
    )


def test_revoke_old_certificate_needs_no_replacement(
    rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet
) -> None:
    with session_scope(rt.engine) as s:
        cert = s.get(Certificate, fleet.certificates["soon"])
        assert cert is not None
        cert.status = CertificateStatus.SUPERSEDED
        s.add(cert)
    body = _post(
        client, tokens["admin"], f"/api/v1/certificates/{fleet.certificates['soon']}/revoke", {"reason": "unspecified"}
    )
    assert body["replacement_certificate_id"] is None
    assert body["certificate"]["revocation_reason"] == "unspecified"
    expired = client.post(
        f"/api/v1/certificates/{fleet.certificates['expired']}/revoke",
        json={"reason": "unspecified"},
        headers=auth(tokens["admin"]),
    )
    assert expired.status_code == 409
    assert (
        client.post(
            "/api/v1/certificates/999/revoke", json={"reason": "unspecified"}, headers=auth(tokens["admin"])
        ).status_code
        == 404
    )


def test_renew(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    issued = _issue(rt, client, tokens["operator"], "00:1A:E8:00:00:C1", "10.0.0.41")
    body = _post(client, tokens["operator"], f"/api/v1/certificates/{issued.certificate_id}/renew", status=201)
    with Session(rt.engine) as s:
        new = s.get(Certificate, body["certificate_id"])
        dep = s.get(Deployment, body["deployment_id"])
        old = s.get(Certificate, issued.certificate_id)
        assert new is not None
        assert dep is not None
        assert old is not None
        assert (new.reason.value, new.status.value, new.serial) == ("manual", "pending", body["serial"])
        assert new.previous_certificate_id == issued.certificate_id
        assert (dep.state, dep.next_attempt_at) == (DeploymentState.QUEUED, None)
        assert old.status is CertificateStatus.ACTIVE  # still served until the new one is verified
    # a second renew supersedes the first (pending) one and its deployment
    second = _post(client, tokens["operator"], f"/api/v1/certificates/{issued.certificate_id}/renew", status=201)
    with Session(rt.engine) as s:
        first_cert = s.get(Certificate, body["certificate_id"])
        first_dep = s.get(Deployment, body["deployment_id"])
        assert first_cert is not None
        assert first_dep is not None
        assert first_cert.status is CertificateStatus.SUPERSEDED
        assert first_dep.state is DeploymentState.SUPERSEDED
    assert second["certificate_id"] != body["certificate_id"]
    (requested, _) = _events(rt, "certificate.renew-requested")
    assert requested.actor == "token:operator-1"
    assert client.post("/api/v1/certificates/999/renew", headers=auth(tokens["operator"])).status_code == 404


def test_renew_conflicts(rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    with session_scope(rt.engine) as s:
        device = s.get(Device, fleet.devices["ok"])
        assert device is not None
        device.enrollment = Enrollment.PENDING
        s.add(device)
    r = client.post(f"/api/v1/certificates/{fleet.certificates['ok']}/renew", headers=auth(tokens["operator"]))
    assert r.status_code == 409
    assert "not approved" in r.json()["detail"]


# --- deployments ------------------------------------------------------------------------------------------
def _set_state(rt: Runtime, deployment_id: int, state: DeploymentState, **fields: Any) -> None:
    with session_scope(rt.engine) as s:
        dep = s.get(Deployment, deployment_id)
        assert dep is not None
        dep.state = state
        for name, value in fields.items():
            setattr(dep, name, value)
        s.add(dep)


def test_retry(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    issued = _issue(rt, client, tokens["operator"], "00:1A:E8:00:00:D1", "10.0.0.51", active=False)
    now = rt.clock.now()
    # queued, waiting for its backoff: due now, same row
    _set_state(rt, issued.deployment_id, DeploymentState.QUEUED, next_attempt_at=now + timedelta(hours=2), attempts=3)
    body = _post(client, tokens["operator"], f"/api/v1/deployments/{issued.deployment_id}/retry")
    assert body["retried_from"] is None
    assert body["deployment"]["id"] == issued.deployment_id
    assert datetime.fromisoformat(body["deployment"]["next_attempt_at"]) == now
    # in progress: conflict
    for state in (
        DeploymentState.CONTACTING,
        DeploymentState.AWAITING_CALLBACK,
        DeploymentState.WRITTEN,
        DeploymentState.VERIFYING,
    ):
        _set_state(rt, issued.deployment_id, state)
        r = client.post(f"/api/v1/deployments/{issued.deployment_id}/retry", headers=auth(tokens["operator"]))
        assert r.status_code == 409, state
    # failed: a new deployment of the same certificate, fresh attempts, due now
    _set_state(rt, issued.deployment_id, DeploymentState.FAILED, finished_at=now)
    body = _post(client, tokens["operator"], f"/api/v1/deployments/{issued.deployment_id}/retry")
    assert body["retried_from"] == issued.deployment_id
    fresh = body["deployment"]
    assert (fresh["state"], fresh["attempts"], fresh["certificate_id"]) == ("queued", 0, issued.certificate_id)
    # while that one is unfinished, the old one cannot be retried again
    r = client.post(f"/api/v1/deployments/{issued.deployment_id}/retry", headers=auth(tokens["operator"]))
    assert r.status_code == 409
    assert "unfinished deployment" in r.json()["detail"]
    events = _events(rt, "deployment.retry-requested")
    assert [e.actor for e in events] == ["token:operator-1", "token:operator-1"]
    assert events[1].details["retried_from"] == issued.deployment_id


def test_retry_conflicts(rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    h = auth(tokens["operator"])
    assert client.post(f"/api/v1/deployments/{fleet.deployments['ok']}/retry", headers=h).status_code == 409  # verified
    r = client.post(f"/api/v1/deployments/{fleet.deployments['expired']}/retry", headers=h)  # failed, cert expired
    assert r.status_code == 409
    assert "renew instead" in r.json()["detail"]
    _set_state(rt, fleet.deployments["ok"], DeploymentState.SUPERSEDED)
    assert client.post(f"/api/v1/deployments/{fleet.deployments['ok']}/retry", headers=h).status_code == 409
    assert client.post("/api/v1/deployments/999/retry", headers=h).status_code == 404


def test_cancel(rt: Runtime, client: TestClient, tokens: dict[str, str], fleet: Fleet) -> None:
    issued = _issue(rt, client, tokens["operator"], "00:1A:E8:00:00:E1", "10.0.0.61", active=False)
    _set_state(rt, issued.deployment_id, DeploymentState.AWAITING_CALLBACK)
    body = _post(client, tokens["operator"], f"/api/v1/deployments/{issued.deployment_id}/cancel")
    assert body["state"] == "cancelled"
    assert body["finished_at"] is not None
    assert body["last_error"] == "cancelled by token:operator-1"
    (event,) = _events(rt, "deployment.cancelled")
    assert (event.actor, event.details["previous_state"]) == ("token:operator-1", "awaiting_callback")
    h = auth(tokens["operator"])
    assert client.post(f"/api/v1/deployments/{issued.deployment_id}/cancel", headers=h).status_code == 409
    assert client.post(f"/api/v1/deployments/{fleet.deployments['ok']}/cancel", headers=h).status_code == 409
    assert client.post(f"/api/v1/deployments/{fleet.deployments['expired']}/cancel", headers=h).status_code == 409
    assert client.post("/api/v1/deployments/999/cancel", headers=h).status_code == 404
    # a cancelled deployment can be retried
    retried = _post(client, tokens["operator"], f"/api/v1/deployments/{issued.deployment_id}/retry")
    assert retried["retried_from"] == issued.deployment_id


def test_no_key_material_in_action_responses(rt: Runtime, client: TestClient, tokens: dict[str, str]) -> None:
    issued = _issue(rt, client, tokens["operator"], "00:1A:E8:00:00:F1", "10.0.0.71")
    r1 = client.post(f"/api/v1/certificates/{issued.certificate_id}/renew", headers=auth(tokens["operator"]))
    r2 = client.post(
        f"/api/v1/certificates/{issued.certificate_id}/revoke",
        json={"reason": "keyCompromise"},
        headers=auth(tokens["admin"]),
    )
    for r in (r1, r2):
        assert leaked_secrets(r.content, public_pki=True) == []
        assert "key_blob" not in r.text
