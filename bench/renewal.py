"""Benchmark: the renewal planning scan over a large fleet, against a floor measured in the same run, and the
time to issue the due renewals.

Seeds N phones with a current certificate each (SQLAlchemy Core ``executemany``, no ORM; certificates spread over
a year of issuance, so a few hundred fall into the spread horizon) on SQLite and on a throwaway PostgreSQL
(:mod:`tests.pg`). Then, per backend and fleet size:

* **floor** — the database visiting every approved phone's current certificate once and returning one count
  (:data:`bench.common.FLOOR_SCAN_SQL`): what any scan of the fleet costs at least;
* **orm scan** — the same fleet read as full planner rows through SQLAlchemy
  (:func:`certmgr.renewal.service.scan_current`): the previous floor, for comparison;
* **plan** — :func:`certmgr.renewal.service.plan_fleet`: the first pass (the date and trigger test in the
  database, only the kept ids returned), the full planner rows of the few phones left, reissue triggers, the planner and
  :func:`~certmgr.renewal.planner.spread`; ratio = plan / floor;
* peak Python memory of each (tracemalloc, in a separate pass so it does not slow the timed one), at two fleet
  sizes to show it stays flat;
* **issue** — :func:`certmgr.renewal.service.reconcile_renewals` for a sample of due certificates (key
  generation, signing, sealing, one transaction per phone with the deployment), RSA-2048 vs EC-P256.

    .venv/bin/python bench/renewal.py [--fleet 100000] [--small 20000] [--due 1000] [--rsa-due 200] [--no-pg]
                                      [--all-due]

``--all-due`` makes every certificate of the planned fleet due at once (a mass enrollment a year ago, or a CA
rotation): the first pass can then drop nothing and the planner decides every row.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, text
from sqlmodel import col

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import floor_scan as common_floor_scan  # noqa: E402
from bench.common import stop_cleanly_on_signals  # noqa: E402
from certmgr.clock import ManualClock, SystemClock  # noqa: E402
from certmgr.db.engine import session_scope  # noqa: E402
from certmgr.db.models import CARecord, CARole, Certificate, Device, Enrollment, IssueReason  # noqa: E402
from certmgr.policy.windows import MaintenanceWindow  # noqa: E402
from certmgr.renewal.planner import RenewalInput, plan_renewal, spread  # noqa: E402
from certmgr.renewal.service import (  # noqa: E402
    plan_fleet,
    reconcile_renewals,
    scan_current,
)
from certmgr.runtime import Runtime, open_runtime  # noqa: E402
from certmgr.settings import Settings  # noqa: E402

CHUNK = 5000


def _policy_dir(root: Path, key: str) -> Path:
    out = root / f"policies-{key}"
    out.mkdir(parents=True, exist_ok=True)
    text_ = (REPO / "policies" / "default.toml").read_text().replace('type = "rsa-2048"', f'type = "{key}"')
    (out / "default.toml").write_text(text_)
    return out


def _runtime(root: Path, url: str | None, key: str, clock: ManualClock, **extra: Any) -> Runtime:
    settings = Settings(
        data_dir=root / "var",
        database_url=url,
        policy_dir=_policy_dir(root, key),
        ca_config_dir=REPO / "ca",
        ca_passphrase="bench-passphrase",
        master_key="bench-master-key-0123456789abcdef0123",
        **extra,
    )
    return open_runtime(settings, clock, create_ca=True)


def seed(rt: Runtime, start: int, stop: int, due: int) -> None:
    """Phones ``start..stop-1``, each with a current certificate; the first ``due`` of the whole fleet are due."""
    now = rt.clock.now()
    policy = rt.policies.get("default")
    with session_scope(rt.engine) as s:
        issuer_fp = s.execute(
            select(col(CARecord.fingerprint_sha256)).where(
                col(CARecord.active).is_(True), col(CARecord.role) == CARole.ISSUING.value
            )
        ).scalar_one()
    rnd = random.Random(start)
    for lo in range(start, stop, CHUNK):
        hi = min(stop, lo + CHUNK)
        devices, certs = [], []
        for n in range(lo, hi):
            ip = f"10.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}"
            mac = f"00:1A:E8:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"
            devices.append(
                {"mac": mac, "ip": ip, "dns_names": [], "policy_name": "default", "enrollment": Enrollment.APPROVED,
                 "status": "verified", "drift": False, "created_at": now, "updated_at": now}
            )  # fmt: skip
            # The first ``due`` expire in 5 days (due); the rest were issued over the last year.
            age = 392.0 if n < due else rnd.uniform(0, 366)
            not_before = now - timedelta(days=age)
            certs.append(
                {"device_id": n + 1, "serial": format(n + 1, "x"), "subject": f"CN={ip},O=certmgr",
                 "sans": [f"IP:{ip}"],
                 "key_type": policy.key_type, "not_before": not_before, "not_after": not_before + timedelta(days=397),
                 "fingerprint_sha256": format(n + 1, "064x"), "cert_pem": "-", "key_blob": b"-",
                 "issuer_fingerprint": issuer_fp, "policy_name": "default", "policy_digest": policy.digest,
                 "status": "active", "reason": IssueReason.ENROLLMENT, "created_at": not_before}
            )  # fmt: skip
        with session_scope(rt.engine) as s:
            s.execute(insert(Device), devices)
            s.execute(insert(Certificate), certs)
            s.execute(
                text("UPDATE device SET current_certificate_id = id WHERE id > :lo AND id <= :hi"),
                {"lo": lo, "hi": hi},
            )
    # Fresh statistics, as autovacuum / a periodic ANALYZE would provide in production: without them PostgreSQL
    # plans the keyset join for an empty table (a full scan per batch).
    with rt.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _cpu(fn: Callable[[], Any]) -> float:
    """CPU seconds of this process spent in ``fn`` (the database's too on SQLite, which runs in-process)."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _peak(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def orm_scan(rt: Runtime) -> int:
    rows = 0
    with session_scope(rt.engine) as s:
        for batch in scan_current(s, rt.settings.renewal_scan_batch):
            rows += len(batch)
    return rows


def floor_scan(rt: Runtime) -> int:
    """The floor: the database visits every row the first pass runs over, once (:data:`bench.common.FLOOR_SCAN_SQL`)."""
    return common_floor_scan(rt.engine)


def measure(rt: Runtime, label: str) -> None:
    now = rt.clock.now()
    floor_scan(rt)  # warm the caches once
    plan_fleet(rt, now)
    floor_s, rows = min(_timed(lambda: floor_scan(rt)) for _ in range(3))
    orm_s, _ = _timed(lambda: orm_scan(rt))
    plan_s, (chosen, report) = min((_timed(lambda: plan_fleet(rt, now)) for _ in range(3)), key=lambda t: t[0])
    plan_cpu = min(_cpu(lambda: plan_fleet(rt, now)) for _ in range(3))  # this process alone: for a shared machine
    floor_mb = _peak(lambda: floor_scan(rt))
    plan_mb = _peak(lambda: plan_fleet(rt, now))
    print(
        f"{label:<28} rows {rows:>7}  floor {floor_s:6.3f} s  plan {plan_s:6.3f} s  ratio {plan_s / floor_s:4.2f}  "
        f"(orm scan {orm_s:6.3f} s)  peak floor {floor_mb:6.1f} MiB  plan {plan_mb:6.1f} MiB  "
        f"kept plans {report.planned}  due {len(chosen)}  plan CPU {plan_cpu:6.3f} s"
    )


def issue_sample(root: Path, url_factory: Callable[[], str | None], key: str, due: int, label: str) -> None:
    clock = ManualClock(SystemClock().now())
    rt = _runtime(root / f"issue-{key}", url_factory(), key, clock, renewal_max_per_run=due,
                  renewal_max_per_hour=10 * due)  # fmt: skip
    try:
        seed(rt, 0, due, due)
        rt.issuer()
        seconds, report = _timed(lambda: reconcile_renewals(rt, clock.now()))
        n = len(report.issued)
        print(f"{label:<28} issued {n:>5} due renewals in {seconds:7.2f} s  ({n / seconds:7.1f}/s, {key})")
    finally:
        rt.close()


def windowed_planning(n: int) -> None:
    """The pure planner alone (no database) on ``n`` overdue certificates at noon, outside a nightly window 22-05
    Europe/Berlin, so every plan searches for the next opening; floor: the same plans with no window at all."""
    now = SystemClock().now().replace(hour=11, minute=0, second=0, microsecond=0)
    nightly = (MaintenanceWindow.parse("*", "22-05", "Europe/Berlin"),)

    def inputs(windows: tuple[MaintenanceWindow, ...]) -> list[RenewalInput]:
        born = [now - timedelta(days=380 + i % 7) for i in range(n)]
        return [
            RenewalInput(cert_id=i, device_key=format(i, "012x"), not_before=b, not_after=b + timedelta(days=397),
                         renew_before=timedelta(days=30), jitter=timedelta(hours=6), windows=windows)
            for i, b in enumerate(born)
        ]  # fmt: skip

    def plan(batch: list[RenewalInput]) -> None:
        spread([plan_renewal(i, now) for i in batch], 2000, now)

    with_window, without = inputs(nightly), inputs(())
    windowed_s = min(_timed(lambda: plan(with_window))[0] for _ in range(3))
    floor_s = min(_timed(lambda: plan(without))[0] for _ in range(3))
    print(
        f"planner alone, {n} overdue outside a nightly window: {windowed_s:.3f} s; floor (no window) {floor_s:.3f} s; "
        f"ratio {windowed_s / floor_s:.2f}"
    )


def run_backend(name: str, url_factory: Callable[[], str | None], args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="certmgr-bench-") as tmp:
        root = Path(tmp)
        clock = ManualClock(SystemClock().now())
        rt = _runtime(root / "plan", url_factory(), "rsa-2048", clock)
        try:
            due = args.fleet if args.all_due else args.due
            t, _ = _timed(lambda: seed(rt, 0, args.small, due))
            print(f"{name}: seeded {args.small} phones in {t:.1f} s")
            measure(rt, f"{name} plan {args.small}")
            t, _ = _timed(lambda: seed(rt, args.small, args.fleet, due))
            print(f"{name}: seeded {args.fleet - args.small} more in {t:.1f} s")
            measure(rt, f"{name} plan {args.fleet}")
        finally:
            rt.close()
        issue_sample(root, url_factory, "ec-p256", args.due, f"{name} issue EC-P256")
        issue_sample(root, url_factory, "rsa-2048", args.rsa_due, f"{name} issue RSA-2048")


def main() -> None:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--rsa-due", type=int, default=200)
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument(
        "--all-due", action="store_true", help="every certificate of the planned fleet due at once (mass enrollment)"
    )
    args = parser.parse_args()
    windowed_planning(args.small)
    run_backend("sqlite", lambda: None, args)
    if not args.no_pg:
        from tests.pg import PostgresServer

        with PostgresServer() as pg:
            run_backend("postgresql", pg.create_database, args)


if __name__ == "__main__":
    main()
