"""The WPI listener end to end over real TLS on loopback: real uvicorn, real dispatcher, in-test fake phones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import (
    AuditEvent,
    Certificate,
    CertificateStatus,
    CheckInfo,
    CheckProbe,
    CheckReply,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    ProfileMemory,
)
from certmgr.inventory.enrollment import approve_device
from certmgr.pki.types import Pkcs12Profile
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from certmgr.simulator.ports import free_port, port_free_on_all
from certmgr.wpi.messages import Action, Reason, WorkpointMessage
from tests.conftest import REPO
from tests.integration.fake_phone import (
    P12_PASSWORD,
    Behaviour,
    FakePhone,
    Stack,
    address_block,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

POLICY_TWO_PROFILES = (
    (REPO / "policies" / "default.toml")
    .read_text()
    .replace('profiles = ["plain"]', 'profiles = ["plain", "modern"]\npassword_secret = "phones"')
)


@pytest.fixture
def block() -> int:
    return address_block()


def _runtime(settings: Settings, tmp_path: Path, block: int, *, approve: bool = False, **extra: object) -> Runtime:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    policy = POLICY_TWO_PROFILES.replace('mode = "auto"', 'mode = "approve"') if approve else POLICY_TWO_PROFILES
    (policy_dir / "default.toml").write_text(policy)
    hosts = [f"127.0.{block}.{n}" for n in range(1, 8)]
    custom = settings.model_copy(
        update={
            "policy_dir": policy_dir,
            "pkcs12_passwords": {"phones": P12_PASSWORD},
            "wpi_host": "127.0.0.1",
            "wpi_port": free_port("127.0.0.1"),
            "wpi_poll_port": free_port("127.0.0.1"),
            "wbm_port": port_free_on_all(hosts),
            "contact_gap_seconds": 0,
            "callback_timeout_seconds": 3,
            "retry_base_seconds": 1,
            "retry_max_seconds": 2,
            "dispatch_tick_seconds": 0.2,
            "probe_tries": 4,
            "probe_interval_seconds": 0.2,
            "probe_timeout_seconds": 2.0,
            **extra,
        }
    )
    from pydantic import SecretStr

    custom.pkcs12_passwords = {"phones": SecretStr(P12_PASSWORD)}
    return open_runtime(custom, create_ca=True)


@pytest.fixture
def env(settings: Settings, tmp_path: Path, block: int) -> Iterator[tuple[Runtime, Stack]]:
    runtime = _runtime(settings, tmp_path, block)
    stack = Stack(runtime)
    try:
        yield runtime, stack
    finally:
        stack.close()
        runtime.close()


def _phone(stack: Stack, runtime: Runtime, tmp_path: Path, block: int, n: int, **behaviour: object) -> FakePhone:
    return FakePhone(
        ip=f"127.0.{block}.{n}",
        mac=f"00:1A:E8:{block:02X}:00:{n:02X}",
        wpi_url=stack.wpi_url,
        wbm_port=runtime.settings.wbm_port,
        tmp=tmp_path / f"phone{n}",
        behaviour=Behaviour(**behaviour),  # type: ignore[arg-type]
    )


def _deployment(runtime: Runtime, mac: str) -> Deployment | None:
    with session_scope(runtime.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == mac)).first()
        if device is None:
            return None
        return s.exec(
            select(Deployment).where(col(Deployment.device_id) == device.id).order_by(col(Deployment.id).desc())
        ).first()


def _state(runtime: Runtime, mac: str, *states: DeploymentState) -> Deployment | None:
    dep = _deployment(runtime, mac)
    return dep if dep is not None and dep.state in states else None


def _events(runtime: Runtime, action: str) -> list[AuditEvent]:
    with session_scope(runtime.engine) as s:
        return list(s.exec(select(AuditEvent).where(col(AuditEvent.action) == action)).all())


def _no_secrets(phone: FakePhone, runtime: Runtime, dep: Deployment) -> None:
    text = repr(dep.transcript)
    assert "MII" not in text
    assert P12_PASSWORD not in text
    assert "secret-user-pwd" not in text
    with session_scope(runtime.engine) as s:
        for ev in s.exec(select(AuditEvent)).all():
            assert "secret-user-pwd" not in repr(ev.details)
            assert P12_PASSWORD not in repr(ev.details)


def test_happy_path_verified_with_all_three_checks(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 1)
    try:
        first = phone.report(Reason.START_UP)
        assert first.action is Action.CLEAN_UP  # D10: nothing but CleanUp in a phone-initiated call
        dep = wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 40)
        assert dep.check_reply is CheckReply.PASSED
        assert dep.check_info is CheckInfo.VERIFIED
        assert dep.check_probe is CheckProbe.PASSED
        assert dep.profile_used is Pkcs12Profile.PLAIN
        assert dep.info_raw
        assert "SHA-256 Fingerprint" in dep.info_raw
        body = phone.contact_mes[0].decode()
        assert "ContactMe=true" in body
        assert "dls_ip_addr=127.0.0.1" in body
        assert f"dls_ip_port={runtime.settings.wpi_port}" in body
        with session_scope(runtime.engine) as s:
            device = s.exec(select(Device).where(col(Device.mac) == phone.mac)).one()
            cert = s.get(Certificate, dep.certificate_id)
            assert cert is not None
            assert cert.status is CertificateStatus.ACTIVE
            assert device.current_certificate_id == cert.id
            assert device.status is DeviceStatus.VERIFIED
            assert device.ip == phone.ip
            assert device.last_verified_at is not None
            assert phone.installed is not None
            assert phone.installed.serial_number == int(cert.serial, 16)
            memory = s.exec(select(ProfileMemory)).one()
            assert memory.profile is Pkcs12Profile.PLAIN
            assert memory.device_type == "OpenStage 60"
        names = [e.get("action") or e.get("reason") for e in dep.transcript]
        assert "WriteItems" in names
        assert "ReadItems" in names
        assert "CleanUp" in names
        _no_secrets(phone, runtime, dep)
    finally:
        phone.close()


def test_busy_phone_keeps_the_job_and_succeeds_later(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 2, busy_times=1)
    try:
        phone.report()
        wait_for(lambda: _events(runtime, "deployment.busy"), 30)
        busy_reply = [r for r in phone.responses if b"send-solicited" in r]
        assert busy_reply, "CleanUp with send-solicited expected after busy"
        dep = wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 40)
        assert dep.attempts >= 2
    finally:
        phone.close()


def test_failed_write_moves_to_next_profile(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 3, reject_profiles=1)
    try:
        phone.report()
        dep = wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 40)
        assert dep.profile_index == 1
        assert dep.profile_used is Pkcs12Profile.MODERN
        assert _events(runtime, "deployment.write-rejected")
    finally:
        phone.close()


def test_info_mismatch_is_drift_and_retried(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 4, info="mismatch", install=False)
    try:
        phone.report()
        wait_for(lambda: _events(runtime, "device.drift"), 40)
        dep = wait_for(
            lambda: (d := _deployment(runtime, phone.mac)) is not None and d.check_info is CheckInfo.MISMATCH and d,
            10,
        )
        assert dep.state in (
            DeploymentState.QUEUED,
            DeploymentState.CONTACTING,
            DeploymentState.AWAITING_CALLBACK,
            DeploymentState.WRITTEN,
            DeploymentState.VERIFYING,
        )
        with session_scope(runtime.engine) as s:
            device = s.exec(select(Device).where(col(Device.mac) == phone.mac)).one()
            assert device.drift is True
    finally:
        phone.close()


def test_peer_address_mismatch_gets_no_key(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 5, callback_from=f"127.0.{block}.6")
    try:
        phone.report()
        wait_for(lambda: _events(runtime, "wpi.refused"), 30)
        for body in phone.responses:
            assert b'wbm-server-certificate"' not in body
            assert b"WriteItems" not in body
        assert phone.installed is None
        refused = _events(runtime, "wpi.refused")[0]
        assert "peer address" in refused.details["reason"]
        dep = _deployment(runtime, phone.mac)
        assert dep is not None
        assert dep.written_at is None
    finally:
        phone.close()


def test_solicited_without_contact_me_is_refused(settings: Settings, tmp_path: Path, block: int) -> None:
    # A runtime whose dispatcher cannot reach the phone (no contact-me can succeed): the job is pending but
    # certmgr never asked the phone to call.
    runtime = _runtime(settings, tmp_path, block, contact_gap_seconds=3600)
    stack = Stack(runtime)
    phone = _phone(stack, runtime, tmp_path, block, 1, callback=False)
    try:
        phone.report()
        wait_for(lambda: _deployment(runtime, phone.mac), 30)
        # Let the first contact-me go out and its callback window pass (phone does not call back).
        wait_for(lambda: _state(runtime, phone.mac, DeploymentState.QUEUED) and phone.contact_mes, 30)
        seen = phone.solicited_flow()
        assert [m.action for m in seen] == [Action.CLEAN_UP]
        assert phone.installed is None
        assert _events(runtime, "wpi.refused")
    finally:
        phone.close()
        stack.close()
        runtime.close()


def test_malformed_bodies_get_4xx_and_server_survives(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 1)
    try:
        with phone.client() as client:
            assert phone.post(client, b"<WorkpointMessage").status_code == 400
            dtd = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><WorkpointMessage/>'
            r = phone.post(client, dtd)
            assert r.status_code == 400
            assert b"not allowed" in r.content
            big = b"<a>" + b"x" * (10 * 1024 * 1024) + b"</a>"
            try:
                r = phone.post(client, big)
                assert r.status_code == 413
            except httpx.HTTPError:
                pass  # the server may close the connection on an oversized body: also fine
        with phone.client() as client:
            r = phone.post(client, WorkpointMessage("AB", Reason.START_UP, phone.basic_items()), path="/other/path")
            assert r.status_code == 200
            assert b"CleanUp" in r.content
    finally:
        phone.close()


def test_reply_to_without_interaction_gets_cleanup(env: tuple[Runtime, Stack], tmp_path: Path, block: int) -> None:
    runtime, stack = env
    phone = _phone(stack, runtime, tmp_path, block, 1)
    try:
        with phone.client() as client:
            msg = WorkpointMessage("CAFE", Reason.REPLY_TO, (), reply_action=Action.WRITE_ITEMS)
            r = phone.post(client, msg)
            assert r.status_code == 200
            assert b"CleanUp" in r.content
            assert b'nonce="CAFE"' in r.content
        assert _events(runtime, "wpi.violation")
    finally:
        phone.close()


def test_poll_answers_200_then_202(settings: Settings, tmp_path: Path, block: int) -> None:
    # Approval mode + a long contact gap: the dispatcher can never send contact-me, so the poll is the way in.
    runtime = _runtime(settings, tmp_path, block, approve=True, contact_gap_seconds=3600, callback_timeout_seconds=30)
    stack = Stack(runtime)
    phone = _phone(stack, runtime, tmp_path, block, 2, callback=False)
    foreign = httpx.Client(timeout=5, transport=httpx.HTTPTransport(local_address="127.0.0.1"))
    try:
        # The phone polls from its own address; another address is answered "nothing pending" and changes nothing.
        with httpx.Client(timeout=5, transport=httpx.HTTPTransport(local_address=phone.ip)) as client:
            url = f"{stack.poll_url}/dcmp/contact-me"
            assert client.get(url, params={"device-id": phone.mac}).status_code == 200  # unknown phone
            assert client.get(url, params={"device-id": "nonsense"}).status_code == 400
            phone.report()
            assert client.get(url, params={"device-id": phone.mac}).status_code == 200  # not approved yet
            with session_scope(runtime.engine) as s:
                device = s.exec(select(Device).where(col(Device.mac) == phone.mac)).one()
                device.last_contact_me_at = runtime.clock.now()
                s.add(device)
                approve_device(s, phone.mac, runtime.clock.now(), actor="test")
            wait_for(lambda: _deployment(runtime, phone.mac), 30)
            assert foreign.get(url, params={"device-id": phone.mac}).status_code == 200  # poll hijack: refused
            queued = _deployment(runtime, phone.mac)
            assert queued is not None
            assert (queued.state, queued.attempts) == (DeploymentState.QUEUED, 0)
            assert client.get(url, params={"device-id": phone.mac}).status_code == 202
            dep = _deployment(runtime, phone.mac)
            assert dep is not None
            assert dep.state is DeploymentState.AWAITING_CALLBACK
            assert phone.contact_mes == []
            phone.solicited_flow()
            wait_for(lambda: _state(runtime, phone.mac, DeploymentState.VERIFIED), 30)
            assert client.get(url, params={"device-id": phone.mac}).status_code == 200
    finally:
        foreign.close()
        phone.close()
        stack.close()
        runtime.close()
