"""The reconciler checks a slice of the fleet with a fixed number of statements, not one query per phone.

Profiled under ``bench/deploy.py``, the reconciler asked the database about each phone of its slice on every
dispatcher tick (one certificates query per device): a fifth of the service's CPU per delivered phone at 1,000
phones, growing with the fleet. The slice is now checked with one query (:func:`~certmgr.deploy.reconcile._needing`).
"""

from __future__ import annotations

from pathlib import Path

from certmgr.clock import ManualClock, SystemClock
from certmgr.deploy.reconcile import Reconciler
from certmgr.settings import Settings
from tests.integration.renewal_support import enroll_verified, open_test_runtime, report
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
