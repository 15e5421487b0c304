"""The API's routes, one module per resource. :data:`ROUTERS` is what :func:`certmgr.api.app.create_app`
includes, in this order."""

from __future__ import annotations

from fastapi import APIRouter

from certmgr.api.routes import (
    audit,
    ca,
    certificates,
    deployments,
    devices,
    health,
    metrics,
    policies,
    reports,
    scheduler,
    tokens,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    devices.router,
    certificates.router,
    deployments.router,
    ca.router,
    policies.router,
    metrics.router,
    audit.router,
    tokens.router,
    reports.router,
    scheduler.router,
)

__all__ = ["ROUTERS"]
