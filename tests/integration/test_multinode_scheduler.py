"""Two ``certmgr serve --role scheduler`` processes against one throwaway PostgreSQL: with many phones due,
every renewal is issued once and every deployment is claimed once per attempt (advisory-lock leadership,
``FOR UPDATE SKIP LOCKED`` claims, device row locks). Both processes also dispatch (``dispatch_role``).

Once the renewals are out, the processes keep running while two *sentinel* phones report one after the other;
each must be enrolled and its deployment claimed (once) before the next: proof that further dispatcher rounds
(reconcile, claims) ran after the renewals — and still nothing was issued or claimed twice. This replaces a
three-second sleep "to let both nodes run a few more ticks", which proved nothing about what ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from certmgr.audit.log import verify_log
from certmgr.clock import ManualClock, SystemClock
from certmgr.db.engine import session_scope
from certmgr.db.models import AuditEvent, Certificate, Deployment, Device, IssueReason
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from tests.integration.fake_phone import address_block, wait_for
from tests.integration.renewal_support import enroll_verified, mac_of, report, write_policy
from tests.pg import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

N_EXPIRED = 20
N_DUE = 20
SENTINELS = 2


def test_two_scheduler_processes_issue_and_claim_once(
    settings: Settings, tmp_path: Path, pg_server: PostgresServer
) -> None:
    url = pg_server.create_database()
    block = address_block()
    policies = write_policy(tmp_path / "policies")
    custom = settings.model_copy(update={"database_url": url, "policy_dir": policies})
    real_now = SystemClock().now()
    clock = ManualClock(real_now - timedelta(days=40))
    rt = open_runtime(custom, clock, create_ca=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:

        def ip(n: int) -> str:
            return f"127.0.{block}.{n + 1}"

        enroll_verified(rt, range(N_EXPIRED), ip)  # 30d certificates issued 40 days ago: expired
        clock.advance(timedelta(days=15))
        enroll_verified(rt, range(N_EXPIRED, N_EXPIRED + N_DUE), ip)  # expire in 5 days: due (renew 10d before)
        seeded = clock.now()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
        env.update(
            {
                "CERTMGR_DATA_DIR": str(custom.data_dir),
                "CERTMGR_DATABASE_URL": url,
                "CERTMGR_POLICY_DIR": str(policies),
                "CERTMGR_CA_CONFIG_DIR": str(custom.ca_config_dir),
                "CERTMGR_CA_PASSPHRASE": "test-passphrase-not-secret",
                "CERTMGR_MASTER_KEY": "test-master-key-not-secret-0123456789abcdef",
                "CERTMGR_DISPATCH_ROLE": "scheduler",
                "CERTMGR_RENEWAL_INTERVAL_SECONDS": "0.5",
                "CERTMGR_DISPATCH_TICK_SECONDS": "0.2",
                "CERTMGR_CONTACT_GAP_SECONDS": "0",
                "CERTMGR_CONTACT_ME_TIMEOUT_SECONDS": "1",
                "CERTMGR_RETRY_BASE_SECONDS": "3600",
                "CERTMGR_RETRY_MAX_SECONDS": "7200",
                "CERTMGR_DEPLOY_CONCURRENCY": "8",
                "CERTMGR_WBM_PORT": "1",
                "CERTMGR_PROBE_TIMEOUT_SECONDS": "0.5",
                "CERTMGR_LOG_LEVEL": "WARNING",
            }
        )
        for node in ("node-a", "node-b"):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "certmgr", "serve", "--role", "scheduler"],
                    env={**env, "CERTMGR_NODE_ID": node},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )

        def done() -> bool:
            assert all(p.poll() is None for p in procs), "a scheduler process exited"
            with session_scope(rt.engine) as s:
                renewed = s.exec(select(Certificate).where(col(Certificate.created_at) > seeded)).all()
                if len(renewed) < N_EXPIRED + N_DUE:
                    return False
                deps = s.exec(
                    select(Deployment).where(col(Deployment.certificate_id).in_([c.id for c in renewed]))
                ).all()
                return len(deps) >= N_EXPIRED + N_DUE and all(d.attempts >= 1 for d in deps)

        wait_for(done, 150, 0.5)
        for n in range(N_EXPIRED + N_DUE, N_EXPIRED + N_DUE + SENTINELS):
            report(rt, n, ip(n))  # a new phone reports: the nodes must enroll it and claim its deployment
            wait_for(lambda n=n: _enrolled_and_claimed(rt, mac_of(n)), 60, 0.2)  # type: ignore[misc]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    try:
        with session_scope(rt.engine) as s:
            sentinels = {d.id for d in s.exec(select(Device).where(col(Device.mac).in_(SENTINEL_MACS))).all()}
            assert len(sentinels) == SENTINELS
            issued_after = s.exec(select(Certificate).where(col(Certificate.created_at) > seeded)).all()
            assert Counter(c.device_id for c in issued_after if c.device_id in sentinels) == dict.fromkeys(sentinels, 1)
            renewed = [c for c in issued_after if c.device_id not in sentinels]
            per_device = Counter(c.device_id for c in renewed)
            assert len(per_device) == N_EXPIRED + N_DUE
            assert set(per_device.values()) == {1}, per_device
            assert {c.reason for c in renewed} == {IssueReason.RENEWAL}
            deps = s.exec(select(Deployment).where(col(Deployment.certificate_id).in_([c.id for c in renewed]))).all()
            assert set(Counter(d.certificate_id for d in deps).values()) == {1}
            events = s.exec(select(AuditEvent).where(col(AuditEvent.at) > seeded)).all()
            # Issued by the renewal reconcile (certificate.reissue) or, for expired ones, possibly by the
            # dispatcher's enrollment reconcile: either way once per phone.
            issued = Counter(e.details["mac"] for e in events if e.action == "certificate.issued")
            assert len(issued) == N_EXPIRED + N_DUE + SENTINELS
            assert set(issued.values()) == {1}
            reissues = Counter(e.subject_id for e in events if e.action == "certificate.reissue")
            assert set(reissues.values()) == {1}
            contacting = [e for e in events if e.action == "deployment.contacting"]
            per_attempt = Counter((e.subject_id, e.details["attempt"]) for e in contacting)
            assert per_attempt
            assert set(per_attempt.values()) == {1}, "a deployment attempt was claimed twice"
            nodes = Counter(e.details.get("node") for e in contacting)
            print(f"claims per node: {dict(nodes)}", file=sys.stderr)
            assert verify_log(s).ok
    finally:
        rt.close()


SENTINEL_MACS = [mac_of(n) for n in range(N_EXPIRED + N_DUE, N_EXPIRED + N_DUE + SENTINELS)]


def _enrolled_and_claimed(rt: Runtime, mac: str) -> bool:
    """The sentinel got its certificate and its deployment was claimed (a contact-me attempt was made)."""
    with session_scope(rt.engine) as s:
        device = s.exec(select(Device).where(col(Device.mac) == mac)).first()
        if device is None:
            return False
        deps = s.exec(select(Deployment).where(col(Deployment.device_id) == device.id)).all()
        return len(deps) == 1 and deps[0].attempts >= 1
