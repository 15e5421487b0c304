"""Shared pieces of the console tests (holds no tests): a TestClient over HTTPS (so the ``Secure`` cookies
travel), logging in as a role, and reading the CSRF token and links out of a page."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from certmgr.console.app import create_web_app
from certmgr.runtime import Runtime

BASE = "https://testserver"
ORIGIN = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}
_CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
_NONCE = re.compile(r'name="login_nonce" value="([^"]+)"')


def new_client(rt: Runtime) -> TestClient:
    """A client of the whole application (API + console) over https://testserver, following no redirects."""
    return TestClient(create_web_app(rt), base_url=BASE, follow_redirects=False, raise_server_exceptions=True)


@pytest.fixture
def ui(rt: Runtime) -> Iterator[TestClient]:
    with new_client(rt) as c:
        yield c


def login(client: TestClient, token: str, next_path: str | None = None) -> str:
    """Log ``client`` in with ``token``; returns where the login redirected to."""
    page = client.get("/ui/login", params={"next": next_path} if next_path else None)
    assert page.status_code == 200, page.text
    nonce = _NONCE.search(page.text)
    assert nonce is not None
    form = {"token": token, "login_nonce": nonce.group(1), "next": next_path or "/ui/"}
    answer = client.post("/ui/login", data=form, headers=ORIGIN)
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def csrf(html: str) -> str:
    """The CSRF token in a console page."""
    match = _CSRF.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


def post(
    client: TestClient,
    url: str,
    data: dict[str, str] | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> object:
    """POST a console form with the session's CSRF token (read from the overview unless given)."""
    value = token if token is not None else csrf(client.get("/ui/jobs").text)
    return client.post(url, data={"csrf": value, **(data or {})}, headers={**ORIGIN, **(headers or {})})
