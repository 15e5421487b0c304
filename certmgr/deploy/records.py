"""Reading deployment rows and describing them in the audit log: what every stage of the pipeline shares.

The stages (:mod:`~certmgr.deploy.admission` → :mod:`~certmgr.deploy.effects` →
:mod:`~certmgr.deploy.verification`, with :mod:`~certmgr.deploy.queue` and :mod:`~certmgr.deploy.recovery`
around them) each change a deployment in one transaction together with its audit events; state changes go
through :func:`certmgr.db.deployments.move` only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from certmgr.audit.log import NewEvent
from certmgr.db.deployments import UNFINISHED_STATES, lease
from certmgr.db.locks import node_name
from certmgr.db.models import Deployment, Device
from certmgr.errors import InputError

if TYPE_CHECKING:
    from certmgr.settings import Settings

ACTOR = "deploy"


def deployment_event(action: str, dep: Deployment, mac: str, **details: Any) -> NewEvent:
    """An audit event about ``dep`` (subject ``deployment``/id) naming the phone's MAC."""
    return NewEvent(ACTOR, action, "deployment", str(dep.id), {"mac": mac, **details})


def load_deployment(session: Session, deployment_id: int) -> tuple[Deployment, Device]:
    """The deployment and its phone.

    Raises:
        InputError: if there is no such deployment.
    """
    row = session.exec(
        select(Deployment, Device)
        .join(Device, col(Device.id) == col(Deployment.device_id))
        .where(col(Deployment.id) == deployment_id)
    ).first()  # one statement for both (every stage of a delivery starts here)
    if row is None:
        raise InputError(f"no deployment {deployment_id}")
    return row[0], row[1]


def current_deployment(session: Session, device_id: int) -> Deployment | None:
    """The newest unfinished deployment of a device, if any."""
    return session.exec(
        select(Deployment)
        .where(col(Deployment.device_id) == device_id, col(Deployment.state).in_([s.value for s in UNFINISHED_STATES]))
        .order_by(col(Deployment.id).desc())
    ).first()


def interaction_lease(settings: Settings, now: datetime) -> datetime:
    """Until when a phone interaction (and the probe that follows it) holds its deployment."""
    probe_budget = settings.probe_tries * (settings.probe_interval_seconds + settings.probe_timeout_seconds)
    return now + timedelta(seconds=settings.interaction_timeout_seconds + probe_budget)


def hold(settings: Settings, dep: Deployment, until: datetime) -> None:
    """This node works on ``dep`` until ``until`` (its lease)."""
    lease(dep, node_name(settings), until)


__all__ = ["ACTOR", "current_deployment", "deployment_event", "hold", "interaction_lease", "load_deployment"]
