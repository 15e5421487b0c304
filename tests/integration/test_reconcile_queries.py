"""The reconciler checks a slice of the fleet with a fixed number of statements, not one query per phone; the phones
the hub marked go first, in the order they were marked.

Profiled under ``bench/deploy.py``, the reconciler asked the database about each phone of its slice on every
dispatcher tick (one certificates query per device): a fifth of the service's CPU per delivered phone at 1,000
phones, growing with the fleet. The slice is now checked with one query (:func:`~certmgr.deploy.reconcile._needing`).
"""

from __future__ import annotations

from pathlib import Path

from sqlmodel import col, select

from certmgr.clock import ManualClock, SystemClock
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, Device
from certmgr.deploy.reconcile import Reconciler
from certmgr.runtime import Runtime
from certmgr.settings import Settings
from tests.integration.renewal_support import enroll_verified, mac_of, open_test_runtime, report
from tests.integration.sql_support import statements

PHONES = 40


def test_a_sweep_over_a_covered_fleet_costs_the_same_few_statements_at_any_size(
    settings: Settings, tmp_path: Path, db_url: str
) -> None:
    clock = ManualClock(SystemClock().now())
    rt = open_test_runtime(settings, clock, tmp_path, database_url=db_url, reconcile_scan_batch=500)
    try:
        enroll_verified(rt, range(PHONES))
        with statements(rt.engine) as seen:
            assert Reconciler(rt).run(clock.now()) == 0
        selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) <= 3, f"{len(selects)} SELECTs for {PHONES} covered phones"

        report(rt, PHONES)  # one new phone among them: found and issued in the same kind of sweep
        with statements(rt.engine) as seen:
            assert Reconciler(rt).run(clock.now()) == 1
        assert sum(1 for s in seen if "FROM certificate" in s and "certificate.device_id IN" in s) == 1
    finally:
        rt.close()


def test_marked_phones_are_looked_at_in_the_order_they_were_marked(
    settings: Settings, tmp_path: Path, db_url: str
) -> None:
    """The phones the hub saw are looked at first, at most ``reconcile_scan_batch`` a call, in the order they were
    marked (they were a set: which one a call took depended on the string hash seed, and the year bench's moved phone
    was sometimes reissued by a renewal run instead)."""
    clock = ManualClock(SystemClock().now())
    rt = open_test_runtime(settings, clock, tmp_path, database_url=db_url, reconcile_scan_batch=1,
                           reconcile_issue_batch=1)  # fmt: skip
    try:
        enroll_verified(rt, range(PHONES))
        order = [PHONES + 2, PHONES, PHONES + 4, PHONES + 1, PHONES + 3]
        for n in order:
            report(rt, n)  # a new phone: needs its first certificate
        reconciler = Reconciler(rt)
        for n in order:
            reconciler.mark(mac_of(n))
        issued: list[str] = []
        for left in range(len(order) - 1, -1, -1):
            assert reconciler.run(clock.now()) == 1
            assert reconciler.marked == left
            issued.append(newest_certificate_mac(rt))
        assert issued == [mac_of(n) for n in order]
    finally:
        rt.close()


def newest_certificate_mac(rt: Runtime) -> str:
    with session_scope(rt.engine) as s:
        mac: str = s.execute(
            select(col(Device.mac))
            .join(Certificate, col(Certificate.device_id) == col(Device.id))
            .order_by(col(Certificate.id).desc())
            .limit(1)
        ).scalar_one()
        return mac
