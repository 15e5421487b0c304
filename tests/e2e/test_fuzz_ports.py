"""Fuzz both ports of a real ``certmgr serve --role all`` (issue 9: "no 5xx from input, ever").

* The phone ports: the WPI listener (TLS) gets malformed XML of every kind — unknown and non-text encodings,
  DTDs and entities, deep nesting, huge attributes, invalid UTF-8, truncated documents, wrong namespaces, binary
  garbage, empty bodies, wrong content types, XML and WPI fragments, other methods and paths, oversized and
  chunked bodies, lying Content-Lengths, random byte mutations of valid messages (:mod:`tests.e2e.fuzz_cases`)
  — sent from a foreign loopback address; the DCMP poll listener gets hostile polls.
* The API: schemathesis over the live OpenAPI schema (an admin token, so the routes really run) plus the cases
  of issue 9 item 8 (lone surrogates, TOML nested 3,000 deep, undecodable and oversized bodies, bad tokens).

Asserted: not one answer is a 5xx (a connection the server closes is allowed only for oversized bodies), and
the service log holds no traceback and no secret. Bounded: a fixed set of cases and a few generated examples
per API operation; the figures are printed (``-s``).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.e2e.conftest import E2E, leaked_secrets, wait_until
from tests.e2e.fuzz_cases import Req, api_cases, phone_cases, poll_cases

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Generated examples per API operation (on top of schemathesis' explicit examples).
API_EXAMPLES = 25
FOREIGN_MAC = "00:1A:E8:FF:FF:01"


def _chunks(body: bytes, n: int) -> Iterator[bytes]:
    step = max(1, len(body) // n)
    for i in range(0, len(body), step):
        yield body[i : i + step]


def _send(client: httpx.Client, base: str, req: Req, tls: bool) -> int | None:
    """The status of ``req``'s answer; None if the server closed the connection without one."""
    if req.raw:
        return _send_raw(base, req, tls)
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers.items()]
    content: bytes | Iterator[bytes] = _chunks(req.body, req.chunks) if req.chunks else req.body
    try:
        return client.request(req.method, base + req.path, content=content, headers=headers).status_code
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
        return None


def _send_raw(base: str, req: Req, tls: bool) -> int | None:
    url = httpx.URL(base)
    assert url.host
    assert url.port
    head = f"{req.method} {req.path} HTTP/1.1\r\nHost: {url.host}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    with socket.create_connection((url.host, url.port), timeout=10) as raw:
        sock: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw)
        try:
            sock.sendall(head.encode("latin-1") + req.body)
            answer = b""
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    return None
                answer += data
        except (ConnectionError, TimeoutError, ssl.SSLError):
            return None
    return int(answer.split(b" ", 2)[1])


def _drive(
    name: str,
    cases: Iterator[Req],
    client: httpx.Client,
    base: str,
    tls: bool,
    failures: list[str],
    extra_headers: dict[str, str] | None = None,
) -> Counter[int | None]:
    statuses: Counter[int | None] = Counter()
    for req in cases:
        if extra_headers and not any(k.lower() == "authorization" for k in req.headers):
            req = Req(req.kind, req.method, req.path, req.body, {**req.headers, **extra_headers}, req.chunks, req.raw)
        status = _send(client, base, req, tls)
        statuses[status] += 1
        if (status is None and req.kind != "oversize") or (status is not None and status >= 500):
            failures.append(f"{name} {req.kind} {req.method} {req.path[:60]} ({len(req.body)} bytes) -> {status}")
    return statuses


def _schemathesis(world: E2E, token: str, failures: list[str]) -> Counter[int]:
    schema = schemathesis.openapi.from_url(f"{world.api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    statuses: Counter[int] = Counter()
    for operation in operations:

        @settings(
            max_examples=API_EXAMPLES,
            phases=[Phase.explicit, Phase.generate],
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=world.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"api schemathesis {case.method} {case.formatted_path} -> {response.status_code}")

        run()
    assert statuses[200] >= 10  # the token works: routes really ran
    return statuses


def _ids(world: E2E) -> dict[str, int]:
    deployments = [d for ds in world.deployments().values() for d in ds]
    certs = world.certificates()
    assert deployments
    assert certs
    return {"device": deployments[0].device_id, "certificate": min(certs), "deployment": deployments[0].id or 1}


def test_no_5xx_and_no_traceback_on_either_port(e2e_factory: Callable[..., E2E]) -> None:
    world = e2e_factory(1)
    world.service.role = "all"
    world.service.start()
    (phone,) = world.add_phones([""])
    world.start_phones([phone])
    wait_until(
        lambda: any(d.state.value == "verified" for d in world.deployments().get(phone.config.mac, [])),
        60.0,
        what="the phone's first certificate verified (realistic data for the API)",
    )
    token = world.cli("token", "create", "--role", "admin", "--name", "fuzzer").stdout.strip().splitlines()[-1]
    ids = _ids(world)
    poll_port = int(world.config_file.read_text().split("wpi_poll_port = ")[1].split()[0])
    foreign = f"127.{world.second}.{world.third}.250"
    failures: list[str] = []
    figures: dict[str, tuple[int, float]] = {}

    started = time.monotonic()
    transport = httpx.HTTPTransport(local_address=foreign, verify=False, retries=0)
    with httpx.Client(transport=transport, timeout=15) as client:
        wpi = _drive("wpi", phone_cases(FOREIGN_MAC), client, f"https://127.0.0.1:{world.wpi_port}", True, failures)
    figures["wpi"] = (wpi.total(), time.monotonic() - started)

    started = time.monotonic()
    with httpx.Client(transport=httpx.HTTPTransport(local_address=foreign, retries=0), timeout=15) as client:
        poll = _drive("poll", poll_cases(), client, f"http://127.0.0.1:{poll_port}", False, failures)
    figures["poll"] = (poll.total(), time.monotonic() - started)

    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        api = _drive(
            "api", api_cases(ids), client, world.api_url, False, failures, {"Authorization": f"Bearer {token}"}
        )
    generated = _schemathesis(world, token, failures)
    figures["api"] = (api.total() + generated.total(), time.monotonic() - started)

    for port, (count, seconds) in figures.items():
        print(f"fuzz {port}: {count} requests in {seconds:.1f} s")
    print(f"fuzz statuses: wpi {dict(wpi)}, poll {dict(poll)}, api {dict(api)}, schemathesis {dict(generated)}")
    assert failures == []
    assert wpi.total() >= 350
    assert 400 in wpi
    assert 413 in wpi
    assert httpx.get(f"{world.api_url}/healthz", timeout=10).status_code == 200
    log = world.service.log()
    assert "Traceback" not in log
    assert "Exception in ASGI application" not in log
    assert leaked_secrets(log) == []
