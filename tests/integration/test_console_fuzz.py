"""Nothing a browser sends reaches a 5xx: random query parameters, path segments and form fields on every
console route (as an admin with a valid session and CSRF token, so the checks behind them run too)."""

# ruff: noqa: F811 - the shared fixtures are imported and named as parameters

from __future__ import annotations

import itertools
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certmgr.audit.tokens import Role, create_token
from certmgr.db.engine import session_scope
from certmgr.runtime import Runtime
from tests.integration.console_support import BASE, ORIGIN, csrf, login
from tests.integration.test_api_support import (  # noqa: F401 - fixtures
    Fleet,
    ca_template,
    fleet,
    rt,
    tokens,
)

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80) | st.sampled_from(
    ["", "0", "-1", "99999999999999999999", "00:1A:E8:00:00:01", "c.1.1", "n.5", "m.00:1A:E8:00:00:01",
     "c.99999999999999999999.1", "s.-99999999999999999.3", "%", "_", "\\", "'", "\x00", "📞", "x" * 300, "on"]
)  # fmt: skip
KEYS = st.sampled_from(
    ["q", "status", "policy", "model", "firmware", "expiring", "drift", "pending", "sort", "cursor", "state",
     "before", "since", "until", "actor", "action", "phone", "next", "done", "name", "role", "reason", "confirm",
     "expected", "back", "token", "login_nonce"]
) | st.text(max_size=12)  # fmt: skip
PARAMS = st.dictionaries(KEYS, TEXT, max_size=6)
GETS = ["/ui/", "/ui/phones", "/ui/deployments", "/ui/audit", "/ui/bulk", "/ui/jobs", "/ui/reports", "/ui/ca",
        "/ui/tokens", "/ui/login"]  # fmt: skip
SEGMENT_GETS = ["/ui/phones/{}", "/ui/phones/{}/progress", "/ui/deployments/{}", "/ui/jobs/{}", "/ui/jobs/{}/progress",
                "/ui/reports/{}"]  # fmt: skip
POSTS = ["/ui/phones/{}/renew", "/ui/phones/{}/approve", "/ui/phones/{}/decommission", "/ui/certificates/{}/revoke",
         "/ui/deployments/{}/retry", "/ui/deployments/{}/cancel", "/ui/tokens/{}/revoke", "/ui/tokens", "/ui/bulk",
         "/ui/audit/verify", "/ui/login"]  # fmt: skip
SEGMENTS = TEXT | st.sampled_from(["1", "2", "3", "00:1A:E8:00:00:01", "00:1A:E8:00:00:04", "inventory.csv.zip"])
CONTENT_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


_CLIENTS: dict[int, tuple[TestClient, str]] = {}
_names = itertools.count()


def _client(rt: Runtime) -> tuple[TestClient, str]:
    """A logged-in admin client per runtime (hypothesis runs every example with the same fixtures); a new token
    and session when a fuzzed logout or token revocation ended the last one."""
    from certmgr.console.app import create_web_app

    cached = _CLIENTS.get(id(rt))
    if cached is not None and cached[0].get("/ui/jobs").status_code == 200:
        return cached
    if cached is None:
        _CLIENTS.clear()
    client = (
        cached[0]
        if cached
        else TestClient(create_web_app(rt), base_url=BASE, follow_redirects=False, raise_server_exceptions=False)
    )
    with session_scope(rt.engine) as session:
        _, value = create_token(session, name=f"fuzz-{next(_names)}", role=Role.ADMIN, actor="test", now=rt.clock.now())
    login(client, value)
    _CLIENTS[id(rt)] = (client, csrf(client.get("/ui/").text))
    return _CLIENTS[id(rt)]


@FUZZ
@given(data=st.data())
def test_random_query_strings_and_paths(rt: Runtime, tokens: dict[str, str], fleet: Fleet, data: st.DataObject) -> None:
    client, _ = _client(rt)
    url = data.draw(st.sampled_from(GETS))
    answer = client.get(url, params=data.draw(PARAMS))
    assert answer.status_code < 500, (url, answer.status_code)
    template = data.draw(st.sampled_from(SEGMENT_GETS))
    path = template.format(quote(data.draw(SEGMENTS), safe=""))
    answer = client.get(path, params=data.draw(PARAMS))
    assert answer.status_code < 500, (path, answer.status_code)


@FUZZ
@given(data=st.data())
def test_random_form_fields(rt: Runtime, tokens: dict[str, str], fleet: Fleet, data: st.DataObject) -> None:
    client, token = _client(rt)
    path = data.draw(st.sampled_from(POSTS)).format(quote(data.draw(SEGMENTS), safe=""))
    form = data.draw(PARAMS)
    if data.draw(st.booleans()):
        form["csrf"] = token
    answer = client.post(path, data=form, headers=ORIGIN)
    assert answer.status_code < 500, (path, form, answer.status_code, answer.text[-300:])
    body = data.draw(st.binary(max_size=300))
    kind = data.draw(st.sampled_from(CONTENT_TYPES))
    raw = client.post(path, content=body, headers={**ORIGIN, "Content-Type": kind})
    assert raw.status_code < 500, (path, body, raw.status_code)
