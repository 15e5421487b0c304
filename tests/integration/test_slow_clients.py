"""Slow and idle clients on every listener of ``certmgr serve`` — the WPI listener (TLS), the DCMP poll listener
and the API — which share one connection-limits home: :class:`certmgr.serve.DeadlineH11Protocol` (the read
deadline ``request_timeout_seconds``) and uvicorn's keep-alive timer (``keep_alive_timeout_seconds``), both set in
:func:`certmgr.serve.build_listeners`.

* A slowloris client sends header bytes steadily, one byte every 0.1 s — ten times inside the 1 s deadline — on a
  fresh connection and on a kept-alive one after a complete request. The server must close the connection about
  the deadline after the request's first byte, not keep it open for as long as bytes keep coming. The test waits
  for the close (``recv`` returns ``b""`` or the connection is reset) within 15 s, while the trickle would run
  100 s; a deadline that restarts on every byte is never reached and the test fails at its bound.
* An idle kept-alive connection after one complete request is closed after the keep-alive timeout (1 s here; the
  read deadline is set to 60 s so that it cannot be what closes it).
* Pipelining: one send holds a complete request and the start of a second one (headers with an unfinished body,
  or unfinished headers), which uvicorn takes from its buffer after the first response: closed at the deadline.
* A request answered before its body is in, whose body then arrives: the connection, idle after it, is closed
  after the keep-alive timeout.

Nothing here measures time: each check waits for the close event, bounded.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certmgr.runtime import Runtime, open_runtime
from certmgr.serve import make_listener
from certmgr.settings import Settings
from certmgr.simulator.ports import free_port
from tests.integration.fake_phone import Stack

pytestmark = pytest.mark.timeout(120)

#: One header byte this often: ten times inside the read deadline.
TRICKLE_EVERY_S = 0.1
#: At most this many bytes per connection: 100 s of trickling, far more than CLOSE_WITHIN_S.
TRICKLE_MAX_BYTES = 1000
#: The close must be seen within this: longer than the 1 s deadline (or keep-alive timeout) with ample slack on a
#: loaded machine, much shorter than the trickle.
CLOSE_WITHIN_S = 15.0
#: A request every listener answers (405, 404, whatever it is) and keeps the connection alive after.
REQUEST = b"GET /slow-client-probe HTTP/1.1\r\nHost: certmgr\r\n\r\n"
#: The trickled request: a valid request line and an endless valid header, so the server has nothing to answer.
SLOW_REQUEST = b"GET /slow-client-probe HTTP/1.1\r\nHost: certmgr\r\nX-Slow: " + b"a" * TRICKLE_MAX_BYTES


def _service(settings: Settings, tmp_path: Path, **limits: float) -> Iterator[tuple[Runtime, Stack]]:
    custom = settings.model_copy(
        update={
            "wpi_host": "127.0.0.1",
            "wpi_port": free_port("127.0.0.1"),
            "wpi_poll_port": free_port("127.0.0.1"),
            "api_host": "127.0.0.1",
            "api_port": free_port("127.0.0.1"),
            "scheduler_enabled": False,
            **limits,
        }
    )
    runtime = open_runtime(custom, create_ca=True)
    stack = Stack(runtime, role="all")
    try:
        yield runtime, stack
    finally:
        stack.close()
        runtime.close()


@pytest.fixture
def deadline_1s(settings: Settings, tmp_path: Path) -> Iterator[tuple[Runtime, Stack]]:
    """Every listener with a 1 s read deadline and a keep-alive timeout far beyond the test."""
    yield from _service(settings, tmp_path, request_timeout_seconds=1.0, keep_alive_timeout_seconds=60.0)


@pytest.fixture
def keep_alive_1s(settings: Settings, tmp_path: Path) -> Iterator[tuple[Runtime, Stack]]:
    """Every listener with a 1 s keep-alive timeout and a read deadline far beyond the test."""
    yield from _service(settings, tmp_path, request_timeout_seconds=60.0, keep_alive_timeout_seconds=1.0)


def _connect(runtime: Runtime) -> dict[str, socket.socket]:
    """One connection to each listener (TLS where the listener speaks it), blocking with a timeout."""
    s = runtime.settings
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the WPI listener's certificate is not what is tested here
    conns: dict[str, socket.socket] = {}
    for name, port, tls in (
        ("wpi", s.wpi_port, True),
        ("wpi-poll", s.wpi_poll_port, False),
        ("api", s.api_port, False),
    ):
        raw = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WITHIN_S)
        conns[name] = context.wrap_socket(raw) if tls else raw
    return conns


def _complete_exchange(name: str, sock: socket.socket) -> None:
    """Send :data:`REQUEST` and read its whole response; the connection stays open (kept alive)."""
    sock.sendall(REQUEST)
    _read_answer(name, sock)


def _read_answer(name: str, sock: socket.socket) -> str:
    """Read one whole response (with a Content-Length) and return its status line; the connection stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"{name}: closed before answering"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0].startswith("http/1.1 "), (name, lines[0])
    assert "connection: close" not in lines, f"{name}: the server does not keep the connection alive"
    length = next(int(line.split(":", 1)[1]) for line in lines if line.startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, f"{name}: closed in the middle of the answer"
        body += chunk
    return lines[0]


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (non-blocking): ``recv`` returns ``b""`` or the connection is reset.
    Anything the server sends first (a TLS session ticket, an error answer) is read and passed over."""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return True


def _wait_for_close(conns: dict[str, socket.socket], trickle: bytes = b"") -> set[str]:
    """Send ``trickle`` to every connection one byte each :data:`TRICKLE_EVERY_S` (nothing when empty) until the
    server closes it; bounded by :data:`CLOSE_WITHIN_S` and the trickle's length. The names of those closed."""
    for sock in conns.values():
        sock.setblocking(False)
    still_open = dict(conns)
    closed: set[str] = set()
    sent = 0
    bound = time.monotonic() + CLOSE_WITHIN_S
    while still_open and time.monotonic() < bound and (not trickle or sent < len(trickle)):
        if trickle:
            for name, sock in list(still_open.items()):
                try:
                    sock.send(trickle[sent : sent + 1])
                except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    closed.add(name)
                    del still_open[name]
            sent += 1
        # The pace of the trickle, and the wait for the server's close: whichever comes first.
        readable, _, _ = select.select(list(still_open.values()), [], [], TRICKLE_EVERY_S)
        for name, sock in list(still_open.items()):
            if sock in readable and _closed(sock):
                closed.add(name)
                del still_open[name]
    return closed


def test_a_slowloris_client_is_closed_at_the_read_deadline_on_every_listener(
    deadline_1s: tuple[Runtime, Stack],
) -> None:
    """Pins the read deadline of ``DeadlineH11Protocol``: it runs from a request's first byte, whatever comes
    after — on a fresh connection and on a kept-alive one after a complete request. Tried: re-arming the
    deadline on every received byte keeps all six connections open until the test's bound, and it fails."""
    runtime, _stack = deadline_1s
    fresh = _connect(runtime)
    kept = _connect(runtime)
    try:
        for name, sock in kept.items():
            _complete_exchange(name, sock)
        conns = {f"{name} (fresh)": sock for name, sock in fresh.items()}
        conns |= {f"{name} (kept alive)": sock for name, sock in kept.items()}
        closed = _wait_for_close(conns, SLOW_REQUEST)
        assert sorted(closed) == sorted(conns), f"still open while trickling: {sorted(set(conns) - closed)}"
    finally:
        for sock in (*fresh.values(), *kept.values()):
            sock.close()


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout_on_every_listener(
    keep_alive_1s: tuple[Runtime, Stack],
) -> None:
    """Pins ``keep_alive_timeout_seconds`` on every listener (``timeout_keep_alive`` in ``build_listeners``): after
    one complete request the connection, left idle, is closed — here after 1 s, with the read deadline at 60 s.
    Tried: ``timeout_keep_alive`` at 60 s on the phone listeners (or on the API) keeps those connections open past
    the bound and fails; left out of the API's configuration (uvicorn's own 5 s) it still passes — the test pins
    that idle connections are closed, not the exact figure."""
    runtime, _stack = keep_alive_1s
    conns = _connect(runtime)
    try:
        for name, sock in conns.items():
            _complete_exchange(name, sock)
        closed = _wait_for_close(conns)
        assert sorted(closed) == sorted(conns), f"still open while idle: {sorted(set(conns) - closed)}"
    finally:
        for sock in conns.values():
            sock.close()


#: Per listener, the headers of a second request that announce a body of 100 bytes, and the body's first bytes.
#: The WPI route and the API's device creation wait for the body; the poll listener answers a POST at once (405)
#: without reading it, which leaves the request unfinished all the same.
UNFINISHED_BODY = {
    "wpi": b"POST /DeploymentService/LoginService HTTP/1.1\r\nHost: certmgr\r\nContent-Type: text/xml\r\n"
    b"Content-Length: 100\r\n\r\n<?xml",
    "wpi-poll": b"POST /dcmp/contact-me HTTP/1.1\r\nHost: certmgr\r\nContent-Length: 100\r\n\r\n12345",
    "api": b"POST /api/v1/devices HTTP/1.1\r\nHost: certmgr\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{",
}
#: The first bytes of a second request's headers.
UNFINISHED_HEADERS = SLOW_REQUEST[:60]


def test_a_pipelined_unfinished_request_is_closed_at_the_read_deadline_on_every_listener(
    deadline_1s: tuple[Runtime, Stack],
) -> None:
    """Pins the read deadline for a request that uvicorn takes from its buffer once the previous response is sent
    (``on_response_complete`` → ``handle_events``, not ``data_received``): one send holds a complete request and
    the headers of a second one whose body never comes — or only the first bytes of the second one's headers. The
    server must close the connection (1 s deadline here, keep-alive 60 s), not keep it open with no timer (or
    until the keep-alive timeout). Tried: without a deadline for such requests all six connections stay open
    until the test's bound, and it fails."""
    runtime, _stack = deadline_1s
    body = _connect(runtime)
    headers = _connect(runtime)
    try:
        for name, sock in body.items():
            sock.sendall(REQUEST + UNFINISHED_BODY[name])
        for sock in headers.values():
            sock.sendall(REQUEST + UNFINISHED_HEADERS)
        conns = {f"{name} (unfinished body)": sock for name, sock in body.items()}
        conns |= {f"{name} (unfinished headers)": sock for name, sock in headers.items()}
        closed = _wait_for_close(conns)
        assert sorted(closed) == sorted(conns), f"still open: {sorted(set(conns) - closed)}"
    finally:
        for sock in (*body.values(), *headers.values()):
            sock.close()


#: Per listener, a request that is answered before its body is read, and the body.
ANSWERED_EARLY = {
    "wpi": (b"POST /DeploymentService/LoginService HTTP/1.1\r\nHost: certmgr\r\nContent-Length: 70000\r\n\r\n", 413),
    "wpi-poll": (b"POST /dcmp/contact-me HTTP/1.1\r\nHost: certmgr\r\nContent-Length: 70000\r\n\r\n", 405),
    "api": (b"POST /ui/login HTTP/1.1\r\nHost: certmgr\r\nContent-Length: 70000\r\n\r\n", 413),
}


def test_a_connection_idle_after_a_body_sent_past_its_answer_is_closed_after_the_keep_alive_timeout(
    keep_alive_1s: tuple[Runtime, Stack],
) -> None:
    """An application may answer a request before reading its body (413 for a declared size over a cap, 405);
    h11 keeps the connection alive and reads the body after the answer. The bytes that finish that body stop
    uvicorn's keep-alive timer, so ``DeadlineH11Protocol`` starts it again once the request is in: the connection,
    then idle, is closed after the keep-alive timeout (1 s here; read deadline 60 s). Tried: without that restart
    all three connections stay open until the test's bound, and it fails (before the pipelining fix they were
    held until the read deadline of the answered request: it also fails)."""
    runtime, _stack = keep_alive_1s
    conns = _connect(runtime)
    try:
        for name, sock in conns.items():
            head, status = ANSWERED_EARLY[name]
            sock.sendall(head)
            assert _read_answer(name, sock).startswith(f"http/1.1 {status} "), name
            sock.sendall(b"x" * 70000)
        closed = _wait_for_close(conns)
        assert sorted(closed) == sorted(conns), f"still open while idle: {sorted(set(conns) - closed)}"
    finally:
        for sock in conns.values():
            sock.close()


# --- the server's own waits are not the client's ----------------------------------------------------------------
#: The application below holds each request this long before it reads the body: past the 1 s deadline.
HOLD_S = 2.0
#: A body large enough for uvicorn to stop reading (64 KiB high-water mark) until the application reads.
LARGE_BODY = 600 * 1024


async def _reads_late(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI application that takes :data:`HOLD_S` before reading the body, then echoes its length."""
    if scope["type"] != "http":
        return
    await asyncio.sleep(HOLD_S)  # the server's own time (a busy application), not the test's synchronisation
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def late_reader() -> Iterator[int]:
    """certmgr's listener (``make_listener``: the read deadline, 1 s here) serving :func:`_reads_late`."""
    port = free_port("127.0.0.1")
    listener = make_listener("late", _reads_late, "127.0.0.1", port, request_timeout=1.0)
    thread = threading.Thread(target=lambda: asyncio.run(listener.server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while not listener.server.started:
            assert time.monotonic() < deadline, "the listener did not start"
            assert thread.is_alive(), "the listener stopped"
            time.sleep(0.01)
        yield port
    finally:
        listener.server.should_exit = True
        thread.join(CLOSE_WITHIN_S)


def test_the_deadline_does_not_count_time_the_server_makes_the_client_wait(late_reader: int) -> None:
    """``Expect: 100-continue``: the client may send the body only after the ``100`` that uvicorn sends when the
    application first reads, and a large body stops being read until the application reads. Both waits are the
    server's: with the application holding the request past the 1 s deadline, the client still gets its ``100``
    (then sends the body) and its large body read, and both get their answer. Tried: with every expiry closing
    the connection, the first is closed before its ``100`` and the second reset mid-body."""
    with socket.create_connection(("127.0.0.1", late_reader), timeout=CLOSE_WITHIN_S) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: certmgr\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(b"hello")
        assert _read_answer("expect-100", sock).startswith("http/1.1 200 ")
    with socket.create_connection(("127.0.0.1", late_reader), timeout=CLOSE_WITHIN_S) as sock:
        head = b"POST /x HTTP/1.1\r\nHost: certmgr\r\nContent-Length: %d\r\n\r\n" % LARGE_BODY
        sender = threading.Thread(target=sock.sendall, args=(head + b"x" * LARGE_BODY,), daemon=True)
        sender.start()
        assert _read_answer("large body", sock).startswith("http/1.1 200 ")
        sender.join(CLOSE_WITHIN_S)
