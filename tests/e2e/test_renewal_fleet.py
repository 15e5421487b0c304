"""Acceptance: unattended renewal. ``certmgr serve --role all`` (a subprocess: real TLS listeners, the deployment
dispatcher and the scheduler's jobs) with 30 simulated phones (:class:`certmgr.simulator.Fleet`, on a loopback
range of this xdist worker) under a default policy with a three-minute validity.

Every phone must first receive and verify its first certificate; then, with no operator action, the
``renewal-reconcile`` job must issue a renewal for each (reason ``renewal``, audited ``certificate.reissue``) and
the pipeline must deploy and verify it — all before the first certificate's notAfter. "Verified" is checked
independently of certmgr: each phone's WBM port is TLS-probed and must serve the certificate the database names
as the phone's current one.

Timeline (wall clock; the CA is valid for years, so no certificate is clipped): issue at T, renewal due at
T + validity - renew_before = T + 1 min (plus up to 10 s jitter), notAfter at T + 3 min. Bounded: < ~3 min.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from certmgr.db.models import AuditEvent, Certificate, CertificateStatus, DeploymentState, Device, IssueReason
from certmgr.simulator.fleet import Fleet
from tests.conftest import REPO
from tests.e2e.conftest import E2E, served_sha256, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PHONES = 30
VALIDITY = "3m"
RENEW_BEFORE = "2m"
JITTER = "10s"
FIRST_TIMEOUT_S = 90.0
#: The renewals must be verified before the first certificates expire: validity minus the time already used.
RENEWAL_TIMEOUT_S = 180.0


def _short_policy(world: E2E) -> None:
    """The shipped default policy with an EC key (fast), a short validity and a short renewal window."""
    text = (REPO / "policies" / "default.toml").read_text()
    for old, new in (
        ('type = "rsa-2048"', 'type = "ec-p256"'),
        ('duration = "397d"', f'duration = "{VALIDITY}"'),
        ('renew_before = "30d"', f'renew_before = "{RENEW_BEFORE}"'),
        ('jitter = "6h"', f'jitter = "{JITTER}"'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    (world.tmp / "policies" / "default.toml").write_text(text)


def _current(world: E2E) -> dict[str, tuple[Device, Certificate]]:
    """MAC → (device, its current certificate) for the phones that have one."""
    certs = world.certificates()
    return {
        mac: (d, certs[d.current_certificate_id])
        for mac, d in world.devices().items()
        if d.current_certificate_id is not None and d.current_certificate_id in certs
    }


def _serving_current(world: E2E, fleet: Fleet, exclude: frozenset[int] = frozenset()) -> dict[str, Certificate]:
    """MAC → current certificate if every phone's WBM serves its current certificate and none of those is in
    ``exclude``; else an empty dict."""
    current = _current(world)
    out: dict[str, Certificate] = {}
    for phone in fleet.phones:
        found = current.get(phone.config.mac)
        if found is None:
            return {}
        _device, cert = found
        if cert.id in exclude or served_sha256(phone.ip, world.wbm_port) != cert.fingerprint_sha256:
            return {}
        out[phone.config.mac] = cert
    return out


def test_fleet_renews_before_expiry_without_an_operator(e2e_factory: Callable[..., E2E]) -> None:
    world = e2e_factory(
        PHONES,
        settings={"scheduler_enabled": True, "renewal_interval_seconds": 3.0, "renewal_horizon_hours": 1},
    )
    _short_policy(world)
    world.service.role = "all"
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
    assert [p.ip for p in fleet.phones] == world.hosts
    world.phones.extend(fleet.phones)  # stopped by the factory's teardown
    world.loop.run(fleet.start(send_startup=True), timeout=90.0)

    # 1. Every phone verifies its first certificate (TLS-probed: the WBM serves what the database names).
    first = wait_until(lambda: _serving_current(world, fleet), FIRST_TIMEOUT_S, 1.0, "first certificates verified")
    assert {c.reason for c in first.values()} == {IssueReason.ENROLLMENT}
    first_ids = frozenset(c.id for c in first.values() if c.id is not None)

    # 2. No operator action: the renewal job renews every phone, and the renewal is verified before expiry.
    renewed = wait_until(
        lambda: _serving_current(world, fleet, exclude=first_ids),
        RENEWAL_TIMEOUT_S,
        1.0,
        "renewed certificates verified",
    )
    for mac, cert in renewed.items():
        old = first[mac]
        assert cert.reason is IssueReason.RENEWAL, mac
        assert cert.status is CertificateStatus.ACTIVE, mac
        assert cert.previous_certificate_id == old.id, mac
        assert cert.not_after > old.not_after, mac
        assert cert.created_at < old.not_after, mac

    # The database agrees: each renewal was the renewal job's (audited with its reason) and deployed, verified.
    events: list[AuditEvent] = world.events()
    reissued = {e.subject_id for e in events if e.action == "certificate.reissue" and e.actor == "renewal"}
    assert reissued >= set(renewed)
    assert not [e for e in events if e.actor.startswith("token:")]  # nobody used the API
    deployments = world.deployments()
    for mac, cert in renewed.items():
        carrying = [d for d in deployments[mac] if d.certificate_id == cert.id]
        assert [d.state for d in carrying] == [DeploymentState.VERIFIED], mac
        # ... before the first certificate expired, by the service's own record (not the test's clock).
        verified_at = carrying[0].finished_at
        assert verified_at is not None, mac
        assert verified_at < first[mac].not_after, (mac, verified_at, first[mac].not_after)
    totals = fleet.summary()["totals"]
    assert totals["writes_accepted"] >= 2 * PHONES
    assert totals["factory_cert"] == 0
