"""UTCDateTime and StrEnumType on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError
from sqlmodel import Session, col, select

from certmgr.db.models import ApiToken, Device, DeviceStatus, Enrollment

T0 = datetime(2025, 3, 30, 1, 30, 15, 123456, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


def _device(mac: str = "00:1A:E8:12:34:56", **kw: Any) -> Device:
    return Device(mac=mac, created_at=T0, updated_at=T0, **kw)


def test_aware_in_aware_utc_out(session: Session) -> None:
    local = datetime(2025, 6, 1, 14, 0, 0, 500, tzinfo=PLUS_TWO)
    session.add(_device(last_seen_at=local))
    session.commit()
    session.expunge_all()

    loaded = session.exec(select(Device)).one()
    assert loaded.last_seen_at == local  # same instant
    assert loaded.last_seen_at is not None
    assert loaded.last_seen_at.tzinfo is UTC
    assert loaded.last_seen_at == datetime(2025, 6, 1, 12, 0, 0, 500, tzinfo=UTC)
    assert loaded.created_at == T0
    assert loaded.created_at.tzinfo is UTC  # microseconds kept, UTC attached


def test_naive_datetime_rejected(session: Session) -> None:
    session.add(_device(last_seen_at=datetime(2025, 1, 1)))  # noqa: DTZ001  (the point of the test)
    with pytest.raises(StatementError) as info:
        session.flush()
    assert isinstance(info.value.orig, ValueError)
    assert "naive datetime" in str(info.value.orig)


def test_naive_datetime_rejected_in_queries(session: Session) -> None:
    stmt = select(Device).where(col(Device.last_seen_at) < datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(StatementError):
        session.exec(stmt).all()


def test_range_queries_compare_instants(session: Session) -> None:
    for i in range(3):
        session.add(_device(mac=f"00:1A:E8:00:00:0{i}", last_seen_at=T0 + timedelta(hours=i)))
    session.commit()
    # The cutoff is given in +02:00; it must be compared as an instant, on both backends.
    cutoff = (T0 + timedelta(minutes=90)).astimezone(PLUS_TWO)
    stmt = select(Device.mac).where(col(Device.last_seen_at) < cutoff).order_by(col(Device.mac))
    assert session.exec(stmt).all() == ["00:1A:E8:00:00:00", "00:1A:E8:00:00:01"]


def test_str_enum_columns_return_members(session: Session) -> None:
    session.add(_device(status=DeviceStatus.ENROLLED, enrollment=Enrollment.APPROVED))
    session.commit()
    session.expunge_all()
    loaded = session.exec(select(Device)).one()
    assert loaded.status is DeviceStatus.ENROLLED
    assert loaded.enrollment is Enrollment.APPROVED
    # Stored as the plain value, queryable with members or strings.
    raw = session.connection().execute(text("SELECT status FROM device")).scalar_one()
    assert type(raw) is str
    assert raw == "enrolled"
    assert session.exec(select(Device.id).where(Device.status == "enrolled")).all()
    assert session.exec(select(Device.id).where(Device.status == DeviceStatus.ENROLLED)).all()


def test_plain_string_values_accepted_and_unknown_rejected(session: Session) -> None:
    session.add(Device(mac="00:1A:E8:00:00:01", created_at=T0, updated_at=T0, status="failed"))  # type: ignore[arg-type]
    session.flush()
    session.add(Device(mac="00:1A:E8:00:00:02", created_at=T0, updated_at=T0, status="sleeping"))  # type: ignore[arg-type]
    with pytest.raises(StatementError) as info:
        session.flush()
    assert isinstance(info.value.orig, ValueError)


def test_nullable_timestamps_stay_none(session: Session) -> None:
    session.add(ApiToken(name="ops", role="operator", token_hash="c" * 64, created_at=T0))
    session.commit()
    session.expunge_all()
    token = session.exec(select(ApiToken)).one()
    assert token.revoked_at is None
    assert token.created_at == T0
