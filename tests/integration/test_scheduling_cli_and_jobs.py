"""``certmgr status`` / ``certmgr notify test``, the scheduler running its jobs once at start, and the jobs'
services: probe-sweep drift detection, de-duplicated expiry notifications, audit checkpoints."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import col, select

from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditCheckpoint, AuditEvent, DeviceStatus
from certmgr.phones.sweep import ProbeSweep
from certmgr.runtime import Runtime
from certmgr.scheduling import scheduler as sched
from certmgr.scheduling.tasks import EXPIRY_NOTIFIED, audit_checkpoint, expiry_notify
from certmgr.settings import Settings
from tests.integration.renewal_support import device, enroll_verified, open_test_runtime
from tests.integration.test_api_support import cli_main as _run


class _Hook:
    """A webhook receiver on loopback that records JSON bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[_Hook]:
    h = _Hook()
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path, hook: _Hook) -> Iterator[Runtime]:
    rt = open_test_runtime(settings, clock, tmp_path, webhook_urls=[SecretStr(hook.url)], wbm_port=1)
    try:
        yield rt
    finally:
        rt.close()


def _env(monkeypatch: pytest.MonkeyPatch, rt: Runtime) -> None:
    s = rt.settings
    monkeypatch.setenv("CERTMGR_DATA_DIR", str(s.data_dir))
    monkeypatch.setenv("CERTMGR_POLICY_DIR", str(s.policy_dir))
    monkeypatch.setenv("CERTMGR_CA_CONFIG_DIR", str(s.ca_config_dir))
    monkeypatch.setenv("CERTMGR_CA_PASSPHRASE", "test-passphrase-not-secret")
    monkeypatch.setenv("CERTMGR_MASTER_KEY", "test-master-key-not-secret-0123456789abcdef")


def test_status_shows_the_fleet(
    runtime: Runtime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    enroll_verified(runtime, range(3))
    _env(monkeypatch, runtime)
    code, out, err = _run(capsys, "status")
    assert code == 0, err
    assert "Phones by status" in out
    assert "verified" in out
    assert "Deployments by state" in out
    assert "Next renewals" in out
    assert "earliest expiry" in out


def test_notify_test_exit_codes(
    runtime: Runtime, hook: _Hook, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, runtime)
    code, _out, err = _run(capsys, "notify", "test")
    assert code == 3, err  # no channel configured: a configuration error
    monkeypatch.setenv("CERTMGR_WEBHOOK_URLS", json.dumps([hook.url]))
    code, out, err = _run(capsys, "notify", "test")
    assert code == 0, err
    assert "delivered" in out
    assert hook.bodies[-1]["kind"] == "test"
    monkeypatch.setenv("CERTMGR_WEBHOOK_URLS", json.dumps(["http://127.0.0.1:1/closed"]))
    code, out, _err = _run(capsys, "notify", "test")
    assert code == 11
    assert "FAILED" in out


def test_expiry_notification_is_sent_once(runtime: Runtime, clock: ManualClock, hook: _Hook) -> None:
    enroll_verified(runtime, range(2))
    clock.advance(timedelta(days=20))  # 30d certificates: within the 14 days of notify_expiry_days
    first = expiry_notify(runtime, clock.now())
    assert first.notified == 2
    assert hook.bodies[-1]["kind"] == "expiry"
    assert hook.bodies[-1]["data"]["count"] == 2
    assert expiry_notify(runtime, clock.now()).notified == 0  # remembered in the audit log
    assert len(hook.bodies) == 1
    clock.advance(timedelta(days=11))  # now expired: one more (different) notification
    assert expiry_notify(runtime, clock.now()).notified == 2
    with session_scope(runtime.engine) as s:
        assert len(s.exec(select(AuditEvent).where(col(AuditEvent.action) == EXPIRY_NOTIFIED)).all()) == 2


def test_probe_sweep_flags_drift_and_renewal_reissues(runtime: Runtime, clock: ManualClock) -> None:
    from certmgr.renewal.service import reconcile_renewals
    from certmgr.simulator.ports import free_port
    from tests.integration.fake_phone import _self_signed, _Wbm, address_block

    block = address_block()
    host = f"127.0.{block}.1"
    port = free_port(host)
    rt = runtime
    rt.settings = rt.settings.model_copy(update={"wbm_port": port})
    enroll_verified(rt, [0], ip=lambda _n: host)
    cert, key, _ = _self_signed(Path(rt.settings.data_dir), "other")
    wbm = _Wbm(host, port, cert, key)  # the phone serves a certificate certmgr never issued
    try:
        clock.advance(timedelta(days=2))
        report = ProbeSweep(rt).run(clock.now())
        assert report.drift == [device(rt, 0).mac]
    finally:
        wbm.close()
    dev = device(rt, 0)
    assert dev.drift
    assert dev.status is DeviceStatus.DRIFT
    renewal = reconcile_renewals(rt, clock.now())
    assert renewal.issued == [dev.mac]
    assert renewal.reasons == {"drift": 1}


def test_checkpoint_job_is_idempotent(runtime: Runtime) -> None:
    enroll_verified(runtime, range(1))
    assert audit_checkpoint(runtime, runtime.clock.now())
    assert not audit_checkpoint(runtime, runtime.clock.now())
    with session_scope(runtime.engine) as s:
        assert len(s.exec(select(AuditCheckpoint)).all()) == 1


def test_scheduler_runs_every_job_once_at_start(runtime: Runtime) -> None:
    ran: list[str] = []
    done = threading.Event()

    def call(spec_id: str) -> Any:
        def inner(_rt: Runtime, _now: Any) -> None:
            ran.append(spec_id)
            if len(ran) == 3:
                done.set()

        return inner

    specs = [sched.JobSpec(name, 3600, singleton, call(name)) for name, singleton in
             (("a", True), ("b", False), ("c", True))]  # fmt: skip

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(sched.run_scheduler(runtime, stop, specs))
        await asyncio.to_thread(done.wait, 30)  # every job ran once (bounded; the assertion below tells)
        stop.set()
        await task

    asyncio.run(go())
    assert sorted(ran) == ["a", "b", "c"]


def test_incidents_are_notified_once_each(runtime: Runtime, clock: ManualClock, hook: _Hook) -> None:
    from certmgr.audit.log import NewEvent, append_events
    from certmgr.scheduling.tasks import incident_notify

    def record(action: str, mac: str, **details: object) -> None:
        with session_scope(runtime.engine) as s:
            append_events(s, clock.now(), [NewEvent("test", action, "device", mac, dict(details))])

    record("deployment.failed", "00:1A:E8:00:00:01", reason="phone unreachable")
    record("device.drift", "00:1A:E8:00:00:02", deployment=7)
    record("deployment.verified", "00:1A:E8:00:00:03")  # not an incident
    report = incident_notify(runtime, clock.now())
    assert report.audit_ok
    assert report.incidents == {"deployment-failed": 1, "drift": 1}
    assert sorted(b["kind"] for b in hook.bodies) == ["deployment-failed", "drift"]
    assert "00:1A:E8:00:00:01" in next(b for b in hook.bodies if b["kind"] == "deployment-failed")["text"]
    assert incident_notify(runtime, clock.now()).notified == []  # remembered in the audit log
    record("deployment.failed", "00:1A:E8:00:00:04", reason="every PKCS#12 profile refused")
    assert incident_notify(runtime, clock.now()).incidents == {"deployment-failed": 1}
    assert len(hook.bodies) == 3


def test_audit_chain_failure_is_notified_once(runtime: Runtime, clock: ManualClock, hook: _Hook) -> None:
    from sqlalchemy import update

    from certmgr.scheduling.tasks import incident_notify

    enroll_verified(runtime, range(1))
    with session_scope(runtime.engine) as s:
        s.execute(update(AuditEvent).where(col(AuditEvent.seq) == 2).values(actor="mallory"))
    report = incident_notify(runtime, clock.now())
    assert not report.audit_ok
    assert [b["kind"] for b in hook.bodies] == ["audit-chain-failure"]
    assert hook.bodies[0]["data"]["seq"] == "2"
    assert incident_notify(runtime, clock.now()).notified == []
    assert len(hook.bodies) == 1


def test_probe_sweep_records_a_batch_larger_than_one_statement(
    runtime: Runtime, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads its batch's phones a part at a time (500; 16 here): a batch of 40 records every phone's
    outcome (all unreachable: nothing listens on their loopback addresses), none lost at the parts' boundaries."""
    from certmgr.db import inlist
    from certmgr.simulator.ports import free_port
    from tests.integration.fake_phone import address_block

    monkeypatch.setattr(inlist, "IN_PART", 16)
    block = address_block()
    rt = runtime
    rt.settings = rt.settings.model_copy(
        update={"wbm_port": free_port("127.0.0.1"), "probe_sweep_batch": 40, "probe_timeout_seconds": 2.0}
    )
    enroll_verified(rt, range(40), ip=lambda n: f"127.{block}.0.{n + 1}")
    clock.advance(timedelta(days=2))
    report = ProbeSweep(rt).run(clock.now())
    assert (report.probed, report.unreachable, report.passed, report.drift) == (40, 40, 0, [])
