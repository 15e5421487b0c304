"""Property-based API test: schemathesis generates requests from the OpenAPI schema (bounded: few examples per
operation, explicit phases, no shrinking) and every answer must be below 500 — with an admin token (so the
routes run), on a seeded SQLite database, through the ASGI app in process."""

# ruff: noqa: F811 - the shared fixtures are imported from test_api_support and named as parameters

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings

from certmgr.api.app import create_app
from certmgr.audit.tokens import Role, create_token
from certmgr.clock import ManualClock
from certmgr.db.engine import session_scope
from certmgr.runtime import Runtime, open_runtime
from tests.conftest import T0
from tests.integration.test_api_support import Fleet, auth, ca_template, fleet, make_settings  # noqa: F401

MAX_EXAMPLES = 25


@pytest.fixture
def sqlite_rt(tmp_path: Path, ca_template: Path) -> Iterator[Runtime]:
    import shutil

    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    shutil.copytree(ca_template, data_dir / "ca")
    runtime = open_runtime(make_settings(data_dir, f"sqlite:///{tmp_path / 'db.sqlite'}"), ManualClock(T0))
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def rt(sqlite_rt: Runtime) -> Runtime:
    """The ``fleet`` fixture seeds this runtime."""
    return sqlite_rt


@pytest.fixture
def admin_token(sqlite_rt: Runtime, fleet: Fleet) -> str:
    with session_scope(sqlite_rt.engine) as session:
        _, value = create_token(session, name="fuzzer", role=Role.ADMIN, actor="test", now=T0)
    return value


def test_no_server_errors(sqlite_rt: Runtime, admin_token: str) -> None:
    """Every operation of the schema, MAX_EXAMPLES generated cases each (schemathesis' pytest plugin does not
    support this pytest version, so the operations are driven through hypothesis directly)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(sqlite_rt))
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            phases=[Phase.explicit, Phase.generate],
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(headers=auth(admin_token))
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}")

        run()
    assert failures == []
    assert statuses[200] >= len(operations)  # the token works: the routes really ran
    assert statuses.total() >= 5 * len(operations)


def test_no_server_errors_without_token(sqlite_rt: Runtime) -> None:
    """Unauthenticated requests to every operation: 401 (or the public answer), never 5xx."""
    with TestClient(create_app(sqlite_rt)) as client:
        spec = client.get("/openapi.json").json()
        for path, operations in spec["paths"].items():
            for method in operations:
                url = path.replace("{kind}", "inventory").replace("_id}", "").replace("{", "1").replace("}", "")
                r = client.request(method.upper(), url.replace("1device", "1").replace("1certificate", "1"))
                assert r.status_code < 500, (method, path, r.status_code)
