"""The renewal scan's first pass (the date and trigger test run in the database) on SQLite and PostgreSQL: it drops
only rows the full check would drop too, so :func:`~certmgr.renewal.service.plan_fleet` decides exactly as it
would if every row took the full check — over a fleet with every trigger and every date situation."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text
from sqlmodel import Session, col

from certmgr.audit.log import append_event
from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import CARecord, CARole, Certificate, CertificateStatus, Device, Enrollment, IssueReason
from certmgr.renewal import service
from certmgr.renewal.planner import RenewalPlan
from certmgr.renewal.service import RENEWAL_REQUESTED, plan_fleet, scan_current
from certmgr.renewal.triggers import Reason, Trigger
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
    """The reference first pass: every row takes the full check, most urgent first (by expiry, then certificate)."""
    rows = [r for part in scan_current(session, batch) for r in part]
    rows.sort(key=lambda r: (r.not_after, r.cert_id))
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
    with session_scope(runtime.engine) as s:
        expiry = dict(
            s.execute(
                select(col(Device.id), col(Certificate.not_after)).join(
                    Certificate, col(Certificate.id) == col(Device.current_certificate_id)
                )
            ).all()
        )
    for batch, run in runs.items():
        assert sum(read for read, _ids in run) == approved, batch
        ids = [i for _r, part in run for i in part]
        assert sorted(ids) == expected, batch
        assert ids == sorted(ids, key=lambda i: (expiry[i], i)), batch  # most urgent first (certificate id = device id)


_KINDS = ["plain", "drift", "revoked", "moved", "dns-missing", "dns-kept", "in-progress", "manual", "rotated"]


def _wave(rt: Runtime, rnd: random.Random, n: int, expired_hours: float, trigger_weight: float) -> None:
    """``n`` approved phones, most due at once (expiring within a week, those of the first ``expired_hours`` of the
    range already expired), with immediate triggers at random expiries (each kind ``trigger_weight`` % of the
    phones), phones whose renewal is under way, operator requests and renewals in the last hour."""
    now = rt.clock.now()
    weights = [70, *[trigger_weight] * 5, 8, trigger_weight, 5]
    kinds = rnd.choices(_KINDS, weights, k=n)
    _fleet(rt, rnd, [(k, timedelta(hours=rnd.uniform(-expired_hours, 24 * 7))) for k in kinds], now)


def _fleet(rt: Runtime, rnd: random.Random, specs: Sequence[tuple[str, timedelta]], now: datetime) -> None:
    """One approved phone per (kind, expiry from ``now``) of ``specs`` (kinds: :data:`_KINDS`)."""
    with session_scope(rt.engine) as s:
        issuing = s.execute(
            select(col(CARecord.fingerprint_sha256)).where(col(CARecord.role) == CARole.ISSUING.value)
        ).scalar_one()
    policy = rt.policies.get("default")
    devices, certs = [], []
    kinds = [kind for kind, _ in specs]
    for i, (kind, expires_in) in enumerate(specs):
        ip, mac = f"10.8.{i // 250}.{i % 250 + 1}", f"00:1A:E8:66:{i // 256:02X}:{i % 256:02X}"
        not_after = now + expires_in
        dns = ["p.example.net"] if kind in {"dns-missing", "dns-kept"} else []
        devices.append(
            {"mac": mac, "ip": ip, "dns_names": dns, "policy_name": "default", "enrollment": Enrollment.APPROVED,
             "status": "verified", "drift": kind == "drift", "device_type": "OpenStage 60", "created_at": now,
             "updated_at": now}
        )  # fmt: skip
        sans = [f"IP:{ip}" if kind != "moved" else "IP:10.255.0.9"] + (
            ["DNS:p.example.net"] if kind == "dns-kept" else []
        )
        certs.append(
            {"device_id": i + 1, "serial": format(0xB000 + i, "x"), "subject": f"CN={ip},O=certmgr", "sans": sans,
             "key_type": policy.key_type, "not_before": not_after - timedelta(days=30), "not_after": not_after,
             "fingerprint_sha256": format(i + 1, "064x"), "cert_pem": "-", "key_blob": b"-",
             "issuer_fingerprint": issuing if kind != "rotated" else "2" * 64, "policy_name": "default",
             "policy_digest": policy.digest, "status": "active", "revoked_at": now if kind == "revoked" else None,
             "reason": IssueReason.ENROLLMENT, "created_at": not_after - timedelta(days=31)}
        )  # fmt: skip
    with session_scope(rt.engine) as s:
        s.execute(insert(Device), devices)
        s.execute(insert(Certificate), certs)
        s.execute(text("UPDATE device SET current_certificate_id = id"))
        for i, kind in enumerate(kinds):
            if kind == "in-progress" or (kind == "plain" and rnd.random() < 0.1):  # a successor, some last hour
                successor = Certificate(
                    device_id=i + 1, serial=format(0xC000 + i, "x"), subject="CN=x", sans=[], key_type=policy.key_type,
                    not_before=now, not_after=now + timedelta(days=30), fingerprint_sha256=format(0x10000 + i, "064x"),
                    cert_pem="-", key_blob=b"-", issuer_fingerprint=issuing, policy_name="default",
                    policy_digest=policy.digest,
                    status=CertificateStatus.PENDING if kind == "in-progress" else CertificateStatus.SUPERSEDED,
                    reason=IssueReason.RENEWAL, created_at=now - timedelta(minutes=rnd.uniform(1, 50)),
                )  # fmt: skip
                s.add(successor)
                s.flush()
                if kind == "in-progress":
                    s.execute(
                        text(
                            "INSERT INTO deployment (device_id, certificate_id, state, attempts, profile_index, "
                            "password_item_used, verify_failures, transcript, version, created_at, updated_at) "
                            "VALUES (:d, :c, 'queued', 0, 0, false, 0, '[]', 1, :t, :t)"
                        ),
                        {"d": i + 1, "c": successor.id, "t": now},
                    )
            if kind == "manual":
                append_event(s, at=now, actor="token:op", action=RENEWAL_REQUESTED, subject_type="device",
                             subject_id=str(devices[i]["mac"]), details={})  # fmt: skip


@pytest.mark.parametrize("seed", [*range(10), 14, 39])  # 14, 39: expired phones under way fill a chunk
def test_the_early_stop_chooses_what_deciding_every_row_chooses(
    settings: Settings, clock: ManualClock, tmp_path: Path, db_url: str, seed: int
) -> None:
    """A wave — most phones due at once, immediate triggers at any expiry, renewals under way, part of the hourly
    budget used: a run that decides in urgency order and stops early picks exactly the candidates (and their plans)
    of a run that decides every row, for random fleets, per-run limits and batch sizes."""
    rnd = random.Random(seed)
    policies = write_policy(tmp_path / "policies", validity="30d", renew='renew_before = "10d"', jitter="0s")
    update = {
        "policy_dir": policies,
        "database_url": db_url,
        "renewal_scan_batch": rnd.choice([5, 13, 40]),
        "renewal_max_per_run": rnd.choice([3, 6, 10]),
        "renewal_max_per_hour": rnd.choice([15, 30, 200]),
        "renewal_horizon_hours": 48,
    }
    rt = open_runtime(settings.model_copy(update=update), clock, create_ca=True)
    try:
        # many expired candidates or fewer than a run; many immediate triggers or one or two of each kind
        _wave(rt, rnd, 240, expired_hours=30 if seed % 2 else 2, trigger_weight=3 if seed % 4 < 2 else 0.6)
        stopped_early = 0
        for step in (timedelta(0), timedelta(hours=1), timedelta(hours=20)):
            clock.advance(step)
            now = clock.now()
            fast, fast_report = plan_fleet(rt, now)
            full, full_report = plan_fleet(rt, now, early_stop=False)
            assert fast == full, (seed, step)
            assert len(full) == rt.settings.renewal_max_per_run  # more than one run's worth is due
            assert fast_report.scanned == full_report.scanned
            stopped_early += fast_report.planned < full_report.planned
        assert stopped_early  # the early stop was taken, not only the full path
    finally:
        rt.close()


def test_a_choice_at_a_frontier_takes_only_plans_expiring_before_it(clock: ManualClock) -> None:
    """With an early stop, the choice counts only the plans of certificates expiring before the last row decided:
    every more urgent phone has been decided for those, not for the later ones (decided early as suspects)."""
    now = clock.now() + timedelta(minutes=30)  # late enough in the hour that the spread's stagger is past
    plans = [
        RenewalPlan(cert_id=i, due_at=now, reason="overdue", in_window=True, not_after=now + timedelta(days=d),
                    latest=now + timedelta(days=d - 1), windows=())
        for i, d in ((1, 2), (2, 3), (3, 6))
    ]  # fmt: skip
    kept = {
        int(p.cert_id): service.Candidate(int(p.cert_id), f"m{p.cert_id}", int(p.cert_id), "s", p.not_after,
                                     (Reason(Trigger.RENEWAL_DUE, "due"),), p, False)
        for p in plans
    }  # fmt: skip
    everything, _ = service._choose(kept, plans, 0, 100, now, None)
    before, _ = service._choose(kept, plans, 0, 100, now, now + timedelta(days=5))
    assert [c.cert_id for c in everything] == [1, 2, 3]
    assert [c.cert_id for c in before] == [1, 2]
