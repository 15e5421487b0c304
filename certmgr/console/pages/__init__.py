"""The console's pages, one module per page (or group of pages); :data:`ROUTERS` is what
:func:`certmgr.console.app.mount_console` includes."""

from __future__ import annotations

from fastapi import APIRouter

from certmgr.console.pages import audit, bulk, ca, deployments, login, overview, phones, reports, tokens

ROUTERS: tuple[APIRouter, ...] = (
    login.router,
    overview.router,
    phones.router,
    deployments.router,
    bulk.router,
    audit.router,
    reports.router,
    ca.router,
    tokens.router,
)

__all__ = ["ROUTERS"]
