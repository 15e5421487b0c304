"""Acceptance: the CA is rotated with the CLI — a separate process — under a running ``certmgr serve --role all``
with simulated phones. Without a restart, every phone ends up serving a certificate signed by the new CA (checked
on the phone's WBM port, independently of certmgr), and each phone got exactly one new certificate for the
rotation: several renewal runs later, nothing more was issued.

Before the fix the service kept signing with the CA it cached at start, so every "rotated" certificate named the
old CA, the trigger fired again on the next run, and each phone got another certificate on every run.
"""

from __future__ import annotations

import json
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import CARecord, CARole, IssueReason
from certmgr.simulator.fleet import Fleet
from tests.conftest import REPO
from tests.e2e.conftest import E2E, served_sha256, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PHONES = 6
RENEWAL_INTERVAL_S = 2.0
#: Renewal runs that must pass after the rotation settled without any further issuance.
QUIET_RUNS = 3


def _ec_policy(world: E2E) -> None:
    text = (REPO / "policies" / "default.toml").read_text().replace('type = "rsa-2048"', 'type = "ec-p256"')
    (world.tmp / "policies" / "default.toml").write_text(text)


def _active_issuing_ca(world: E2E) -> x509.Certificate:
    with session_scope(world.engine) as s:
        row = s.exec(
            select(CARecord).where(col(CARecord.active).is_(True), col(CARecord.role) == CARole.ISSUING.value)
        ).one()
        return x509.load_pem_x509_certificate(row.cert_pem.encode())


def _served_certificate(ip: str, port: int) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    pem = ssl.get_server_certificate((ip, port), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode())


def _all_signed_by(world: E2E, fleet: Fleet, ca: x509.Certificate) -> bool:
    """Every phone's WBM serves a certificate the database knows as current and ``ca`` signed."""
    devices = world.devices()
    certs = world.certificates()
    for phone in fleet.phones:
        device = devices.get(phone.config.mac)
        if device is None or device.current_certificate_id is None:
            return False
        current = certs.get(device.current_certificate_id)
        if current is None or served_sha256(phone.ip, world.wbm_port) != current.fingerprint_sha256:
            return False
        served = _served_certificate(phone.ip, world.wbm_port)
        try:  # the rotated CA has the same name: only the signature tells them apart
            served.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True


def _renewal_runs(world: E2E, token: str) -> int:
    response = httpx.get(f"{world.api_url}/api/v1/scheduler", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    response.raise_for_status()
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    job = next(j for j in jobs if j["id"] == "renewal-reconcile")
    return int(job["runs"]) if job["last_outcome"] in ("ok", "skipped") else 0


def test_ca_rotated_by_the_cli_under_a_running_service(e2e_factory: Callable[..., E2E]) -> None:
    world = e2e_factory(PHONES, settings={"scheduler_enabled": True, "renewal_interval_seconds": RENEWAL_INTERVAL_S})
    _ec_policy(world)
    world.service.role = "all"
    world.service.env = {"CERTMGR_LOG_FORMAT": "json"}  # as a log shipper wants it: one JSON object a line
    world.service.start()
    fleet = Fleet(
        PHONES,
        base_ip=world.hosts[0],
        dls_url=world.wpi_url,
        contact_gap=1.0,
        wbm_port=world.wbm_port,
        contact_port=world.contact_port,
        mac_start=world.second * 65536 + world.third * 256 + 1,
        request_timeout=15.0,
        interaction_timeout=60.0,
    )
    world.phones.extend(fleet.phones)
    world.loop.run(fleet.start(send_startup=True), timeout=90.0)
    old_ca = _active_issuing_ca(world)
    wait_until(lambda: _all_signed_by(world, fleet, old_ca), 90.0, 1.0, "first certificates served")
    token = world.cli("token", "create", "--role", "viewer", "--name", "e2e").stdout.strip().splitlines()[-1]

    world.cli("ca", "init", "--force")  # a separate process, on the service's data dir and database
    new_ca = _active_issuing_ca(world)
    assert new_ca != old_ca
    wait_until(lambda: _all_signed_by(world, fleet, new_ca), 120.0, 1.0, "new-CA certificates served")

    settled = _renewal_runs(world, token)
    log_before = len(world.service.log())
    wait_until(lambda: _renewal_runs(world, token) >= settled + QUIET_RUNS, 60.0, 0.5, "further renewal runs")
    # An idle service is quiet: the renewal runs that found nothing to do left no line in the log.
    assert world.service.log()[log_before:].strip() == ""
    per_phone = Counter(c.device_id for c in world.certificates().values())
    assert set(per_phone.values()) == {2}, per_phone  # enrollment + exactly one for the rotation
    rotated = [c for c in world.certificates().values() if c.reason is IssueReason.CA_ROTATION]
    assert len(rotated) == PHONES
    # The log tells each phone's story, and the rotation: JSON records carrying the action and the MAC or CA.
    records = [json.loads(line) for line in world.service.log().splitlines() if line.startswith("{")]
    assert records
    assert all(r["level"] and r["ts"] and r["logger"] for r in records)
    rotation = [r for r in records if r["message"].startswith("CA rotation: issuing with")]
    assert len(rotation) == 1, rotation  # told once, however many threads saw the new CA at the same moment
    assert rotation[0]["ca"] == new_ca.fingerprint(hashes.SHA256()).hex()
    story = [r for r in records if r["logger"] == "certmgr.story" and r["level"] == "INFO"]
    for phone in fleet.phones:
        told = Counter(r["action"] for r in story if r.get("mac") == phone.config.mac)
        assert told["device.discovered"] == 1, (phone.config.mac, told)
        assert told["certificate.issued"] == 2, (phone.config.mac, told)
        assert told["deployment.written"] >= 2, (phone.config.mac, told)
        assert told["deployment.verified"] >= 2, (phone.config.mac, told)
    assert "Traceback" not in world.service.log()
