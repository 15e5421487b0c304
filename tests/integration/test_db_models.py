"""CRUD, unique constraints and foreign keys of every table, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import (
    ApiToken,
    AuditCheckpoint,
    AuditEvent,
    AuditHead,
    CARecord,
    CARole,
    Certificate,
    CertificateStatus,
    CheckInfo,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    IssueReason,
    ProfileMemory,
)
from certmgr.pki.types import KeyType, Pkcs12Profile

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _device(mac: str = "00:1A:E8:12:34:56", **kw: Any) -> Device:
    return Device(mac=mac, created_at=T0, updated_at=T0, **kw)


def _cert(device_id: int, serial: str = "0a1b", fp: str = "f" * 64, **kw: Any) -> Certificate:
    values: dict[str, Any] = {
        "subject": "CN=phone",
        "sans": ["phone.example.org", "10.0.0.7"],
        "key_type": KeyType.RSA_2048,
        "not_before": T0,
        "not_after": T0 + timedelta(days=365),
        "cert_pem": "-----BEGIN CERTIFICATE-----",
        "key_blob": b"\x00sealed\xff",
        "issuer_fingerprint": "e" * 64,
        "reason": IssueReason.ENROLLMENT,
        "created_at": T0,
    }
    values.update(kw)
    return Certificate(device_id=device_id, serial=serial, fingerprint_sha256=fp, **values)


def _add(session: Session, obj: Any) -> Any:
    session.add(obj)
    session.flush()
    return obj


def _id(obj: Device | Certificate | Deployment | AuditEvent) -> int:
    assert obj.id is not None
    return obj.id


def test_device_crud_and_json(session: Session) -> None:
    device = _add(session, _device(dns_names=["a.example", "b.example"], policy_name="default", ip="10.0.0.7"))
    session.commit()
    session.expunge_all()

    loaded = session.exec(select(Device).where(Device.mac == "00:1A:E8:12:34:56")).one()
    assert loaded.id == device.id
    assert loaded.dns_names == ["a.example", "b.example"]
    assert loaded.status is DeviceStatus.NEW
    assert loaded.drift is False

    loaded.status = DeviceStatus.VERIFIED
    loaded.dns_names = [*loaded.dns_names, "c.example"]
    loaded.updated_at = T0 + timedelta(minutes=5)
    session.commit()
    session.expunge_all()
    again = session.get_one(Device, _id(device))
    assert again.status is DeviceStatus.VERIFIED
    assert again.dns_names == ["a.example", "b.example", "c.example"]
    assert again.updated_at == T0 + timedelta(minutes=5)

    session.delete(again)
    session.commit()
    assert session.get(Device, _id(device)) is None


def test_device_mac_unique(session: Session) -> None:
    _add(session, _device())
    session.commit()
    session.add(_device())
    with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"):
        session.flush()


def test_certificate_cycle_and_uniques(session: Session) -> None:
    device = _add(session, _device())
    first = _add(session, _cert(_id(device)))
    second = _add(
        session,
        _cert(
            _id(device),
            serial="0a1c",
            fp="d" * 64,
            previous_certificate_id=first.id,
            reason=IssueReason.RENEWAL,
        ),
    )
    first.status = CertificateStatus.SUPERSEDED
    device.current_certificate_id = second.id
    session.commit()
    session.expunge_all()

    loaded = session.get_one(Device, _id(device))
    current = session.get_one(Certificate, loaded.current_certificate_id)
    assert current.previous_certificate_id == first.id
    assert current.sans == ["phone.example.org", "10.0.0.7"]
    assert current.key_type is KeyType.RSA_2048
    assert current.key_blob == b"\x00sealed\xff"
    assert "sealed" not in repr(current)
    assert "key_blob" not in repr(current)

    active = session.exec(
        select(Certificate).where(Certificate.device_id == _id(device), Certificate.status == CertificateStatus.ACTIVE)
    ).all()
    assert [c.serial for c in active] == ["0a1c"]

    session.add(_cert(_id(device), serial="0a1c", fp="c" * 64))  # serial reused
    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()
    session.add(_cert(_id(device), serial="0a1d", fp="d" * 64))  # fingerprint reused
    with pytest.raises(IntegrityError):
        session.flush()


def test_foreign_keys_enforced(session: Session) -> None:
    session.add(_cert(device_id=424242))
    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()

    device = _add(session, _device())
    device.current_certificate_id = 777
    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()

    device = _add(session, _device())
    _add(session, _cert(_id(device)))
    session.commit()
    session.delete(device)  # still referenced by its certificate
    with pytest.raises(IntegrityError):
        session.flush()


def test_expiry_query_uses_not_after(session: Session) -> None:
    device = _add(session, _device())
    for i in range(4):
        _add(session, _cert(_id(device), serial=f"{i:02x}", fp=f"{i}" * 64, not_after=T0 + timedelta(days=i)))
    session.commit()
    due = session.exec(
        select(Certificate.serial)
        .where(col(Certificate.not_after) <= T0 + timedelta(days=1, hours=1))
        .order_by(col(Certificate.not_after))
    ).all()
    assert due == ["00", "01"]


def test_deployment_defaults_json_and_optimistic_version(engine: Engine, session: Session) -> None:
    device = _add(session, _device())
    cert = _add(session, _cert(_id(device)))
    dep = _add(
        session,
        Deployment(
            device_id=_id(device),
            certificate_id=_id(cert),
            next_attempt_at=T0,
            transcript=[{"step": "contact-me", "status": 204}],
            created_at=T0,
            updated_at=T0,
        ),
    )
    session.commit()
    assert dep.version == 1
    assert dep.state is DeploymentState.QUEUED
    assert dep.attempts == 0
    assert dep.password_item_used is False

    dep.state = DeploymentState.CONTACTING
    dep.profile_used = Pkcs12Profile.MODERN
    dep.check_info = CheckInfo.VERIFIED
    dep.transcript = [*dep.transcript, {"step": "solicited"}]
    session.commit()
    assert dep.version == 2

    due = session.exec(
        select(Deployment).where(Deployment.state == DeploymentState.CONTACTING, col(Deployment.next_attempt_at) <= T0)
    ).all()
    assert [d.id for d in due] == [dep.id]

    # A second process changes the row in between: our stale copy must not overwrite it.
    with session_scope(engine) as other:
        theirs = other.get_one(Deployment, _id(dep))
        theirs.lease_owner = "worker-2"
        theirs.lease_until = T0 + timedelta(minutes=1)
    dep.lease_owner = "worker-1"
    with pytest.raises(StaleDataError):
        session.commit()
    session.rollback()
    fresh = session.get_one(Deployment, _id(dep))
    assert fresh.lease_owner == "worker-2"
    assert fresh.version == 3
    assert fresh.transcript == [{"step": "contact-me", "status": 204}, {"step": "solicited"}]
    assert fresh.profile_used is Pkcs12Profile.MODERN


def test_audit_events_chain_and_checkpoint(session: Session) -> None:
    first = _add(
        session,
        AuditEvent(
            seq=1,
            at=T0,
            actor="system",
            action="device.enrolled",
            subject_type="device",
            subject_id="00:1A:E8:12:34:56",
            details={"policy": "default", "sans": ["a"]},
            prev_hash="0" * 64,
            hash="1" * 64,
        ),
    )
    second = _add(session, AuditEvent(seq=2, at=T0, actor="system", action="x", prev_hash="1" * 64, hash="2" * 64))
    assert _id(second) > _id(first)
    _add(session, AuditCheckpoint(event_id=_id(second), event_hash="2" * 64, signature=b"sig", at=T0))
    session.commit()
    session.expunge_all()
    loaded = session.get_one(AuditEvent, _id(first))
    assert loaded.details == {"policy": "default", "sans": ["a"]}
    assert loaded.at == T0

    session.add(AuditEvent(seq=3, at=T0, actor="a", action="x", prev_hash="2" * 64, hash="2" * 64))
    with pytest.raises(IntegrityError):  # hash reused
        session.flush()
    session.rollback()
    session.add(AuditEvent(seq=2, at=T0, actor="a", action="x", prev_hash="2" * 64, hash="3" * 64))
    with pytest.raises(IntegrityError):  # seq reused
        session.flush()
    session.rollback()
    session.add(AuditHead(id=1, seq=2, hash="2" * 64))
    session.flush()
    session.add(AuditHead(id=1, seq=3, hash="3" * 64))
    with pytest.raises(IntegrityError):  # one head row
        session.flush()
    session.rollback()
    session.add(AuditCheckpoint(event_id=99999, event_hash="9" * 64, signature=b"", at=T0))
    with pytest.raises(IntegrityError):
        session.flush()


def test_profile_memory_unique_pair(session: Session) -> None:
    _add(
        session,
        ProfileMemory(device_type="OpenStage 60", software_version="V3R5", profile=Pkcs12Profile.LEGACY, updated_at=T0),
    )
    _add(
        session,
        ProfileMemory(device_type="OpenStage 60", software_version="V3R6", profile=Pkcs12Profile.MODERN, updated_at=T0),
    )
    session.commit()
    session.add(
        ProfileMemory(device_type="OpenStage 60", software_version="V3R5", profile=Pkcs12Profile.PLAIN, updated_at=T0)
    )
    with pytest.raises(IntegrityError):
        session.flush()


def test_api_token_uniques(session: Session) -> None:
    _add(session, ApiToken(name="ops", role="operator", token_hash="a" * 64, created_at=T0))
    session.commit()
    session.add(ApiToken(name="ops", role="auditor", token_hash="b" * 64, created_at=T0))
    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()
    session.add(ApiToken(name="sec", role="auditor", token_hash="a" * 64, created_at=T0))
    with pytest.raises(IntegrityError):
        session.flush()
    session.rollback()
    assert "a" * 64 not in repr(session.exec(select(ApiToken)).one())


def test_ca_record(session: Session) -> None:
    ca = _add(
        session,
        CARecord(
            role=CARole.ISSUING,
            subject="CN=certmgr issuing",
            serial="01",
            fingerprint_sha256="a" * 64,
            not_before=T0,
            not_after=T0 + timedelta(days=3650),
            cert_pem="pem",
            created_at=T0,
        ),
    )
    session.commit()
    session.expunge_all()
    loaded = session.exec(select(CARecord).where(CARecord.role == CARole.ISSUING)).one()
    assert loaded.id == ca.id
    assert loaded.active is True
    assert loaded.imported is False
    session.add(
        CARecord(
            role=CARole.ROOT,
            subject="CN=dup",
            serial="02",
            fingerprint_sha256="a" * 64,
            not_before=T0,
            not_after=T0,
            cert_pem="pem",
            created_at=T0,
        )
    )
    with pytest.raises(IntegrityError):
        session.flush()


def test_missing_created_at_fails_loudly(session: Session) -> None:
    session.add(Device(mac="00:1A:E8:00:00:09", updated_at=T0))
    with pytest.raises(IntegrityError):
        session.flush()
