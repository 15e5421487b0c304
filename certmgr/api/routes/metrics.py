"""``/metrics``: Prometheus text exposition (viewer)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select
from sqlmodel import Session, col

from certmgr.api.deps import RuntimeDep, SessionDep, Viewer
from certmgr.db.models import Certificate, CertificateStatus, Deployment, DeploymentState, Device, DeviceStatus

router = APIRouter(tags=["metrics"])


def _counts(session: Session, column: object) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column)).all()  # type: ignore[call-overload]
    return {str(getattr(value, "value", value)): int(count) for value, count in rows}


def _family(name: str, help_text: str, label: str, values: list[str], counts: dict[str, int]) -> Iterator[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} gauge"
    for value in values:
        yield f'{name}{{{label}="{value}"}} {counts.get(value, 0)}'


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(_who: Viewer, rt: RuntimeDep, session: SessionDep) -> PlainTextResponse:
    """Prometheus text exposition: certificates by status, seconds to the earliest expiry of a current
    certificate, deployments by state, devices by status (viewer; configure the scraper with a bearer token)."""
    lines: list[str] = []
    lines += _family(
        "certmgr_certificates",
        "Certificates by status.",
        "status",
        [s.value for s in CertificateStatus],
        _counts(session, col(Certificate.status)),
    )
    lines += _family(
        "certmgr_deployments",
        "Deployments by state.",
        "state",
        [s.value for s in DeploymentState],
        _counts(session, col(Deployment.state)),
    )
    lines += _family(
        "certmgr_devices",
        "Devices by status.",
        "status",
        [s.value for s in DeviceStatus],
        _counts(session, col(Device.status)),
    )
    earliest = session.execute(
        select(func.min(Certificate.not_after))
        .join(Device, col(Device.current_certificate_id) == col(Certificate.id))
        .where(col(Device.status) != DeviceStatus.DECOMMISSIONED)
    ).scalar_one_or_none()
    lines.append("# HELP certmgr_earliest_expiry_seconds Seconds until the earliest current certificate expires.")
    lines.append("# TYPE certmgr_earliest_expiry_seconds gauge")
    if earliest is not None:
        if earliest.tzinfo is None:  # defensive: aggregates keep the column type, so this is aware UTC
            earliest = earliest.replace(tzinfo=UTC)
        seconds = (earliest - rt.clock.now()) / timedelta(seconds=1)
        lines.append(f"certmgr_earliest_expiry_seconds {seconds:.0f}")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
