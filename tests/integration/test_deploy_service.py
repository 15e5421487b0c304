"""The pipeline's database side without sockets: inventory, enrollment, reconcile, D10 admission, claiming,
timeouts and restart recovery (SQLite, controlled clock)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import col, select

from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    Enrollment,
    IssueReason,
)
from certmgr.deploy import admission, queue, recovery
from certmgr.deploy.effects import apply_effects
from certmgr.deploy.reconcile import Reconciler
from certmgr.errors import NotFoundError
from certmgr.inventory.enrollment import ReportResult, approve_device, record_report, resolve_claim
from certmgr.issuance import packaging
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from certmgr.wpi.effects import CertificateInfoReceived, Effect, PhoneReported, WriteAccepted, WriteSent
from certmgr.wpi.interaction import JobMode
from certmgr.wpi.jobs import Defer, Refuse, Serve
from certmgr.wpi.messages import Item, Reason
from tests.conftest import REPO
from tests.integration.sql_support import statements, updates_of

MAC = "00:1A:E8:00:00:01"
IP = "10.1.2.3"


def _items(ip: str = IP) -> dict[str, str | None]:
    return {
        "contact-me-uri": f"http://{ip}:8085/contact_dls.html/ContactDLS",
        "device-type": "OpenStage 60",
        "software-version": "V3 R5.21.0",
        "e164": "4989",
    }


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path) -> Iterator[Runtime]:
    policies = tmp_path / "policies"
    policies.mkdir()
    text = (REPO / "policies" / "default.toml").read_text()
    (policies / "default.toml").write_text(text)
    (policies / "10-approve.toml").write_text(
        text.replace('name = "default"', 'name = "approve"')
        .replace('mode = "auto"', 'mode = "approve"')
        .replace("# [match] is deliberately absent", '[match]\nmac_prefixes = ["00:1A:E9"]\n#')
    )
    rt = open_runtime(
        settings.model_copy(update={"policy_dir": policies, "max_attempts": 3, "callback_timeout_seconds": 60}),
        clock,
        create_ca=True,
    )
    try:
        yield rt
    finally:
        rt.close()


def _report(rt: Runtime, mac: str = MAC, ip: str = IP, peer: str | None = IP) -> ReportResult:
    with session_scope(rt.engine) as s:
        return record_report(
            s, mac=mac, items=_items(ip), reason="start-up", peer=peer, now=rt.clock.now(), policies=rt.policies
        )


def _dep(rt: Runtime, mac: str = MAC) -> Deployment:
    with session_scope(rt.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == mac)).one()
        return s.exec(
            select(Deployment).where(col(Deployment.device_id) == device.id).order_by(col(Deployment.id).desc())
        ).first()  # type: ignore[return-value]


def _actions(rt: Runtime) -> list[str]:
    with session_scope(rt.engine) as s:
        return [e.action for e in s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all()]


def test_auto_enrollment_then_reconcile_creates_one_deployment(runtime: Runtime) -> None:
    _report(runtime)
    assert Reconciler(runtime).run(runtime.clock.now()) == 1
    assert Reconciler(runtime).run(runtime.clock.now()) == 0  # idempotent
    dep = _dep(runtime)
    assert dep.state is DeploymentState.QUEUED
    with session_scope(runtime.engine) as s:
        cert = s.get(Certificate, dep.certificate_id)
        assert cert is not None
        assert cert.status is CertificateStatus.PENDING
        assert f"IP:{IP}" in cert.sans
        assert cert.reason is IssueReason.ENROLLMENT
    assert "device.discovered" in _actions(runtime)
    assert "deployment.created" in _actions(runtime)


def test_approve_mode_waits_for_the_operator(runtime: Runtime) -> None:
    mac = "00:1A:E9:00:00:02"
    _report(runtime, mac)
    assert Reconciler(runtime).run(runtime.clock.now()) == 0
    assert "device.approval-pending" in _actions(runtime)
    with session_scope(runtime.engine) as s:
        approve_device(s, mac, runtime.clock.now(), actor="test")
    with session_scope(runtime.engine) as s:
        assert s.exec(select(Device).where(col(Device.mac) == mac)).one().enrollment is Enrollment.APPROVED
    assert Reconciler(runtime).run(runtime.clock.now()) == 1
    with session_scope(runtime.engine) as s, pytest.raises(NotFoundError):
        approve_device(s, "00:00:00:00:00:09", runtime.clock.now(), actor="test")


def test_ip_change_supersedes_and_reissues(runtime: Runtime) -> None:
    _report(runtime)
    Reconciler(runtime).run(runtime.clock.now())
    first = _dep(runtime)
    claim = _report(runtime, ip="10.1.2.4", peer="10.1.2.4").claim
    assert claim is not None  # another address: nothing changed yet, a claim to prove
    assert _dep(runtime).state is DeploymentState.QUEUED
    with session_scope(runtime.engine) as s:
        # The phone never received a certificate from certmgr and its policy enrolls automatically: it moves.
        outcome = resolve_claim(
            s, claim, served_sha256=None, probe_error="unreachable", now=runtime.clock.now(), policies=runtime.policies
        )
    assert outcome == "moved"
    with session_scope(runtime.engine) as s:
        old = s.get(Deployment, first.id)
        assert old is not None
        assert old.state is DeploymentState.SUPERSEDED
    assert Reconciler(runtime).run(runtime.clock.now()) == 1
    new = _dep(runtime)
    assert new.id != first.id
    with session_scope(runtime.engine) as s:
        cert = s.get(Certificate, new.certificate_id)
        old_cert = s.get(Certificate, first.certificate_id)
        assert cert is not None
        assert "IP:10.1.2.4" in cert.sans
        assert cert.reason is IssueReason.IP_CHANGE
        assert old_cert is not None
        assert old_cert.status is CertificateStatus.SUPERSEDED
    assert "device.ip-changed" in _actions(runtime)


def test_address_mismatch_does_not_move_the_phone(runtime: Runtime) -> None:
    _report(runtime)
    _report(runtime, ip="10.9.9.9", peer="10.7.7.7")
    with session_scope(runtime.engine) as s:
        assert s.exec(select(Device).where(col(Device.mac) == MAC)).one().ip == IP
    assert "device.address-mismatch" in _actions(runtime)


def _ready(rt: Runtime) -> Deployment:
    _report(rt)
    Reconciler(rt).run(rt.clock.now())
    tasks = queue.claim_due(rt, rt.clock.now())
    assert [t.mac for t in tasks] == [MAC]
    queue.contact_result(rt, tasks[0].deployment_id, rt.clock.now(), error=None)
    return _dep(rt)


def test_d10_admission(runtime: Runtime, clock: ManualClock) -> None:
    now = clock.now()
    # A pending job, but certmgr has not contacted the phone: refused (never a key).
    _report(runtime)
    Reconciler(runtime).run(now)
    adm = admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=now, busy_until=None).admission
    assert isinstance(adm, Refuse)
    assert "no contact-me" in adm.reason
    tasks = queue.claim_due(runtime, now)
    queue.contact_result(runtime, tasks[0].deployment_id, now, error=None)
    # Wrong peer: refused.
    adm = admission.admit(
        runtime, mac=MAC, peer="10.6.6.6", reason=Reason.SOLICITED, now=now, busy_until=None
    ).admission
    assert isinstance(adm, Refuse)
    assert "peer address" in adm.reason
    # Phone-initiated call: no key, no refusal (deferred: contact-me later).
    adm = admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.START_UP, now=now, busy_until=None).admission
    assert isinstance(adm, Defer)
    # Right peer, solicited after our contact-me: a write job with the PKCS#12.
    adm = admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=now, busy_until=None).admission
    assert isinstance(adm, Serve)
    assert adm.job.mode is JobMode.WRITE
    assert "job" not in repr(adm.job.write_items)  # repr hides the items
    # After the callback window: refused again.
    later = now + timedelta(seconds=61)
    adm = admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=later, busy_until=None).admission
    assert not isinstance(adm, Serve)


def _step(rt: Runtime, dep: Deployment, effects: list[Effect]) -> None:
    """One authorised phone message's effects on ``dep``, from the phone's address (no transcript)."""
    now = rt.clock.now()
    apply_effects(rt, effects=effects, deployment_id=dep.id, authorised=True, peer=IP, now=now, transcript=[])


def test_each_step_of_a_delivery_writes_its_deployment_row_once(runtime: Runtime, clock: ManualClock) -> None:
    """Counted by the year bench's statement census: admission wrote the deployment row twice (the lease was flushed
    before the job's reads, then the profile — on SQLite holding the write lock while the PKCS#12 was built), so did
    the certificate-info step (the info before the certificate's read, then the state), and the phone's report
    re-read the deployment its step had just loaded."""
    dep = _ready(runtime)
    assert dep.id is not None
    now = clock.now()
    with statements(runtime.engine) as seen:
        adm = admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=now, busy_until=None).admission
    assert isinstance(adm, Serve)
    assert adm.job.mode is JobMode.WRITE
    assert updates_of(seen, "deployment") == 1, seen
    report = PhoneReported(Reason.SOLICITED, MAC, tuple(Item(k, v) for k, v in _items().items()))
    with statements(runtime.engine) as seen:
        _step(runtime, dep, [report, WriteSent(dep.id)])
    assert updates_of(seen, "deployment") == 1, seen
    assert sum(1 for s in seen if "FROM deployment" in s) == 1, seen  # loaded once, not again after the report
    with statements(runtime.engine) as seen:
        _step(runtime, dep, [WriteAccepted(dep.id)])
    assert updates_of(seen, "deployment") == 1, seen
    with statements(runtime.engine) as seen:
        _step(runtime, dep, [CertificateInfoReceived(dep.id, "not a certificate info", None)])  # undecided, but stored
    assert updates_of(seen, "deployment") == 1, seen
    after = _dep(runtime)
    assert after.state is DeploymentState.VERIFYING
    assert after.write_sent_at is not None
    assert after.written_at is not None
    assert after.lease_until is not None
    assert after.profile_used is not None
    assert after.info_raw == "not a certificate info"


def test_a_check_first_step_writes_its_deployment_row_once(runtime: Runtime, clock: ManualClock) -> None:
    """An earlier WriteItems' answer never came and the phone already serves the certificate: one step carries the
    write's confirmation and the certificate info — one UPDATE of the row for both."""
    dep = _ready(runtime)
    assert dep.id is not None
    now = clock.now()
    admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=now, busy_until=None)
    _step(runtime, dep, [WriteSent(dep.id)])
    effects: list[Effect] = [WriteAccepted(dep.id, already_present=True), CertificateInfoReceived(dep.id, "x", None)]
    with statements(runtime.engine) as seen:
        _step(runtime, dep, effects)
    assert updates_of(seen, "deployment") == 1, seen
    after = _dep(runtime)
    assert after.state is DeploymentState.VERIFYING
    assert after.written_at is not None


def test_an_admission_that_loses_a_race_for_its_deployment_serves_nothing(
    runtime: Runtime, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admission writes the deployment once, at its commit, so the row is not locked while the PKCS#12 is built:
    another transaction that changes the deployment meanwhile wins, and this admission fails on the row's version
    (nothing committed, no job returned; the caller's retry decides again on fresh data)."""
    dep = _ready(runtime)
    now = clock.now()
    build = packaging.package
    lease = now + timedelta(seconds=999)

    def racing(*args: Any, **kwargs: Any) -> Any:
        with session_scope(runtime.engine) as other:  # another node takes the deployment while this one packages
            row = other.get(Deployment, dep.id)
            assert row is not None
            row.lease_owner, row.lease_until = "other-node", lease
            other.add(row)
        return build(*args, **kwargs)

    monkeypatch.setattr(admission, "package", racing)
    with pytest.raises(StaleDataError):
        admission.admit(runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=now, busy_until=None)
    after = _dep(runtime)
    assert after.lease_owner == "other-node"
    assert after.lease_until == lease
    assert after.profile_used is None  # the losing admission's changes are not there


def test_contact_gap_and_concurrency(runtime: Runtime, clock: ManualClock) -> None:
    _report(runtime)
    Reconciler(runtime).run(clock.now())
    with session_scope(runtime.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == MAC)).one()
        device.last_contact_me_at = clock.now()
        s.add(device)
    assert queue.claim_due(runtime, clock.now()) == []  # inside the 300 s gap
    clock.advance(timedelta(seconds=301))
    assert len(queue.claim_due(runtime, clock.now())) == 1
    assert queue.claim_due(runtime, clock.now()) == []  # never twice


def test_callback_timeout_retries_then_fails(runtime: Runtime, clock: ManualClock) -> None:
    dep = _ready(runtime)
    assert dep.state is DeploymentState.AWAITING_CALLBACK
    for _ in range(5):
        clock.advance(timedelta(seconds=400))
        recovery.expire_stale(runtime, clock.now(), active_deployments=frozenset())
        clock.advance(timedelta(days=2))
        for task in queue.claim_due(runtime, clock.now()):
            queue.contact_result(runtime, task.deployment_id, clock.now(), error=None)
    dep = _dep(runtime)
    assert dep.state is DeploymentState.FAILED
    assert dep.attempts == 3
    assert "phone never called back" in (dep.last_error or "")
    assert "deployment.failed" in _actions(runtime)


def test_restart_recovery_never_writes_again(runtime: Runtime, clock: ManualClock) -> None:
    dep = _ready(runtime)
    with session_scope(runtime.engine) as s:
        row = s.get(Deployment, dep.id)
        assert row is not None
        row.state = DeploymentState.WRITTEN
        row.written_at = clock.now()
        s.add(row)
    clock.advance(timedelta(seconds=400))
    assert recovery.recover(runtime, clock.now()) == 1
    dep = _dep(runtime)
    assert dep.state is DeploymentState.QUEUED
    assert dep.written_at is not None
    tasks = queue.claim_due(runtime, clock.now())
    queue.contact_result(runtime, tasks[0].deployment_id, clock.now(), error=None)
    adm = admission.admit(
        runtime, mac=MAC, peer=IP, reason=Reason.SOLICITED, now=clock.now(), busy_until=None
    ).admission
    assert isinstance(adm, Serve)
    assert adm.job.mode is JobMode.VERIFY
    assert not adm.job.write_items


def test_an_ipv4_mapped_peer_is_stored_as_its_ipv4_address(runtime: Runtime) -> None:
    """A dual-stack listener sees an IPv4 phone as ``::ffff:a.b.c.d``; the phone's address (its SAN, its contact-me
    target) is the IPv4 address."""
    with session_scope(runtime.engine) as s:
        record_report(
            s, mac=MAC, items={"device-type": "OpenStage 60"}, reason="start-up", peer="::ffff:10.1.2.3",
            now=runtime.clock.now(), policies=runtime.policies,
        )  # fmt: skip
    with session_scope(runtime.engine) as s:
        assert s.exec(select(Device).where(col(Device.mac) == MAC)).one().ip == "10.1.2.3"
