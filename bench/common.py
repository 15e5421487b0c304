"""Helpers the benches that drive ``certmgr serve`` processes share (bench/deploy.py, bench/multinode.py)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, Deployment, DeploymentState

REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def closed_window() -> str:
    """A [[windows]] entry that is closed for the next two hours (UTC)."""
    hour = (datetime.now(UTC).hour + 3) % 24
    return f'\n[[windows]]\ndays = "*"\nhours = "{hour:02d}-{(hour + 1) % 24:02d}"\ntimezone = "UTC"\n'


def write_policy(policy_dir: Path, *, closed: bool) -> Path:
    """The shipped default policy into ``policy_dir``, with its maintenance window closed (issuance only) or
    as shipped (always open); returns ``policy_dir``."""
    policy_dir.mkdir(parents=True, exist_ok=True)
    text = (REPO / "policies" / "default.toml").read_text()
    (policy_dir / "default.toml").write_text(text + (closed_window() if closed else ""))
    return policy_dir


def count_certs(engine: Engine) -> int:
    """Certificates in the database."""
    with session_scope(engine) as s:
        return int(s.exec(select(func.count()).select_from(Certificate)).one())


def count_verified(engine: Engine) -> int:
    """Deployments in state ``verified``."""
    with session_scope(engine) as s:
        return int(
            s.exec(
                select(func.count())
                .select_from(Deployment)
                .where(col(Deployment.state) == DeploymentState.VERIFIED.value)
            ).one()
        )
