"""Helpers for the renewal / scheduling / rollback tests: a small EC policy and phones with a verified
certificate, created through the real pipeline functions (reconcile, then the verification bookkeeping)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlmodel import col, select

from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, CheckReply, Deployment, DeploymentState, Device
from certmgr.deploy import verification
from certmgr.deploy.reconcile import Reconciler
from certmgr.inventory.enrollment import record_report
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from tests.conftest import REPO


def write_policy(policy_dir: Path, *, validity: str = "30d", renew: str = 'renew_before = "10d"', jitter: str = "0s",
                 key: str = "ec-p256", clip: bool = False) -> Path:  # fmt: skip
    """Copy ``policies/default.toml`` into ``policy_dir`` with a short validity and an EC key (fast tests)."""
    policy_dir.mkdir(parents=True, exist_ok=True)
    text = (REPO / "policies" / "default.toml").read_text()
    text = (
        text.replace('type = "rsa-2048"', f'type = "{key}"')
        .replace('duration = "397d"', f'duration = "{validity}"')
        .replace('renew_before = "30d"', renew)
        .replace('jitter = "6h"', f'jitter = "{jitter}"')
        .replace("clip_to_ca = false", f"clip_to_ca = {'true' if clip else 'false'}")
    )
    (policy_dir / "default.toml").write_text(text)
    return policy_dir


def open_test_runtime(settings: Settings, clock: ManualClock, tmp_path: Path, **update: object) -> Runtime:
    policies = write_policy(tmp_path / "policies")
    return open_runtime(settings.model_copy(update={"policy_dir": policies, **update}), clock, create_ca=True)


def mac_of(n: int) -> str:
    return f"00:1A:E8:10:{n // 256:02X}:{n % 256:02X}"


def ip_of(n: int) -> str:
    return f"10.20.{n // 250}.{n % 250 + 1}"


def report(rt: Runtime, n: int, ip: str | None = None) -> None:
    ip = ip or ip_of(n)
    items: dict[str, str | None] = {
        "contact-me-uri": f"http://{ip}:8085/contact_dls.html/ContactDLS",
        "device-type": "OpenStage 60",
        "software-version": "V3 R5.21.0",
    }
    with session_scope(rt.engine) as s:
        record_report(
            s, mac=mac_of(n), items=items, reason="start-up", peer=ip, now=rt.clock.now(), policies=rt.policies
        )


def mark_verified(rt: Runtime, deployment_id: int) -> None:
    """Drive a queued deployment to ``verified`` through the service's own bookkeeping (no phone)."""
    with session_scope(rt.engine) as s:
        dep = s.get(Deployment, deployment_id)
        assert dep is not None
        cert = s.get(Certificate, dep.certificate_id)
        assert cert is not None
        dep.state = DeploymentState.VERIFYING
        dep.written_at = rt.clock.now()
        dep.check_reply = CheckReply.PASSED
        dep.updated_at = rt.clock.now()
        s.add(dep)
        fingerprint = cert.fingerprint_sha256
    verification.finish_verification(rt, deployment_id, seen_sha256=fingerprint, probe_error=None, now=rt.clock.now())


def verify_all_queued(rt: Runtime) -> int:
    with session_scope(rt.engine) as s:
        ids = [d.id for d in s.exec(select(Deployment).where(col(Deployment.state) == DeploymentState.QUEUED.value))]
    for dep_id in ids:
        assert dep_id is not None
        mark_verified(rt, dep_id)
    return len(ids)


def enroll_verified(rt: Runtime, numbers: range | list[int], ip: Callable[[int], str] = ip_of) -> None:
    """Phones ``numbers`` seen, issued (enrollment) and verified at the clock's current time."""
    for n in numbers:
        report(rt, n, ip(n))
    reconciler = Reconciler(rt)
    while reconciler.run(rt.clock.now()):
        pass
    verify_all_queued(rt)


def device(rt: Runtime, n: int) -> Device:
    with session_scope(rt.engine) as s:
        return s.exec(select(Device).where(col(Device.mac) == mac_of(n))).one()
