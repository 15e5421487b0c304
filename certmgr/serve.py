"""``certmgr serve``: the listeners and background work of one certmgr process, on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from certmgr.errors import ConfigError
from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.serve")


class Role(StrEnum):
    ALL = "all"
    API = "api"
    WPI = "wpi"
    SCHEDULER = "scheduler"


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`run_forever` (several servers share a loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Listener:
    """One uvicorn server, a human description of where it listens, and lines to announce with it."""

    name: str
    server: uvicorn.Server
    url: str
    app: object = None
    notes: list[str] = field(default_factory=list)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a read deadline: a request's headers and body must arrive within
    :attr:`request_timeout` seconds of the request's beginning; otherwise the connection is closed. uvicorn alone
    closes idle kept-alive connections but lets a peer that trickles a byte now and then hold a connection for ever
    (slowloris).

    A request begins when the connection opens (its first request), with the first byte of the next request on a
    kept-alive connection, or — for a pipelined request that uvicorn takes from its buffer once the previous
    response is sent (``on_response_complete``, not ``data_received``) — at that moment. Its deadline is armed
    once: later bytes never restart it. It stops once the whole request is in (the application's own time is not
    limited here) or the connection closes; between requests uvicorn's keep-alive timer rules."""

    request_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        #: Requests whose headers are in, counted by the exchanges (``self.cycle``) uvicorn creates for them — at
        #: most one per ``handle_events``: h11 holds the next request back (PAUSED) until this one's response is out.
        self._headers_in = 0
        self._last_cycle: object = None
        #: The request (1: the connection's first) that the running deadline is for; ``None``: none running.
        self._reading: int | None = None
        self._held = False
        self._deadline: asyncio.TimerHandle | None = None
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start the next, pipelined request from the buffer
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _request_being_read(self) -> int | None:
        """The number of the request whose headers or body the connection waits for; ``None``: none (the request
        is in and the application has it, the connection is idle between requests, or it is ending)."""
        if self.cycle is not self._last_cycle:
            self._last_cycle = self.cycle
            self._headers_in += 1
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return self._headers_in  # its headers are in, not all of its body (even if it was answered already)
        if state is h11.IDLE and (self.cycle is None or self.conn.trailing_data[0]):
            return self._headers_in + 1  # the connection's first request, or the next one has begun
        return None

    def _follow(self) -> None:
        """Arm the deadline when a new request begins, stop it when none is being read."""
        reading = self._request_being_read()
        if reading == self._reading:
            return
        self._stop_deadline()
        if self.transport.is_closing():
            return
        if reading is not None:
            self._reading = reading
            self._held = False  # whether the server held this request up at its deadline's last expiry
            self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)
        elif self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None:
            # Idle between requests, but the bytes that finished the last request's body (answered before it was
            # all in) came after the response and stopped uvicorn's keep-alive timer: start it again.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._reading = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        held = (cycle is not None and cycle.waiting_for_100_continue) or self.flow.read_paused
        if held or self._held:
            # The server holds the request up, not the client: the application has not asked for the body yet
            # (``Expect: 100-continue`` unanswered) or reading is paused until it catches up with a large body.
            # Both end when the application reads or answers. While they last, and for one whole deadline after
            # (the wait may have ended just before this expiry), the client gets another full deadline.
            self._held = held
            self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)
            return
        self.transport.close()


def make_listener(
    name: str, app: object, host: str, port: int, *, request_timeout: float = 10.0, **config: object
) -> Listener:
    """A uvicorn server for ``app`` on ``host:port`` with certmgr's HTTP/1.1 protocol (a read deadline of
    ``request_timeout`` seconds for each request's headers and body) and no logging of its own."""
    protocol = type("DeadlineH11", (DeadlineH11Protocol,), {"request_timeout": request_timeout})
    # log_config=None: uvicorn keeps its hands off logging (certmgr.logs configures it; JSON applies to uvicorn too).
    cfg = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        http=protocol,
        ws="none",  # no listener serves WebSockets: an Upgrade request is plain HTTP to the application
        log_config=None,
        access_log=False,
        lifespan="off",
        **config,  # type: ignore[arg-type]
    )
    scheme = "https" if config.get("ssl_certfile") else "http"
    shown = f"[{host}]" if ":" in host else host
    return Listener(name, _Server(cfg), f"{scheme}://{shown}:{port}", app)


BackgroundTask = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def run_forever(
    listeners: Sequence[Listener],
    background: Sequence[BackgroundTask] = (),
    announce: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``listeners`` and run ``background`` tasks until SIGINT/SIGTERM (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(listener.server.serve(), name=listener.name) for listener in listeners]
    # Announce only when every listener is bound, so that "listening on" is true when printed.
    for _ in range(600):
        if all(listener.server.started for listener in listeners) or any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.05)
    failed = [t for t in tasks if t.done()]
    if failed:
        for listener in listeners:
            listener.server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in failed:
            exc = t.exception()
            if exc is not None:
                raise exc
        raise SystemExit(f"a listener failed to start: {', '.join(t.get_name() for t in failed)}")
    for listener in listeners:
        announce(f"{listener.name} listening on {listener.url}")
        for note in listener.notes:
            announce(note)
    bg = [asyncio.create_task(job(stop), name=getattr(job, "__name__", "background")) for job in background]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks, *bg], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for listener in listeners:
        listener.server.should_exit = True
    results = await asyncio.gather(*tasks, *bg, return_exceptions=True)
    waiter.cancel()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("task ended with an error: %s", result)


API_TLS_DIR = "api"
API_CERT_FILE = "api-server.pem"
API_KEY_FILE = "api-server.key"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is a loopback address: ``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_tls_files(runtime: Runtime) -> tuple[Path, Path] | None:
    """The API listener's certificate and key (``None``: plain HTTP) as ``api_tls`` says: ``off`` — plain HTTP,
    allowed only on a loopback ``api_host``; ``auto`` — a certificate issued from certmgr's CA into
    ``<data_dir>/api/`` (the WPI listener's code path); ``files`` — ``api_tls_cert`` and ``api_tls_key``.

    Raises:
        ConfigError: plain HTTP on a non-loopback address; files missing or given without ``api_tls = files``.
        CAError: if the CA cannot issue. StorageError: if the files cannot be written.
    """
    from certmgr.issuance.listener_tls import ListenerTLS, ensure_listener_tls

    s = runtime.settings
    if s.api_tls == "off":
        if s.api_tls_cert or s.api_tls_key:
            raise ConfigError("api_tls_cert / api_tls_key are set but api_tls is off: set CERTMGR_API_TLS=files")
        if not is_loopback(s.api_host):
            raise ConfigError(
                f"the API listener would serve plain HTTP on {s.api_host}, which is not a loopback address: set "
                "CERTMGR_API_TLS=auto (a certificate from certmgr's CA) or CERTMGR_API_TLS=files with "
                "CERTMGR_API_TLS_CERT and CERTMGR_API_TLS_KEY, or bind CERTMGR_API_HOST=127.0.0.1"
            )
        return None
    if s.api_tls == "files" and not (s.api_tls_cert and s.api_tls_key):
        raise ConfigError("api_tls = files needs both api_tls_cert and api_tls_key")
    if s.api_tls == "auto" and (s.api_tls_cert or s.api_tls_key):
        raise ConfigError("api_tls = auto issues the certificate itself: unset api_tls_cert / api_tls_key")
    names = ("certmgr-api", *((s.api_public_name,) if s.api_public_name else ()))
    return ensure_listener_tls(
        runtime,
        ListenerTLS(
            what="API",
            cert_setting="api_tls_cert",
            key_setting="api_tls_key",
            cert_file=s.api_tls_cert,
            key_file=s.api_tls_key,
            folder=s.data_dir / API_TLS_DIR,
            cert_name=API_CERT_FILE,
            key_name=API_KEY_FILE,
            common_name="certmgr API",
            dns_names=names,
            addresses=(s.api_host,),
        ),
    )


def cli_program() -> str:
    """How this process's CLI was started, to print commands that work as they are (``.venv/bin/certmgr``)."""
    program = sys.argv[0] if sys.argv else ""
    if os.path.basename(program) == "certmgr":
        return program
    return f"{sys.executable} -m certmgr"


def console_notes(api_url: str) -> list[str]:
    """What ``certmgr serve`` prints about the web console: its address and how to get a token to log in."""
    return [
        f"console at {api_url}/ui/",
        f"log in with an API token; create one (printed once) with: {cli_program()} token create --role admin "
        "--name admin",
    ]


def build_listeners(runtime: Runtime, role: Role) -> tuple[list[Listener], list[BackgroundTask]]:
    """The listeners and background tasks of ``role``:

    * ``api`` — the REST API and the web console (HTTPS as ``api_tls`` says, see :func:`api_tls_files`);
    * ``wpi`` — the phone-facing listeners (TLS WPI + poll) and the interaction hub (callbacks, probes);
    * ``scheduler`` — the periodic jobs of :mod:`certmgr.scheduling` (renewal reconcile, probe sweep, expiry and
      CA notifications, audit checkpoints, rollback);
    * ``all`` — everything in one process.

    The deployment dispatcher (contact-me, retries) runs with ``all``, or with the role named by the
    ``dispatch_role`` setting (``wpi`` by default, next to the hub; ``scheduler`` for a split in which the
    scheduler process reaches the phones). Processes of different roles share only the database.
    """
    from certmgr.console.app import create_web_app

    settings = runtime.settings
    listeners: list[Listener] = []
    background: list[BackgroundTask] = []
    hub = None
    monitor = None
    if role in (Role.ALL, Role.SCHEDULER) and settings.scheduler_enabled:
        from certmgr.scheduling.scheduler import SchedulerMonitor

        monitor = SchedulerMonitor()  # what GET /api/v1/scheduler shows when the API runs in this process
    if role in (Role.ALL, Role.API):
        app = create_web_app(runtime, scheduler=monitor)
        tls = api_tls_files(runtime)
        ssl: dict[str, object] = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
        # proxy_headers off: the client address (login throttling, audit) is the TCP peer, never a header.
        api = make_listener(
            "api",
            app,
            settings.api_host,
            settings.api_port,
            request_timeout=settings.request_timeout_seconds,
            timeout_keep_alive=settings.keep_alive_timeout_seconds,
            proxy_headers=False,
            **ssl,
        )
        if settings.console_enabled:
            api.notes += console_notes(api.url)
        listeners.append(api)
    if role in (Role.ALL, Role.WPI):
        from certmgr.phones.hub import DeploymentHub
        from certmgr.phones.listener import create_poll_app, create_wpi_app
        from certmgr.phones.tls import ensure_wpi_tls

        cert_file, key_file = ensure_wpi_tls(runtime)
        hub = DeploymentHub(runtime)
        # Phone-facing listeners: HTTP/1.1 (h11), keep-alive 10 s by default (§3.2), and never trust
        # X-Forwarded-For: the TCP peer address is what D10 checks.
        phone: dict[str, Any] = {
            "timeout_keep_alive": settings.keep_alive_timeout_seconds,
            "proxy_headers": False,
            "server_header": False,
            "request_timeout": settings.request_timeout_seconds,
        }
        listeners.append(
            make_listener(
                "wpi",
                create_wpi_app(hub, max_body=settings.wpi_max_body),
                settings.wpi_host,
                settings.wpi_port,
                ssl_certfile=str(cert_file),
                ssl_keyfile=str(key_file),
                **phone,
            )
        )
        listeners.append(
            make_listener("wpi-poll", create_poll_app(runtime), settings.wpi_host, settings.wpi_poll_port, **phone)
        )
    if role is Role.ALL or role.value == settings.dispatch_role:
        from certmgr.phones.dispatcher import Dispatcher

        dispatcher = Dispatcher(runtime, hub)

        async def deployment_dispatch(stop: asyncio.Event) -> None:
            await dispatcher.run(stop)

        background.append(deployment_dispatch)
    if monitor is not None:
        from certmgr.scheduling.scheduler import run_scheduler

        async def scheduler(stop: asyncio.Event) -> None:
            await run_scheduler(runtime, stop, monitor=monitor)

        background.append(scheduler)
    return listeners, background


def serve(runtime: Runtime, role: Role = Role.ALL, announce: Callable[[str], None] = print) -> None:
    """Run the service for ``role`` in the foreground until interrupted."""
    listeners, background = build_listeners(runtime, role)

    async def main() -> None:
        # Database steps and TLS probes of in-flight phones run in worker threads (asyncio.to_thread). The
        # default pool (cores + 4 threads) would queue 50 concurrent phones behind a handful of threads, so it
        # is sized to the deployment concurrency.
        workers = runtime.settings.deploy_concurrency + 8
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="certmgr"))
        await run_forever(listeners, background, announce)

    asyncio.run(main())
