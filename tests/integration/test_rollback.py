"""Rollback with the fake phone over real sockets: the phone accepts a renewed certificate but keeps serving
something else; certmgr redeploys the previous (still valid) certificate and flags the phone."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, Certificate, CertificateStatus, DeploymentState, Device, DeviceStatus
from certmgr.deploy.rollback import rollback_failed
from certmgr.renewal.service import reconcile_renewals, request_renewal
from certmgr.settings import Settings
from tests.integration.fake_phone import Stack, address_block, wait_for
from tests.integration.test_wpi_server import _deployment, _phone, _runtime, _state

pytestmark = pytest.mark.timeout(150)


def test_failed_renewal_rolls_back_to_previous_certificate(settings: Settings, tmp_path: Path) -> None:
    block = address_block()
    runtime = _runtime(settings, tmp_path, block, max_attempts=10, rollback_after_verify_failures=2)
    stack = Stack(runtime)
    phone = _phone(stack, runtime, tmp_path, block, 1)
    try:
        phone.report()
        first = wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 40)
        original = first.certificate_id
        # The phone now accepts writes but never serves what it was given.
        phone.behaviour.install = False
        with session_scope(runtime.engine) as s:
            request_renewal(s, phone.mac, runtime.clock.now(), actor="test")
        assert reconcile_renewals(runtime, runtime.clock.now()).issued == [phone.mac]
        renewal = _deployment(runtime, phone.mac)
        assert renewal is not None
        assert renewal.certificate_id != original

        def rolled_back() -> object:
            return rollback_failed(runtime, runtime.clock.now()) or None

        results = wait_for(rolled_back, 60, 0.3)
        assert results[0].failed_deployment_id == renewal.id
        assert results[0].rollback_deployment_id is not None
        assert rollback_failed(runtime, runtime.clock.now()) == []  # handled once
        # The phone behaves again: the previous certificate goes back on and is verified.
        phone.behaviour.install = True
        back = wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 60)
        assert back.id == results[0].rollback_deployment_id
        assert back.certificate_id == original
        assert back.transcript[0]["dir"] == "rollback"
        assert phone.installed is not None
        with session_scope(runtime.engine) as s:
            device = s.exec(select(Device).where(col(Device.mac) == phone.mac)).one()
            assert device.current_certificate_id == original
            assert device.status is DeviceStatus.VERIFIED
            failed_cert = s.get(Certificate, renewal.certificate_id)
            assert failed_cert is not None
            assert failed_cert.status is CertificateStatus.PENDING  # not reissued in a loop
            assert int(failed_cert.serial, 16) != phone.installed.serial_number
            actions = [e.action for e in s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all()]
        assert "deployment.rollback" in actions
        assert "device.flagged" in actions
        # The renewal reconcile leaves the flagged phone alone (no re-keying loop).
        assert reconcile_renewals(runtime, runtime.clock.now()).issued == []
    finally:
        phone.close()
        stack.close()
        runtime.close()
