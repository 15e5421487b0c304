"""The operator use cases on the command line, on SQLite and PostgreSQL: ``device register | decommission |
renew``, ``certificate revoke | renew``, ``deployment retry | cancel`` (``device approve``: test_deploy_cli.py).

Each command is run in-process through :func:`certmgr.cli.main.main` (the console script's entry point, so the
one exit-code mapping is exercised) against a database the test prepares with the service's own code. For each:
what it changed, the audit event it wrote with the actor ``cli``, and its refusals — an unknown phone or id exits 8
(not found), a state the action does not allow exits 9 (conflict), a malformed MAC exits 4 — each as one
``certmgr: error:`` line on stderr, with nothing changed.

The CLI reads the system clock, so the fixture's runtime does too (a manual clock would drift from it).
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
from sqlmodel import Session, col, func, select

from certmgr import operations
from certmgr.clock import SystemClock
from certmgr.db.deployments import move
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    Enrollment,
)
from certmgr.deploy.reconcile import Reconciler
from certmgr.inventory.enrollment import AddressClaim, resolve_claim
from certmgr.pki.crl import RevocationReason
from certmgr.runtime import Runtime
from tests.integration.renewal_support import mark_verified
from tests.integration.test_api_support import ca_template, cli_main, rt  # noqa: F401 - fixtures

MAC1, IP1 = "00:1A:E8:00:10:01", "10.20.0.1"
MAC2, IP2 = "00:1A:E8:00:10:02", "10.20.0.2"
UNKNOWN_MAC = "00:1A:E8:00:10:99"


@pytest.fixture
def clock() -> SystemClock:
    """The system clock for ``rt`` (test_api_support's runtime): the CLI's own runtime reads the system clock."""
    return SystemClock()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``certmgr ARGV`` in-process: (exit code, stdout, stderr); never a traceback."""
    code, out, err = cli_main(capsys, *argv)
    assert "Traceback" not in err
    return code, out, err


def _ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = _cli(capsys, *argv)
    assert code == 0, f"exit {code}: {err}"
    return out


def _refused(capsys: pytest.CaptureFixture[str], code: int, *argv: str, needle: str = "") -> str:
    """Assert ``certmgr ARGV`` exits ``code`` with exactly one ``certmgr: error:`` line (containing ``needle``)."""
    got, out, err = _cli(capsys, *argv)
    assert got == code, f"exit {got}, want {code}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("certmgr: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert out == ""
    return lines[0]


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with Session(rt.engine) as s:
        return list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.seq))))


def _audit_count(rt: Runtime) -> int:
    with Session(rt.engine) as s:
        return s.exec(select(func.count()).select_from(AuditEvent)).one()


def _device(rt: Runtime, mac: str) -> Device:
    with Session(rt.engine) as s:
        return s.exec(select(Device).where(col(Device.mac) == mac)).one()


def _certificate(rt: Runtime, certificate_id: int) -> Certificate:
    with Session(rt.engine) as s:
        row = s.get(Certificate, certificate_id)
        assert row is not None
        return row


def _deployment(rt: Runtime, deployment_id: int) -> Deployment:
    with Session(rt.engine) as s:
        row = s.get(Deployment, deployment_id)
        assert row is not None
        return row


@dataclass(frozen=True)
class Phone:
    device_id: int
    certificate_id: int
    deployment_id: int
    serial: str


def _phone(rt: Runtime, mac: str, ip: str, *, verified: bool = True) -> Phone:
    """A registered phone whose certificate the reconciler issued (deployment queued); with ``verified`` the
    deployment is driven to verified by the service's bookkeeping, so the certificate is the phone's current one."""
    device = operations.register_device(rt, mac=mac, ip=ip, e164=None, model=None, dns_names=[], actor="test")
    assert Reconciler(rt).run(rt.clock.now()) >= 1
    with session_scope(rt.engine) as s:
        dep = s.exec(select(Deployment).where(col(Deployment.device_id) == device.id)).one()
        cert = s.get(Certificate, dep.certificate_id)
        assert cert is not None
        assert device.id is not None
        assert dep.id is not None
        assert cert.id is not None
        phone = Phone(device.id, cert.id, dep.id, cert.serial)
    if verified:
        mark_verified(rt, phone.deployment_id)
        assert _device(rt, mac).current_certificate_id == phone.certificate_id
    return phone


# --- device register ------------------------------------------------------------------------------------------
def test_device_register(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    out = _ok(capsys, "device", "register", "00-1a-e8-00-10-01", "--ip", IP1, "--e164", "+4989123", "--dns", "p1.lan")
    assert f"registered {MAC1}" in out
    assert "enrollment approved" in out  # the shipped default policy enrols automatically
    device = _device(rt, MAC1)
    assert (device.ip, device.e164, device.dns_names) == (IP1, "+4989123", ["p1.lan"])
    assert device.enrollment is Enrollment.APPROVED
    [event] = _events(rt, "device.registered")
    assert (event.actor, event.subject_id, event.details["ip"]) == ("cli", MAC1, IP1)

    before = _audit_count(rt)
    _refused(capsys, 9, "device", "register", MAC1, "--ip", IP2, needle="already registered")
    _refused(capsys, 4, "device", "register", "not-a-mac", "--ip", IP2, needle="invalid MAC")
    _refused(capsys, 4, "device", "register", MAC2, "--ip", "10.20.0.300")
    assert _audit_count(rt) == before
    with Session(rt.engine) as s:
        assert len(s.exec(select(Device)).all()) == 1


# --- device decommission --------------------------------------------------------------------------------------
def test_device_decommission(rt: Runtime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    phone = _phone(rt, MAC1, IP1)
    before = _audit_count(rt)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = _cli(capsys, "device", "decommission", MAC1)  # asks first; "n" changes nothing
    assert code == 1
    assert "aborted" in err
    assert _device(rt, MAC1).enrollment is Enrollment.APPROVED
    assert _audit_count(rt) == before

    out = _ok(capsys, "device", "decommission", MAC1.replace(":", "-"), "--yes")
    assert f"decommissioned {MAC1}" in out
    assert f"revoked certificates {phone.certificate_id}" in out
    assert _device(rt, MAC1).enrollment is Enrollment.DECOMMISSIONED
    assert _certificate(rt, phone.certificate_id).status is CertificateStatus.REVOKED
    assert [(e.actor, e.subject_id) for e in _events(rt, "device.decommissioned")] == [("cli", MAC1)]
    [revoked] = _events(rt, "certificate.revoked")
    assert (revoked.actor, revoked.subject_id) == ("cli", phone.serial)
    assert revoked.details["reason"] == "cessationOfOperation"

    before = _audit_count(rt)
    _refused(capsys, 9, "device", "decommission", MAC1, "--yes", needle="already decommissioned")
    _refused(capsys, 8, "device", "decommission", UNKNOWN_MAC, "--yes", needle=UNKNOWN_MAC)
    _refused(capsys, 4, "device", "decommission", "zz:1A:E8:00:10:01", "--yes", needle="invalid MAC")
    assert _audit_count(rt) == before


# --- device renew ---------------------------------------------------------------------------------------------
def test_device_renew(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    phone = _phone(rt, MAC1, IP1)
    out = _ok(capsys, "device", "renew", MAC1)
    with Session(rt.engine) as s:
        newest = s.exec(
            select(Certificate)
            .where(col(Certificate.device_id) == phone.device_id)
            .order_by(col(Certificate.id).desc())
        ).first()
        assert newest is not None
        dep = s.exec(select(Deployment).where(col(Deployment.certificate_id) == newest.id)).one()
    assert newest.id != phone.certificate_id
    assert newest.status is CertificateStatus.PENDING
    assert dep.state is DeploymentState.QUEUED
    assert f"certificate {newest.serial} (id {newest.id}) queued as deployment {dep.id}" in out
    [event] = _events(rt, "certificate.renew-requested")
    assert (event.actor, event.subject_id, event.details["mac"]) == ("cli", phone.serial, MAC1)

    operations.register_device(rt, mac=MAC2, ip=IP2, e164=None, model=None, dns_names=[], actor="test")
    before = _audit_count(rt)
    _refused(capsys, 9, "device", "renew", MAC2, needle="no current certificate")  # nothing issued yet
    _refused(capsys, 8, "device", "renew", UNKNOWN_MAC, needle=UNKNOWN_MAC)
    assert _audit_count(rt) == before


# --- certificate revoke ---------------------------------------------------------------------------------------
def test_certificate_revoke(rt: Runtime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    phone = _phone(rt, MAC1, IP1)
    before = _audit_count(rt)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = _cli(capsys, "certificate", "revoke", str(phone.certificate_id), "--reason", "keyCompromise")
    assert code == 1  # asks first (a revocation cannot be undone); "n" changes nothing
    assert "aborted" in err
    assert _certificate(rt, phone.certificate_id).status is not CertificateStatus.REVOKED
    assert _audit_count(rt) == before
    out = _ok(capsys, "certificate", "revoke", str(phone.certificate_id), "--reason", "keyCompromise", "--yes")
    assert f"revoked certificate {phone.serial} (id {phone.certificate_id}, reason keyCompromise)" in out
    revoked = _certificate(rt, phone.certificate_id)
    assert revoked.status is CertificateStatus.REVOKED
    [event] = _events(rt, "certificate.revoked")
    assert (event.actor, event.subject_id, event.details["reason"]) == ("cli", phone.serial, "keyCompromise")
    with Session(rt.engine) as s:  # the phone is in service: a replacement is queued
        replacement = s.exec(
            select(Certificate).where(
                col(Certificate.device_id) == phone.device_id, col(Certificate.id) != phone.certificate_id
            )
        ).one()
    assert replacement.id is not None
    assert f"replacement certificate {replacement.id} queued as deployment" in out

    before = _audit_count(rt)
    _refused(
        capsys,
        9,
        "certificate",
        "revoke",
        str(phone.certificate_id),
        "--reason",
        "superseded",
        "--yes",
        needle="already revoked",
    )
    _refused(capsys, 8, "certificate", "revoke", "424242", "--reason", "superseded", "--yes", needle="424242")
    _refused(capsys, 8, "certificate", "revoke", "99999999999999999999", "--reason", "superseded", "--yes")
    code, _, err = _cli(capsys, "certificate", "revoke", str(replacement.id), "--reason", "certificateHold", "--yes")
    assert code == 2  # not an RFC 5280 reason certmgr offers: a usage error
    assert "--reason" in err
    assert _certificate(rt, replacement.id).status is CertificateStatus.PENDING
    assert _audit_count(rt) == before


# --- certificate renew ----------------------------------------------------------------------------------------
def test_certificate_renew(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    phone = _phone(rt, MAC1, IP1)
    out = _ok(capsys, "certificate", "renew", str(phone.certificate_id))
    [event] = _events(rt, "certificate.renew-requested")
    assert (event.actor, event.subject_id) == ("cli", phone.serial)
    [issued] = [e for e in _events(rt, "certificate.issued") if e.actor == "cli"]
    assert f"certificate {issued.subject_id} " in out
    assert _certificate(rt, phone.certificate_id).status is CertificateStatus.ACTIVE  # until the new one is verified

    _refused(capsys, 8, "certificate", "renew", "424242", needle="424242")
    _refused(capsys, 8, "certificate", "renew", "0")
    operations.revoke_certificate(rt, phone.certificate_id, RevocationReason.SUPERSEDED, actor="test")
    before = _audit_count(rt)
    _refused(capsys, 9, "certificate", "renew", str(phone.certificate_id), needle="revoked")
    assert _audit_count(rt) == before


# --- deployment retry -----------------------------------------------------------------------------------------
def test_deployment_retry(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    phone = _phone(rt, MAC1, IP1, verified=False)
    with session_scope(rt.engine) as s:  # the deployment gave up (as after its last failed attempt)
        dep = s.get(Deployment, phone.deployment_id)
        assert dep is not None
        move(dep, DeploymentState.FAILED, rt.clock.now(), error="phone unreachable")
        s.add(dep)
    out = _ok(capsys, "deployment", "retry", str(phone.deployment_id))
    [event] = _events(rt, "deployment.retry-requested")
    fresh = _deployment(rt, int(event.subject_id or 0))
    assert (event.actor, event.details["retried_from"], event.details["mac"]) == ("cli", phone.deployment_id, MAC1)
    assert fresh.state is DeploymentState.QUEUED
    assert fresh.certificate_id == phone.certificate_id
    assert f"deployment {fresh.id} is due now (continues deployment {phone.deployment_id})" in out

    verified = _phone(rt, MAC2, IP2)
    before = _audit_count(rt)
    _refused(capsys, 9, "deployment", "retry", str(verified.deployment_id), needle="verified")
    _refused(capsys, 9, "deployment", "retry", str(phone.deployment_id), needle="unfinished deployment")
    _refused(capsys, 8, "deployment", "retry", "424242", needle="424242")
    assert _audit_count(rt) == before


# --- deployment cancel ----------------------------------------------------------------------------------------
def test_deployment_cancel(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    phone = _phone(rt, MAC1, IP1, verified=False)
    assert f"cancelled deployment {phone.deployment_id}" in _ok(
        capsys, "deployment", "cancel", str(phone.deployment_id)
    )
    assert _deployment(rt, phone.deployment_id).state is DeploymentState.CANCELLED
    [event] = _events(rt, "deployment.cancelled")
    assert (event.actor, event.subject_id, event.details["previous_state"]) == (
        "cli",
        str(phone.deployment_id),
        "queued",
    )

    before = _audit_count(rt)
    _refused(capsys, 9, "deployment", "cancel", str(phone.deployment_id), needle="finished")
    _refused(capsys, 8, "deployment", "cancel", "424242", needle="424242")
    _refused(capsys, 8, "deployment", "cancel", "0")
    assert _audit_count(rt) == before


# --- device approve: a held address move ----------------------------------------------------------------------
def test_device_approve_names_the_held_move(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    _phone(rt, MAC1, IP1)
    claimed = "10.20.0.99"
    claim = AddressClaim(MAC1, claimed, f"http://{claimed}:8085/contact_dls.html/ContactDLS")
    with session_scope(rt.engine) as s:
        assert (
            resolve_claim(s, claim, served_sha256=None, probe_error="refused", now=rt.clock.now(), policies=rt.policies)
            == "held"
        )
    before = _audit_count(rt)
    _refused(capsys, 9, "device", "approve", MAC1, needle=f"a move to {claimed} is held")
    _refused(capsys, 9, "device", "approve", MAC1, "--move-to", "10.20.0.98", needle="approving a move to 10.20.0.98")
    assert _device(rt, MAC1).ip == IP1
    assert _audit_count(rt) == before
    assert f"approved {MAC1} at {claimed}" in _ok(capsys, "device", "approve", MAC1, "--move-to", claimed)
    assert (_device(rt, MAC1).ip, _device(rt, MAC1).pending_ip) == (claimed, None)
    assert [(e.actor, e.subject_id) for e in _events(rt, "device.move-approved")] == [("cli", MAC1)]
