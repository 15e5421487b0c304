"""The renewal reconcile on the database (SQLite, controlled clock): due renewals, every reissue trigger with its
recorded reason, rate limits, idempotence, urgency order after a long outage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from certmgr.audit.log import NewEvent, append_events
from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    Deployment,
    DeploymentState,
    Device,
    IssueReason,
)
from certmgr.deploy.queue import retry_or_fail
from certmgr.policy import load_policies
from certmgr.renewal.service import reconcile_renewals, request_renewal
from certmgr.runtime import Runtime
from certmgr.scheduling.scheduler import RENEWAL, job_specs, run_job
from certmgr.settings import Settings
from tests.integration.renewal_support import (
    device,
    enroll_verified,
    mac_of,
    open_test_runtime,
    report,
    verify_all_queued,
    write_policy,
)


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path) -> Iterator[Runtime]:
    rt = open_test_runtime(settings, clock, tmp_path)
    try:
        yield rt
    finally:
        rt.close()


def _certs(rt: Runtime, reason: IssueReason | None = None) -> list[Certificate]:
    with session_scope(rt.engine) as s:
        q = select(Certificate).order_by(col(Certificate.id))
        if reason is not None:
            q = q.where(col(Certificate.reason) == reason.value)
        return list(s.exec(q).all())


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with session_scope(rt.engine) as s:
        return list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action).order_by(col(AuditEvent.seq))))


def test_nothing_due_nothing_issued(runtime: Runtime) -> None:
    enroll_verified(runtime, range(3))
    report = reconcile_renewals(runtime, runtime.clock.now())
    assert report.scanned == 3
    assert report.issued == []


def test_due_renewal_issued_once_and_queued(runtime: Runtime, clock: ManualClock) -> None:
    enroll_verified(runtime, range(3))
    clock.advance(timedelta(days=21, minutes=30))  # 30d validity, renew 10d before expiry
    first = reconcile_renewals(runtime, clock.now())
    assert sorted(first.issued) == sorted(mac_of(n) for n in range(3))
    again = reconcile_renewals(runtime, clock.now())
    assert again.issued == []  # idempotent: the pending successor is under way
    renewed = _certs(runtime, IssueReason.RENEWAL)
    assert len(renewed) == 3
    with session_scope(runtime.engine) as s:
        for cert in renewed:
            assert cert.status is CertificateStatus.PENDING
            dev = s.get(Device, cert.device_id)
            assert dev is not None
            assert cert.previous_certificate_id == dev.current_certificate_id  # kept for rollback
            deps = s.exec(select(Deployment).where(col(Deployment.certificate_id) == cert.id)).all()
            assert [d.state for d in deps] == [DeploymentState.QUEUED]
    reissues = _events(runtime, "certificate.reissue")
    assert len(reissues) == 3
    assert all(e.details["triggers"] == ["renewal-due"] for e in reissues)
    # Once verified, the new certificate is current and nothing is due any more.
    verify_all_queued(runtime)
    assert reconcile_renewals(runtime, clock.now()).issued == []


def test_every_trigger_is_recorded_with_its_reason(runtime: Runtime, clock: ManualClock, tmp_path: Path) -> None:
    enroll_verified(runtime, range(5))
    with session_scope(runtime.engine) as s:
        d0 = s.exec(select(Device).where(col(Device.mac) == mac_of(0))).one()
        d0.ip = "10.99.0.1"  # address change
        d1 = s.exec(select(Device).where(col(Device.mac) == mac_of(1))).one()
        d1.drift = True
        d2 = s.exec(select(Device).where(col(Device.mac) == mac_of(2))).one()
        cert2 = s.get(Certificate, d2.current_certificate_id)
        assert cert2 is not None
        cert2.status = CertificateStatus.REVOKED
        cert2.revoked_at = clock.now()
        s.add_all([d0, d1, cert2])
        request_renewal(s, mac_of(3), clock.now(), actor="test", note="operator asked")
    report = reconcile_renewals(runtime, clock.now())
    assert sorted(report.issued) == sorted(mac_of(n) for n in range(4))
    by_device = {device(runtime, n).id: n for n in range(5)}
    reasons = {by_device[c.device_id]: c.reason for c in _certs(runtime) if c.status is CertificateStatus.PENDING}
    assert reasons == {0: IssueReason.IP_CHANGE, 1: IssueReason.DRIFT, 2: IssueReason.REVOCATION, 3: IssueReason.MANUAL}
    triggers = {e.subject_id: e.details["triggers"] for e in _events(runtime, "certificate.reissue")}
    assert triggers[mac_of(0)] == ["address-change"]
    assert triggers[mac_of(1)] == ["drift"]
    assert triggers[mac_of(2)] == ["revoked"]
    assert triggers[mac_of(3)] == ["manual"]
    assert reconcile_renewals(runtime, clock.now()).issued == []  # each handled once
    # A policy change that changes the certificate (key type) reissues with reason policy-change (spread over
    # the hour like scheduled renewals: half past, the stagger puts them all at "now").
    verify_all_queued(runtime)
    clock.advance(timedelta(minutes=30))
    write_policy(tmp_path / "policies2", key="ec-p384")
    runtime.policies = load_policies(tmp_path / "policies2", known_secrets=set())
    report = reconcile_renewals(runtime, clock.now())
    assert len(report.issued) == 5
    assert report.reasons == {"policy-change": 5}


def test_hourly_and_per_run_limits(settings: Settings, clock: ManualClock, tmp_path: Path) -> None:
    rt = open_test_runtime(settings, clock, tmp_path, renewal_max_per_run=2, renewal_max_per_hour=3)
    try:
        enroll_verified(rt, range(7))
        clock.advance(timedelta(days=21, minutes=30))
        per_run: list[int] = []
        for _ in range(40):  # 40 runs, 5 minutes apart
            report = reconcile_renewals(rt, clock.now())
            per_run.append(len(report.issued))
            assert report.issued_within_budget == len(report.issued)  # scheduled, under the budget
            clock.advance(timedelta(minutes=5))
        assert max(per_run) <= 2
        renewed = _certs(rt, IssueReason.RENEWAL)
        assert len(renewed) == 7  # all renewed in the end, before expiry
        hours = Counter(c.created_at.replace(minute=0, second=0, microsecond=0) for c in renewed)
        assert max(hours.values()) <= 3
        assert all(c.created_at < c.not_after for c in renewed)
    finally:
        rt.close()


def test_catch_up_after_ten_days_down_in_one_run_most_urgent_first(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    # The hourly limit is 1: expired certificates must not wait for it.
    rt = open_test_runtime(settings, clock, tmp_path, renewal_max_per_hour=1)
    try:
        order = [4, 2, 0, 5, 1, 3]
        for n in order:  # issued an hour apart: phone 4 expires first
            enroll_verified(rt, [n])
            clock.advance(timedelta(hours=1))
        clock.advance(timedelta(days=30 + 10))  # "down" for ten days after every certificate expired
        spec = next(s for s in job_specs(rt) if s.id == RENEWAL)
        report = run_job(rt, spec)
        assert report is not None
        assert report.issued == [mac_of(n) for n in order]  # type: ignore[attr-defined]
        assert report.issued_immediate == len(order)  # type: ignore[attr-defined]
        assert report.issued_within_budget == 0  # type: ignore[attr-defined]
        reissued = [e.subject_id for e in _events(rt, "certificate.reissue")]
        assert reissued == [mac_of(n) for n in order]
        assert run_job(rt, spec).issued == []  # type: ignore[attr-defined]
    finally:
        rt.close()


def _fail_queued_deployment(rt: Runtime, n: int) -> None:
    """The queued deployment of phone ``n`` fails for good (its last attempt: the phone was unreachable)."""
    with session_scope(rt.engine) as s:
        dev = s.exec(select(Device).where(col(Device.mac) == mac_of(n))).one()
        dep = s.exec(
            select(Deployment).where(
                col(Deployment.device_id) == dev.id, col(Deployment.state) == DeploymentState.QUEUED.value
            )
        ).one()
        dep.attempts = rt.settings.max_attempts
        events: list[NewEvent] = []
        retry_or_fail(rt, dep, dev, rt.clock.now(), "phone unreachable", events)
        assert dep.state is DeploymentState.FAILED
        s.add(dep)
        s.add(dev)
        append_events(s, rt.clock.now(), events)


def test_a_failed_renewal_is_retried_once_the_phone_is_back_not_only_at_the_deadline(
    runtime: Runtime, clock: ManualClock
) -> None:
    """A phone offline while its renewal was delivered (the deployment failed for good) and back later gets a new
    attempt the next day, not only at the deadline (10 % of the renewal window before expiry), when one more
    offline spell would let its certificate expire. Found by bench/fleet_year.py (mass enrollment: a successor
    verified 2.99 days before expiry, weeks after the phone came back)."""
    enroll_verified(runtime, range(1))
    clock.advance(timedelta(days=21))  # 30d validity, renew 10d before expiry: due; deadline 1 day before expiry
    assert reconcile_renewals(runtime, clock.now()).issued == [mac_of(0)]
    _fail_queued_deployment(runtime, 0)
    clock.advance(timedelta(days=2))
    assert reconcile_renewals(runtime, clock.now()).issued == []  # not heard from since: nothing to gain yet
    report(runtime, 0)  # the phone is back (start-up)
    assert reconcile_renewals(runtime, clock.now()).issued == [mac_of(0)]  # 6 days before the deadline
    assert reconcile_renewals(runtime, clock.now()).issued == []  # under way again: left alone
    _fail_queued_deployment(runtime, 0)  # failed again
    clock.advance(timedelta(minutes=5))
    report(runtime, 0)
    assert reconcile_renewals(runtime, clock.now()).issued == []  # not a loop: one retry per longest backoff
    clock.advance(timedelta(seconds=runtime.settings.retry_max_seconds))
    assert reconcile_renewals(runtime, clock.now()).issued == [mac_of(0)]


@pytest.mark.parametrize("recorded", ["default", "gone"])
def test_a_stored_address_that_is_not_an_ip_skips_that_phone_only(
    runtime: Runtime, clock: ManualClock, caplog: pytest.LogCaptureFixture, recorded: str
) -> None:
    """A row the planner cannot read (a stored address that is not an IP: a damaged row) is logged and skipped,
    whether its recorded policy exists (the policy is then taken without building the phone's identity) or not
    (the identity is built to select one); the other due phones are renewed in the same run."""
    enroll_verified(runtime, range(3))
    with session_scope(runtime.engine) as s:
        damaged = s.exec(select(Device).where(col(Device.mac) == mac_of(1))).one()
        damaged.ip = "not-an-ip"
        damaged.policy_name = recorded
        s.add(damaged)
    clock.advance(timedelta(days=21, minutes=30))
    with caplog.at_level("WARNING", logger="certmgr.renewal.service"):
        result = reconcile_renewals(runtime, clock.now())
    assert sorted(result.issued) == sorted([mac_of(0), mac_of(2)])
    assert any(mac_of(1) in r.getMessage() and "cannot plan" in r.getMessage() for r in caplog.records)
