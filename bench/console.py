"""Benchmark: the web console's server time at 100,000 phones, against a floor measured in the same run.

Seeds N phones (SQLAlchemy Core ``executemany``): each with a current certificate (expiry spread over a year, a
few hundred within 30 days), a verified or failed deployment and one audit event; 1 % awaiting approval, 1 % with
drift. Then, per backend (SQLite and a throwaway PostgreSQL, :mod:`tests.pg`), for each page:

* **ours** — the page as the browser asks for it: a request through the whole ASGI application in-process
  (session check, queries, Jinja2 rendering, security middleware), p50 of ``--repeat`` requests after a warm-up;
* **floor** — the bare query the page needs, as raw SQL on the same connection pool (for a list: its one keyset
  query; for the phone page: the phone, its certificates, deployments and audit events; for the overview: its
  aggregates), p50 of the same number of runs;

and prints both with the ratio. The overview's renewal waves are computed in the background every 5 minutes
(:class:`certmgr.console.waves.WaveCache`); the time of one cold computation is printed separately.

    .venv/bin/python bench/console.py [--phones 100000] [--repeat 30] [--no-pg]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from bench.common import stop_cleanly_on_signals  # noqa: E402
from certmgr.audit.tokens import Role, create_token  # noqa: E402
from certmgr.clock import ManualClock, SystemClock  # noqa: E402
from certmgr.console.app import create_web_app  # noqa: E402
from certmgr.console.waves import compute_waves  # noqa: E402
from certmgr.db.engine import session_scope  # noqa: E402
from certmgr.db.models import (  # noqa: E402
    AuditEvent,
    AuditHead,
    Certificate,
    Deployment,
    Device,
    Enrollment,
    IssueReason,
)
from certmgr.runtime import Runtime, open_runtime  # noqa: E402
from certmgr.settings import Settings  # noqa: E402

CHUNK = 5000
BASE = "https://bench"


def mac_of(n: int) -> str:
    return f"00:1A:E8:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"


def seed(rt: Runtime, count: int) -> None:
    """``count`` phones with certificates, deployments and one audit event each (see the module docstring)."""
    now = rt.clock.now()
    policy = rt.policies.get("default")
    rnd = random.Random(42)
    with session_scope(rt.engine) as s:  # continue the chain after the CA's own events
        head = s.get(AuditHead, 1)
        seq, prev = (head.seq, head.hash) if head is not None else (0, "0" * 64)
    for lo in range(0, count, CHUNK):
        hi = min(count, lo + CHUNK)
        devices: list[dict[str, Any]] = []
        certs: list[dict[str, Any]] = []
        deps: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for n in range(lo, hi):
            ident = n + 1
            ip = f"10.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}"
            pending, drift, failed = n % 100 == 0, n % 100 == 1, n % 50 == 2
            status = "new" if pending else "drift" if drift else "failed" if failed else "verified"
            devices.append(
                {"mac": mac_of(n), "ip": ip, "e164": f"4989{n:07d}", "hostname": f"desk-{n}.example.net",
                 "dns_names": [], "device_type": "OpenStage 60", "software_version": "V3 R5.21.0",
                 "policy_name": "default",
                 "enrollment": Enrollment.PENDING if pending else Enrollment.APPROVED, "status": status,
                 "drift": drift, "last_seen_at": now - timedelta(minutes=rnd.uniform(0, 60 * 24 * 30)),
                 "last_verified_at": None if pending else now - timedelta(days=1),
                 "created_at": now, "updated_at": now}
            )  # fmt: skip
            not_before = now - timedelta(days=rnd.uniform(5, 402))
            certs.append(
                {"device_id": ident, "serial": format(ident, "x"), "subject": f"CN={ip},O=certmgr",
                 "sans": [f"IP:{ip}"], "key_type": policy.key_type, "not_before": not_before,
                 "not_after": not_before + timedelta(days=397), "fingerprint_sha256": format(ident, "064x"),
                 "cert_pem": "-", "key_blob": b"-", "issuer_fingerprint": "f" * 64, "policy_name": "default",
                 "policy_digest": policy.digest, "status": "active", "reason": IssueReason.ENROLLMENT,
                 "created_at": not_before}
            )  # fmt: skip
            deps.append(
                {"device_id": ident, "certificate_id": ident, "state": "failed" if failed else "verified",
                 "attempts": 1, "profile_index": 0, "password_item_used": False, "verify_failures": 0,
                 "check_probe": None if failed else "passed", "last_error": "phone unreachable" if failed else None,
                 "written_at": None if failed else not_before + timedelta(minutes=2),
                 "verified_at": None if failed else not_before + timedelta(minutes=3),
                 "finished_at": not_before + timedelta(minutes=3), "transcript": [], "version": 1,
                 "created_at": not_before, "updated_at": not_before + timedelta(minutes=3)}
            )  # fmt: skip
            seq += 1
            digest = hashlib.sha256(f"{prev}{seq}".encode()).hexdigest()
            events.append(
                {"seq": seq, "at": now, "actor": "wpi", "action": "device.discovered", "subject_type": "device",
                 "subject_id": mac_of(n), "details": {}, "prev_hash": prev, "hash": digest}
            )  # fmt: skip
            prev = digest
        with session_scope(rt.engine) as s:
            s.execute(insert(Device), devices)
            s.execute(insert(Certificate), certs)  # ids = device ids; a pending phone's is not current
            s.execute(insert(Deployment), [d for i, d in enumerate(deps) if (lo + i) % 100 != 0])
            s.execute(insert(AuditEvent), events)
            s.execute(
                text(
                    "UPDATE device SET current_certificate_id = id "
                    "WHERE id > :lo AND id <= :hi AND enrollment = 'approved'"
                ),
                {"lo": lo, "hi": hi},
            )
    with session_scope(rt.engine) as s:
        s.merge(AuditHead(id=1, seq=seq, hash=prev))
    with rt.engine.connect() as conn:  # fresh statistics, as autovacuum / a periodic ANALYZE provides
        conn.execute(text("ANALYZE"))
        conn.commit()


def p50(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` runs of ``fn`` (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def raw(engine: Engine, *queries: tuple[str, dict[str, Any]]) -> Callable[[], None]:
    """The floor: the statements run as raw SQL, every row fetched."""

    def run() -> None:
        with engine.connect() as conn:
            for sql, params in queries:
                conn.execute(text(sql), params).fetchall()

    return run


def _prefix(dialect: str, column: str, prefix: str) -> tuple[str, dict[str, Any]]:
    if dialect == "postgresql":
        return f"{column} LIKE :p", {"p": prefix + "%"}
    return f"{column} >= :lo AND {column} < :hi", {"lo": prefix, "hi": prefix[:-1] + chr(ord(prefix[-1]) + 1)}


_LIST = (
    "SELECT d.id, d.mac, d.e164, d.ip, d.hostname, d.device_type, d.software_version, d.policy_name, d.enrollment, "
    "d.status, d.drift, d.last_seen_at, c.not_after "
    "FROM device d JOIN certificate c ON c.id = d.current_certificate_id "
)


def floors(rt: Runtime, mac: str, prefix: str) -> dict[str, Callable[[], None]]:
    """The bare queries each page needs."""
    engine = rt.engine
    dialect = engine.dialect.name
    now = rt.clock.now()
    cond, params = _prefix(dialect, "d.mac", prefix)
    order = " ORDER BY c.not_after, d.id LIMIT 51"
    return {
        "overview": raw(
            engine,
            ("SELECT status, count(*) FROM device GROUP BY status", {}),
            (
                "SELECT count(*) FROM device d WHERE d.enrollment = 'approved' AND d.status = 'verified' "
                "AND NOT d.drift AND EXISTS (SELECT 1 FROM deployment p WHERE p.device_id = d.id "
                "AND p.certificate_id = d.current_certificate_id AND p.state = 'verified' "
                "AND p.check_probe = 'passed')",
                {},
            ),
            (
                "SELECT count(*) FROM device d JOIN certificate c ON c.id = d.current_certificate_id "
                "WHERE c.not_after < :b",
                {"b": now + timedelta(weeks=26)},
            ),
        ),
        "phones, first page": raw(engine, (_LIST + order, {})),
        "phones, MAC prefix": raw(engine, (_LIST + f"WHERE {cond}" + order, params)),
        "phones, expiring 30 d": raw(
            engine, (_LIST + "WHERE c.not_after <= :t" + order, {"t": now + timedelta(days=30)})
        ),
        "phone page": raw(
            engine,
            ("SELECT * FROM device WHERE mac = :m", {"m": mac}),
            (
                "SELECT c.* FROM certificate c JOIN device d ON d.id = c.device_id WHERE d.mac = :m "
                "ORDER BY c.id DESC LIMIT 100",
                {"m": mac},
            ),
            (
                "SELECT p.* FROM deployment p JOIN device d ON d.id = p.device_id WHERE d.mac = :m "
                "ORDER BY p.id DESC LIMIT 50",
                {"m": mac},
            ),
            (
                "SELECT * FROM audit_event WHERE subject_type = 'device' AND subject_id = :m "
                "ORDER BY seq DESC LIMIT 200",
                {"m": mac},
            ),
        ),
    }


def run_backend(name: str, url: str | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="certmgr-bench-console-") as tmp:
        root = Path(tmp)
        settings = Settings(
            data_dir=root / "var",
            database_url=url,
            policy_dir=REPO / "policies",
            ca_config_dir=REPO / "ca",
            ca_passphrase="bench-passphrase",
            master_key="bench-master-key-0123456789abcdef0123",
        )
        rt = open_runtime(settings, ManualClock(SystemClock().now()), create_ca=True)
        try:
            t0 = time.perf_counter()
            seed(rt, args.phones)
            print(f"{name}: seeded {args.phones} phones in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            report = compute_waves(rt, rt.clock.now())
            print(
                f"{name}: renewal waves computed cold in {time.perf_counter() - t0:.3f} s "
                f"({report.due_total} renewals due in 7 days; the page then reads the cache)"
            )
            with session_scope(rt.engine) as s:
                _, token = create_token(s, name="bench", role=Role.ADMIN, actor="bench", now=rt.clock.now())
            client = TestClient(create_web_app(rt), base_url=BASE, follow_redirects=False)
            page = client.get("/ui/login")
            nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
            assert nonce is not None
            answer = client.post(
                "/ui/login",
                data={"token": token, "login_nonce": nonce.group(1), "next": "/ui/"},
                headers={"Origin": BASE},
            )
            assert answer.status_code == 303, answer.text
            mac = mac_of(args.phones // 2 + 3)
            prefix = mac_of(args.phones // 3)[:13]  # e.g. 00:1A:E8:00:8 — a few thousand phones
            pages = {
                "overview": "/ui/",
                "phones, first page": "/ui/phones",
                "phones, MAC prefix": f"/ui/phones?q={prefix}",
                "phones, expiring 30 d": "/ui/phones?expiring=30",
                "phone page": f"/ui/phones/{mac}",
            }
            bare = floors(rt, mac, prefix)
            print(f"{'backend':<11} {'page':<23} {'ours p50':>9} {'floor p50':>10} {'ratio':>6}")
            for label, path in pages.items():

                def get(path: str = path) -> None:
                    response = client.get(path)
                    assert response.status_code == 200, (path, response.status_code)

                ours = p50(get, args.repeat)
                floor = p50(bare[label], args.repeat)
                print(f"{name:<11} {label:<23} {ours * 1000:7.1f} ms {floor * 1000:8.1f} ms {ours / floor:6.1f}")
            client.close()
        finally:
            rt.close()


def main() -> None:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    run_backend("sqlite", None, args)
    if not args.no_pg:
        from tests.pg import PostgresServer

        with PostgresServer() as pg:
            run_backend("postgresql", pg.create_database(), args)


if __name__ == "__main__":
    main()
