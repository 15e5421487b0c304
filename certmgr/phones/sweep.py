"""The probe sweep: TLS-probe phones whose verified certificate was last confirmed long ago, in bounded batches.

A phone serving another certificate is flagged ``drift`` (audited), which the renewal reconcile turns into a
reissue (trigger ``drift``). A passing probe refreshes ``last_verified_at``. The ``probe-sweep`` scheduler job
runs it on the leader node.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlmodel import col

from certmgr.audit.log import NewEvent, append_events
from certmgr.db.deployments import UNFINISHED_STATES
from certmgr.db.engine import session_scope
from certmgr.db.inlist import in_parts
from certmgr.db.models import Certificate, Deployment, Device, DeviceStatus, Enrollment
from certmgr.errors import CertmgrError
from certmgr.phones.probe import probe_once

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.phones")

ACTOR = "scheduler"


@dataclass(frozen=True)
class _Target:
    device_id: int
    mac: str
    ip: str
    cert_id: int
    expected: str


@dataclass
class SweepReport:
    """What one sweep did."""

    probed: int = 0
    passed: int = 0
    drift: list[str] = field(default_factory=list)
    unreachable: int = 0


class ProbeSweep:
    """Walks the fleet in bounded batches; the cursor (a device id) is only a scan position: losing it (restart)
    restarts the walk, nothing else."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._cursor = 0

    def _targets(self, now: datetime) -> list[_Target]:
        s = self.runtime.settings
        stale = now - timedelta(hours=s.probe_sweep_min_age_hours)
        with session_scope(self.runtime.engine) as session:
            busy = select(col(Deployment.device_id)).where(
                col(Deployment.state).in_([x.value for x in UNFINISHED_STATES])
            )
            rows = session.execute(
                select(
                    col(Device.id),
                    col(Device.mac),
                    col(Device.ip),
                    col(Certificate.id),
                    col(Certificate.fingerprint_sha256),
                )
                .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
                .where(
                    col(Device.id) > self._cursor,
                    col(Device.enrollment) == Enrollment.APPROVED.value,
                    col(Device.status) == DeviceStatus.VERIFIED.value,
                    col(Device.ip).is_not(None),
                    (col(Device.last_verified_at).is_(None)) | (col(Device.last_verified_at) < stale),
                    col(Device.id).not_in(busy),
                )
                .order_by(col(Device.id))
                .limit(s.probe_sweep_batch)
            ).all()
        self._cursor = rows[-1][0] if len(rows) == s.probe_sweep_batch else 0
        return [_Target(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def _probe(self, target: _Target) -> tuple[_Target, str | None, str | None]:
        s = self.runtime.settings
        try:
            return target, probe_once(target.ip, s.wbm_port, s.probe_timeout_seconds), None
        except CertmgrError as exc:
            return target, None, exc.message

    def run(self, now: datetime) -> SweepReport:
        """Probe one batch and record the outcomes (one transaction).

        Raises:
            DatabaseError: if the database cannot be reached.
        """
        report = SweepReport()
        targets = self._targets(now)
        if not targets:
            return report
        workers = min(self.runtime.settings.probe_sweep_concurrency, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe-sweep") as pool:
            outcomes = list(pool.map(self._probe, targets))
        events: list[NewEvent] = []
        with session_scope(self.runtime.engine) as session:
            # The batch's phones a part at a time (``probe_sweep_batch`` has no upper bound), not one get each.
            devices: dict[int | None, Device] = {}
            for part in in_parts([target.device_id for target, _seen, _error in outcomes]):
                devices.update(
                    (d.id, d) for d in session.execute(select(Device).where(col(Device.id).in_(part))).scalars()
                )
            for target, seen, error in outcomes:
                report.probed += 1
                device = devices.get(target.device_id)
                if device is None or device.current_certificate_id != target.cert_id:
                    continue  # moved on meanwhile
                if seen is None:
                    report.unreachable += 1
                    log.info("probe sweep: %s unreachable: %s", target.mac, error)
                    continue
                if seen == target.expected:
                    report.passed += 1
                    device.last_verified_at = now
                else:
                    report.drift.append(target.mac)
                    device.drift = True
                    device.status = DeviceStatus.DRIFT
                    events.append(
                        NewEvent(
                            ACTOR,
                            "device.drift",
                            "device",
                            target.mac,
                            {"source": "probe-sweep", "expected_sha256": target.expected, "seen_sha256": seen},
                        )
                    )
                device.updated_at = now
                session.add(device)
            append_events(session, now, events)
        return report


__all__ = ["ProbeSweep", "SweepReport"]
