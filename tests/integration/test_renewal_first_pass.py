"""The renewal scan's first pass (the date and trigger test run in the database) on SQLite and PostgreSQL: it drops
only rows the full check would drop too, so :func:`~certmgr.renewal.service.plan_fleet` decides exactly as it
would if every row took the full check — over a fleet with every trigger and every date situation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlmodel import Session, col

from certmgr.audit.log import append_event
from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import CARecord, CARole, Certificate, Device, Enrollment, IssueReason
from certmgr.renewal import service
from certmgr.renewal.service import RENEWAL_REQUESTED, plan_fleet, scan_current
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from tests.integration.renewal_support import write_policy

N = 400


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path, db_url: str) -> Iterator[Runtime]:
    policies = write_policy(tmp_path / "policies", validity="30d", renew='renew_before = "10d"', jitter="6h")
    (policies / "50-lab.toml").write_text(
        (policies / "default.toml")
        .read_text()
        .replace('name = "default"', 'name = "lab"')
        .replace('renew_before = "10d"', "renew_at_fraction = 0.5")
        + '\n[match]\ndevice_types = ["OpenStage 40"]\n'
    )
    update = {"policy_dir": policies, "database_url": db_url, "renewal_scan_batch": 37, "renewal_horizon_hours": 48}
    rt = open_runtime(settings.model_copy(update=update), clock, create_ca=True)
    try:
        yield rt
    finally:
        rt.close()


def _seed(rt: Runtime) -> None:
    """N approved phones, each with a current certificate, in every situation the triggers and dates know."""
    now = rt.clock.now()
    rnd = random.Random(7)
    with session_scope(rt.engine) as s:
        issuing = s.execute(
            select(col(CARecord.fingerprint_sha256)).where(col(CARecord.role) == CARole.ISSUING.value)
        ).scalar_one()
    policies = {name: rt.policies.get(name) for name in ("default", "lab")}
    devices, certs = [], []
    for n in range(N):
        ip = f"10.9.{n // 250}.{n % 250 + 1}"
        mac = f"00:1A:E8:77:{n // 256:02X}:{n % 256:02X}"
        kind = n % 20
        policy = policies["lab" if n % 3 == 0 else "default"]
        policy_name: str | None = policy.name
        if kind == 1:
            policy_name = None  # chosen by selection
        elif kind == 2:
            policy_name = "gone"  # a policy removed since
        devices.append(
            {"mac": mac, "ip": ip, "dns_names": ["phone.example.net"] if kind == 3 else [], "policy_name": policy_name,
             "enrollment": Enrollment.APPROVED if kind != 4 else Enrollment.PENDING, "status": "verified",
             "drift": kind == 5, "device_type": "OpenStage 40" if n % 3 == 0 else "OpenStage 60",
             "created_at": now, "updated_at": now}
        )  # fmt: skip
        age = rnd.uniform(-1, 32)  # some not yet valid, most within 30 days, some expired
        not_before = now - timedelta(days=age)
        not_after = not_before + (timedelta(days=30) if kind != 6 else timedelta(seconds=0))  # 6: inconsistent
        certs.append(
            {"device_id": n + 1, "serial": format(0xA000 + n, "x"), "subject": f"CN={ip},O=certmgr",
             "sans": [f"IP:{ip}"] if kind != 7 else ["IP:10.255.0.1"],
             "key_type": policy.key_type, "not_before": not_before, "not_after": not_after,
             "fingerprint_sha256": format(n + 1, "064x"), "cert_pem": "-", "key_blob": b"-",
             "issuer_fingerprint": issuing if kind != 8 else "0" * 64,
             "policy_name": "default" if kind == 9 else ("lab" if n % 3 == 0 else "default"),
             "policy_digest": policy.digest if kind != 10 else "f" * 64,
             "status": "active" if kind != 11 else "revoked",
             "revoked_at": now if kind == 12 else None,
             "reason": IssueReason.ENROLLMENT, "created_at": not_before - timedelta(days=1)}
        )  # fmt: skip
    with session_scope(rt.engine) as s:
        s.execute(insert(Device), devices)
        s.execute(insert(Certificate), certs)
        s.execute(text("UPDATE device SET current_certificate_id = id"))
        for n in range(13, N, 40):  # operator requests
            append_event(
                s,
                at=now,
                actor="token:op",
                action=RENEWAL_REQUESTED,
                subject_type="device",
                subject_id=f"00:1A:E8:77:{n // 256:02X}:{n % 256:02X}",
                details={},
            )


def _every_row(
    session: Session, _runtime: Runtime, _horizon: object, _issuing: object, _manual: object, batch: int
) -> Iterator[tuple[int, list[int]]]:
    """The reference first pass: every row takes the full check."""
    for rows in scan_current(session, batch):
        yield len(rows), [r.device_id for r in rows]


def test_first_pass_changes_no_decision(runtime: Runtime, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(runtime)
    for step in (timedelta(0), timedelta(days=3), timedelta(days=11)):
        clock.advance(step)
        now = clock.now()
        fast_chosen, fast_report = plan_fleet(runtime, now)
        with monkeypatch.context() as m:
            m.setattr(service, "scan_first_pass", _every_row)
            ref_chosen, ref_report = plan_fleet(runtime, now)
        assert fast_chosen == ref_chosen
        assert fast_report == ref_report
        assert fast_report.scanned == N - N // 20  # the pending phones are not scanned
        assert fast_report.due > 0


def test_first_pass_keeps_only_a_few_rows(runtime: Runtime) -> None:
    _seed(runtime)
    now = runtime.clock.now()
    with session_scope(runtime.engine) as s:
        issuing = s.execute(
            select(col(CARecord.fingerprint_sha256)).where(col(CARecord.role) == CARole.ISSUING.value)
        ).scalar_one()
        kept = [
            ids for _read, ids in service.scan_first_pass(s, runtime, now + timedelta(hours=48), issuing, {}, batch=50)
        ]
    flat = [i for ids in kept for i in ids]
    assert len(flat) == len(set(flat))
    suspicious = {
        n + 1 for n in range(N) if n % 20 in {1, 2, 3, 5, 6, 7, 8, 10, 11, 12} or (n % 20 == 9 and n % 3 == 0)
    }
    assert suspicious <= set(flat)  # anything but the date may fire: always the full check
    plain = {n + 1 for n in range(N) if n % 20 in {0, 13, 14, 15, 16, 17, 18, 19} and n not in range(13, N, 40)}
    dropped = plain - set(flat)
    assert len(dropped) > len(plain) // 2  # most plain certificates are not due within two days
    assert 4 + 1 not in flat  # a phone pending approval is not scanned at all


def test_load_current_reads_exactly_the_rows_asked_for(runtime: Runtime) -> None:
    """The second pass reads a dense id set as a range and a sparse one as a list: both give exactly those rows."""
    _seed(runtime)
    with session_scope(runtime.engine) as s:
        with_cert = set(
            s.execute(select(col(Device.id)).where(col(Device.current_certificate_id).is_not(None))).scalars()
        )
        dense = [i for i in range(1, 201) if i != 5 and i % 50 != 0]  # 5: pending approval, never scanned
        sparse = dense[::7]
        dense_rows = service.load_current(s, dense)
        sparse_rows = service.load_current(s, sparse)
    assert [r.device_id for r in dense_rows] == sorted(set(dense) & with_cert)
    assert sparse_rows == [r for r in dense_rows if r.device_id in set(sparse)]
    # Rows in the range that were not asked for (they have a certificate too) are left out.
    assert {5, 50} <= with_cert


def test_first_pass_batches_and_operator_requests(runtime: Runtime) -> None:
    """Any keyset batch size reads every approved row once and keeps the same ids; a phone with an operator's
    request is kept whatever its dates, in whichever batch its id falls."""
    _seed(runtime)
    now = runtime.clock.now()
    requested = {f"00:1A:E8:77:{n // 256:02X}:{n % 256:02X}": now for n in (0, 14, 199, 399)}  # plain rows
    with session_scope(runtime.engine) as s:  # a plain phone whose certificate has no lifetime, starting in 10 days
        later = now + timedelta(days=10)
        s.execute(text("UPDATE certificate SET not_before = :t, not_after = :t WHERE id = 21"), {"t": later})
    with session_scope(runtime.engine) as s:
        issuing = s.execute(
            select(col(CARecord.fingerprint_sha256)).where(col(CARecord.role) == CARole.ISSUING.value)
        ).scalar_one()
        horizon = now + timedelta(hours=48)
        without = [i for _r, ids in service.scan_first_pass(s, runtime, horizon, issuing, {}, batch=1000) for i in ids]
        runs = {
            batch: list(service.scan_first_pass(s, runtime, horizon, issuing, requested, batch=batch))
            for batch in (1, 37, 50, 1000)
        }
    approved = N - len(range(4, N, 20))
    expected = sorted(set(without) | {1, 15, 200, 400})
    assert not {1, 15, 200, 400} <= set(without)  # some of them would have been dropped without the request
    assert 21 in without  # inconsistent dates: the full check reports them
    for batch, run in runs.items():
        assert sum(read for read, _ids in run) == approved, batch
        assert [i for _r, ids in run for i in ids] == expected, batch
