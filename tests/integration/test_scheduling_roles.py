"""``certmgr serve --role``: which listeners and background tasks each role runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certmgr.clock import ManualClock
from certmgr.runtime import Runtime
from certmgr.serve import Role, build_listeners
from certmgr.settings import Settings
from tests.integration.renewal_support import open_test_runtime


@pytest.fixture
def runtime(settings: Settings, clock: ManualClock, tmp_path: Path) -> Iterator[Runtime]:
    rt = open_test_runtime(settings, clock, tmp_path, wpi_host="127.0.0.1")
    try:
        yield rt
    finally:
        rt.close()


def _shape(runtime: Runtime, role: Role) -> tuple[set[str], set[str]]:
    listeners, background = build_listeners(runtime, role)
    return {li.name for li in listeners}, {job.__name__ for job in background}


@pytest.mark.parametrize(
    ("dispatch_role", "role", "listeners", "tasks"),
    [
        ("wpi", Role.ALL, {"api", "wpi", "wpi-poll"}, {"deployment_dispatch", "scheduler"}),
        ("wpi", Role.API, {"api"}, set()),
        ("wpi", Role.WPI, {"wpi", "wpi-poll"}, {"deployment_dispatch"}),
        ("wpi", Role.SCHEDULER, set(), {"scheduler"}),
        ("scheduler", Role.WPI, {"wpi", "wpi-poll"}, set()),
        ("scheduler", Role.SCHEDULER, set(), {"deployment_dispatch", "scheduler"}),
        ("scheduler", Role.ALL, {"api", "wpi", "wpi-poll"}, {"deployment_dispatch", "scheduler"}),
    ],
)
def test_roles(runtime: Runtime, dispatch_role: str, role: Role, listeners: set[str], tasks: set[str]) -> None:
    runtime.settings = runtime.settings.model_copy(update={"dispatch_role": dispatch_role})
    assert _shape(runtime, role) == (listeners, tasks)


def test_scheduler_can_be_switched_off(runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={"scheduler_enabled": False})
    assert _shape(runtime, Role.SCHEDULER) == (set(), set())
