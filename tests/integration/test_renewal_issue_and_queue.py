"""The one recording step, :func:`certmgr.deploy.queue.issue_and_queue`, shared by the reconciler, the
renewal reconcile and the API actions: what it writes, when it refuses, and the duplicate-issuance window of a
manual renewal that it closes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from certmgr import operations
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
from certmgr.deploy.queue import issue_and_queue
from certmgr.errors import ConflictError
from certmgr.identity import DeviceIdentity
from certmgr.issuance.service import BuiltCertificate, build_certificate
from certmgr.operations import certificates as certificate_ops
from certmgr.operations import common as operations_common
from certmgr.runtime import Runtime
from certmgr.settings import Settings
from tests.integration.renewal_support import device, enroll_verified, open_test_runtime


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path) -> Iterator[Runtime]:
    rt = open_test_runtime(settings, clock, tmp_path)
    try:
        yield rt
    finally:
        rt.close()


def _build(rt: Runtime, phone: Device) -> BuiltCertificate:
    assert phone.ip is not None
    identity = DeviceIdentity.create(mac=phone.mac, ips=[phone.ip])
    return build_certificate(identity, rt.policies.get("default"), rt.issuer(), rt.clock.now())


def _actions_of(rt: Runtime, after_seq: int) -> list[tuple[str, str]]:
    with session_scope(rt.engine) as s:
        rows = s.exec(select(AuditEvent).where(col(AuditEvent.seq) > after_seq).order_by(col(AuditEvent.seq))).all()
        return [(e.action, e.actor) for e in rows]


def _last_seq(rt: Runtime) -> int:
    with session_scope(rt.engine) as s:
        return max((e.seq for e in s.exec(select(AuditEvent)).all()), default=0)


def test_records_supersedes_and_queues_with_one_actor(runtime: Runtime, clock: ManualClock) -> None:
    enroll_verified(runtime, [1])
    phone = device(runtime, 1)
    assert phone.id is not None
    clock.advance(timedelta(minutes=5))
    first = _build(runtime, phone)
    second = _build(runtime, phone)
    with session_scope(runtime.engine) as s:
        queued = issue_and_queue(
            s, runtime, phone.id, first, reason=IssueReason.MANUAL, actor="tester", now=clock.now()
        )
        assert queued is not None
    seq = _last_seq(runtime)
    with session_scope(runtime.engine) as s:
        again = issue_and_queue(
            s,
            runtime,
            phone.id,
            second,
            reason=IssueReason.DRIFT,
            actor="tester",
            now=clock.now(),
            reissue={"triggers": ["drift"]},
        )
        assert again is not None
        new_id = again.certificate.id
    assert _actions_of(runtime, seq) == [
        ("deployment.superseded", "tester"),
        ("certificate.superseded", "tester"),
        ("certificate.issued", "tester"),
        ("certificate.reissue", "tester"),
        ("deployment.created", "tester"),
    ]
    with session_scope(runtime.engine) as s:
        old = s.get(Certificate, queued.certificate.id)
        assert old is not None
        assert old.status is CertificateStatus.SUPERSEDED
        old_dep = s.get(Deployment, queued.deployment.id)
        assert old_dep is not None
        assert old_dep.state is DeploymentState.SUPERSEDED
        new = s.get(Certificate, new_id)
        assert new is not None
        assert new.status is CertificateStatus.PENDING
        assert new.reason is IssueReason.DRIFT
        deps = s.exec(select(Deployment).where(col(Deployment.certificate_id) == new_id)).all()
        assert [d.state for d in deps] == [DeploymentState.QUEUED]


def test_refusal_writes_nothing(runtime: Runtime, clock: ManualClock) -> None:
    enroll_verified(runtime, [1])
    phone = device(runtime, 1)
    assert phone.id is not None
    built = _build(runtime, phone)
    seq = _last_seq(runtime)
    with session_scope(runtime.engine) as s:
        refused = issue_and_queue(
            s,
            runtime,
            phone.id,
            built,
            reason=IssueReason.MANUAL,
            actor="tester",
            now=clock.now(),
            still_needed=lambda _s, _d: False,
        )
        assert refused is None
        assert issue_and_queue(s, runtime, 9999, built, reason=IssueReason.MANUAL, actor="t", now=clock.now()) is None
    assert _actions_of(runtime, seq) == []
    with session_scope(runtime.engine) as s:
        assert s.exec(select(Certificate).where(col(Certificate.serial) == built.serial_hex)).first() is None


def test_manual_renew_racing_another_renew_issues_once(
    runtime: Runtime, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renew requests for one certificate: the second one to record finds the first one's certificate under
    the device lock and answers 409 instead of issuing a second certificate."""
    enroll_verified(runtime, [1])
    phone = device(runtime, 1)
    assert phone.current_certificate_id is not None
    current_id = phone.current_certificate_id
    real_build = operations_common.build_for
    inner: list[operations.RenewResult] = []
    raced: list[bool] = []

    def build_while_another_renews(rt: Runtime, dev: Device, now: Any) -> BuiltCertificate:
        built = real_build(rt, dev, now)
        if not raced:  # the concurrent request completes while this one builds its key (no transaction open)
            raced.append(True)
            inner.append(operations.renew_certificate(rt, current_id, "token:other"))
        return built

    monkeypatch.setattr(certificate_ops, "build_for", build_while_another_renews)
    with pytest.raises(ConflictError):
        operations.renew_certificate(runtime, current_id, "token:first")
    with session_scope(runtime.engine) as s:
        manual = s.exec(select(Certificate).where(col(Certificate.reason) == IssueReason.MANUAL.value)).all()
    assert [c.id for c in manual] == [inner[0].certificate_id]
