"""Shared e2e fixtures: ``certmgr serve`` as a real subprocess on a private data dir, simulated phones on a
background event loop, loopback address ranges unique per xdist worker, and the read-outs the assertions use
(database rows, the certificate a phone's WBM serves, a scan for leaked secrets).

Everything is bounded: every wait has a deadline, every process is killed at teardown.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from certmgr.db.engine import create_db_engine, session_scope
from certmgr.db.models import AuditEvent, Certificate, Deployment, Device
from certmgr.errors import DeploymentError
from certmgr.phones.probe import probe_once
from certmgr.simulator.faults import parse_fault_spec
from certmgr.simulator.fleet import fleet_mac
from certmgr.simulator.phone import PhoneConfig, SimPhone, alternate_ip, new_nonce
from certmgr.simulator.ports import port_free_on_all
from certmgr.wpi.codec import encode_workpoint
from certmgr.wpi.messages import Item, Reason, WorkpointMessage
from tests.conftest import REPO
from tests.leaks import leaked_secrets as find_leaks
from tests.pg import PostgresServer

T = TypeVar("T")

#: The PKCS#12 password secret of the e2e policies. It must never show up in a transcript, event or log.
P12_PASSWORD = "e2e-p12-password-not-secret"
P12_SECRET = "phones"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

_counter = itertools.count()


def worker_index() -> int:
    """0 for the main process or ``gw0``, 1 for ``gw1`` …"""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name[2:].isdigit() else 0


def loopback_block() -> tuple[int, int]:
    """``(second, third)`` octets of a 127.S.T.0/24 range for one test: the second octet is 40 + the xdist
    worker (integration tests use 127.0.x.x; ``ip-change`` targets land on 168 + worker), the third varies with
    the process and the call, so neither two workers nor two tests of one run share a range."""
    second = 40 + worker_index() % 40
    third = (os.getpid() * 7 + next(_counter) * 13) % 250 + 1
    return second, third


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.25, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / max(interval, 0.01)) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    pytest.fail(f"{what} not reached within {timeout:g}s")


def write_policy(policy_dir: Path, profiles: Sequence[str]) -> None:
    """The shipped default policy with ``profiles`` and the e2e password secret."""
    policy_dir.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'"{p}"' for p in profiles)
    text = (REPO / "policies" / "default.toml").read_text()
    assert 'profiles = ["plain"]' in text
    extra = f'\npassword_secret = "{P12_SECRET}"' if set(profiles) - {"plain"} else ""
    (policy_dir / "default.toml").write_text(text.replace('profiles = ["plain"]', f"profiles = [{listed}]{extra}"))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


#: Short pipeline timings for tests: ~1 s contact gap, 0.2 s ticks, seconds-long timeouts, 3 attempts.
FAST_SETTINGS: dict[str, object] = {
    "contact_gap_seconds": 1,
    "callback_timeout_seconds": 6,
    "retry_base_seconds": 1,
    "retry_max_seconds": 2,
    "max_attempts": 3,
    "dispatch_tick_seconds": 0.2,
    "interaction_timeout_seconds": 20,
    "busy_callback_seconds": 30,
    "probe_tries": 4,
    "probe_interval_seconds": 0.3,
    "probe_timeout_seconds": 2.0,
    "contact_me_timeout_seconds": 10.0,
    "scheduler_enabled": False,
    "node_id": "e2e-node",
    "log_level": "INFO",
}


@dataclass
class ServiceProcess:
    """``python -m certmgr serve --role ROLE`` with ``CERTMGR_CONFIG`` pointing at a TOML file."""

    config_file: Path
    log_file: Path
    role: str = "wpi"
    values: dict[str, object] = field(default_factory=dict)  # its settings (what the config file says)
    env: dict[str, str] = field(default_factory=dict)  # added to its environment (``CERTMGR_…`` settings too)
    proc: subprocess.Popen[str] | None = None
    starts: int = 0
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the process and wait until its WPI listener announces itself (``--role scheduler`` has no listener
        and announces nothing: it is only checked to be running)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
        env.update(CERTMGR_CONFIG=str(self.config_file), PYTHONUNBUFFERED="1", **self.env)
        self.starts += 1
        log: IO[str] = self.log_file.open("a", encoding="utf-8")
        log.write(f"\n===== start {self.starts} =====\n")
        log.flush()
        self._lines = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certmgr", "serve", "--role", self.role],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=str(self.config_file.parent),
        )
        log.close()
        assert self.proc.stdout is not None
        # The pump writes to *this* start's queue: a killed earlier process's pump may still be draining its pipe
        # (its key workers hold it open a moment longer) and must not report its end to this start.
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        if self.role == "scheduler":
            if self.proc.poll() is not None:
                pytest.fail(f"certmgr serve --role scheduler exited ({self.proc.returncode}):\n{self.log()}")
            return
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"certmgr serve did not announce its WPI listener within {timeout:g}s:\n{self.log()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(f"certmgr serve exited ({self.proc.returncode}) during start:\n{self.log()}")
            if line.startswith("wpi listening on"):
                return

    def _pump(self, stream: IO[str], lines: queue.Queue[str | None]) -> None:
        with self.log_file.open("a", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                lines.put(line)
        lines.put(None)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (no cleanup, no final writes)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM and wait (bounded), SIGKILL if it does not end; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


class PhoneLoop:
    """An asyncio loop in a daemon thread where the simulated phones live; the test thread drives it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="phones", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the phone loop and return its result (bounded by ``timeout``)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class E2E:
    """One test's world: address range, ports, config, the service process, the phones and a DB engine."""

    tmp: Path
    second: int
    third: int
    hosts: list[str]
    wbm_port: int
    contact_port: int
    wpi_port: int
    api_port: int
    config_file: Path
    service: ServiceProcess
    phones: list[SimPhone] = field(default_factory=list)
    loop: PhoneLoop = field(default_factory=PhoneLoop)
    database_url: str | None = None  # None: the SQLite file in the data dir
    values: dict[str, object] = field(default_factory=dict)  # the service's settings (config file)
    nodes: dict[str, ServiceProcess] = field(default_factory=dict)  # more processes on this world's database
    _engine: Engine | None = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "var"

    @property
    def wpi_url(self) -> str:
        return f"https://127.0.0.1:{self.wpi_port}/DeploymentService/LoginService"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            url = self.database_url or f"sqlite:///{(self.data_dir / 'certmgr.db').resolve()}"
            self._engine = create_db_engine(url)
        return self._engine

    def add_phones(self, specs: Sequence[str], **config: Any) -> list[SimPhone]:
        """One phone per fault spec on ``hosts[len(phones)…]``; ``config`` overrides :class:`PhoneConfig`."""
        added: list[SimPhone] = []
        for spec in specs:
            n = len(self.phones) + 1
            defaults: dict[str, Any] = {
                "mac": fleet_mac(self.second * 65536 + self.third * 256 + n),
                "ip": self.hosts[n - 1],
                "alt_ip": alternate_ip(self.hosts[n - 1]),
                "e164": str(4989700000 + n),
                "contact_port": self.contact_port,
                "wbm_port": self.wbm_port,
                "dls_url": self.wpi_url,
                "faults": parse_fault_spec(spec),
                "pkcs12_passwords": (P12_PASSWORD.encode(),),
                "contact_gap": 1.0,
                "request_timeout": 15.0,
                "interaction_timeout": 60.0,
            }
            phone = SimPhone(PhoneConfig(**{**defaults, **config}))
            self.phones.append(phone)
            added.append(phone)
        return added

    def start_phones(self, phones: Sequence[SimPhone], timeout: float = 60.0) -> None:
        """Start ``phones`` (bind, factory certificate, start-up) concurrently. An ``offline`` phone is first
        announced with one start-up from its address — it was on once, so certmgr knows it — then stays mute."""
        for phone in phones:
            if phone.faults.offline:
                announce_phone(self.wpi_url, phone)

        async def boot() -> None:
            semaphore = asyncio.Semaphore(16)

            async def one(phone: SimPhone) -> None:
                async with semaphore:
                    await phone.start(send_startup=True, wait_startup=False)

            await asyncio.gather(*(one(p) for p in phones))

        self.loop.run(boot(), timeout)

    def stop_phones(self, timeout: float = 20.0) -> None:
        async def stop() -> None:
            await asyncio.gather(*(p.stop(5.0) for p in self.phones), return_exceptions=True)

        self.loop.run(stop(), timeout)

    def add_node(self, name: str, role: str = "wpi", **settings: object) -> ServiceProcess:
        """Another ``certmgr serve --role ROLE`` process sharing this world's (PostgreSQL) database, as a node of a
        larger site: its own data dir, listener ports, node name ``name``, config file and log; the same secrets,
        policies and timings. ``settings`` override the world's. Stopped at teardown; not started here.
        """
        assert self.database_url, "several nodes share one PostgreSQL database"
        assert name not in self.nodes
        values: dict[str, object] = {
            **self.values,
            "data_dir": self.tmp / f"var-{name}",
            "wpi_port": port_free_on_all(["127.0.0.1"]),
            "wpi_poll_port": port_free_on_all(["127.0.0.1"]),
            "api_port": port_free_on_all(["127.0.0.1"]),
            "node_id": name,
            **settings,
        }
        config_file = self.tmp / f"certmgr-{name}.toml"
        write_config(config_file, values)
        node = self.nodes[name] = ServiceProcess(config_file, self.tmp / f"service-{name}.log", role=role)
        node.values = values
        return node

    def close(self) -> None:
        try:
            if self.phones:
                self.stop_phones()
        finally:
            self.loop.close()
            self.service.stop()
            for node in self.nodes.values():
                node.stop()
            if self._engine is not None:
                self._engine.dispose()

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``python -m certmgr ARGS`` as its own process on this world's configuration (checked: exit 0)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
        env.update(CERTMGR_CONFIG=str(self.config_file), PYTHONUNBUFFERED="1")
        result = subprocess.run(
            [sys.executable, "-m", "certmgr", *args],
            env=env,
            cwd=str(self.config_file.parent),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"certmgr {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        return result

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # --- read-outs --------------------------------------------------------------------------------------------
    def devices(self) -> dict[str, Device]:
        with session_scope(self.engine) as s:
            return {d.mac: d for d in s.exec(select(Device)).all()}

    def deployments(self) -> dict[str, list[Deployment]]:
        """Every deployment per MAC, oldest first."""
        out: dict[str, list[Deployment]] = {}
        with session_scope(self.engine) as s:
            rows = s.exec(
                select(Deployment, Device)
                .join(Device, col(Device.id) == col(Deployment.device_id))
                .order_by(col(Deployment.id))
            ).all()
            for dep, device in rows:
                out.setdefault(device.mac, []).append(dep)
        return out

    def certificates(self) -> dict[int, Certificate]:
        with session_scope(self.engine) as s:
            return {c.id: c for c in s.exec(select(Certificate)).all() if c.id is not None}

    def events(self) -> list[AuditEvent]:
        with session_scope(self.engine) as s:
            return list(s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all())


def make_e2e(tmp: Path, count: int, *, profiles: Sequence[str], settings: dict[str, object] | None = None) -> E2E:
    """Address range for ``count`` phones (+ their ``ip-change`` targets), ports, policy and service config."""
    second, third = loopback_block()
    hosts = [f"127.{second}.{third}.{n}" for n in range(1, count + 1)]
    all_hosts = hosts + [alternate_ip(h) for h in hosts]
    wbm_port = port_free_on_all(all_hosts, preferred=(443,) if os.geteuid() == 0 else ())
    contact_port = port_free_on_all(all_hosts, preferred=(8085,) if os.geteuid() == 0 else ())
    wpi_port = port_free_on_all(["127.0.0.1"])
    poll_port = port_free_on_all(["127.0.0.1"])
    write_policy(tmp / "policies", profiles)
    values: dict[str, object] = {
        "data_dir": tmp / "var",
        "policy_dir": tmp / "policies",
        "ca_config_dir": REPO / "ca",
        "ca_passphrase": "e2e-ca-passphrase-not-secret",
        "master_key": "e2e-master-key-not-secret-0123456789abcdef",
        "wpi_host": "127.0.0.1",
        "wpi_port": wpi_port,
        "wpi_poll_port": poll_port,
        "api_host": "127.0.0.1",
        "api_port": (api_port := port_free_on_all(["127.0.0.1"])),
        "wbm_port": wbm_port,
        "contact_me_port": contact_port,
        **FAST_SETTINGS,
        **(settings or {}),
    }
    config_file = tmp / "certmgr.toml"
    write_config(config_file, values)
    service = ServiceProcess(config_file, tmp / "service.log")
    service.values = values
    database_url = values.get("database_url")
    world = E2E(tmp, second, third, hosts, wbm_port, contact_port, wpi_port, api_port, config_file, service)
    world.database_url = str(database_url) if database_url else None
    world.values = values
    return world


def write_config(path: Path, values: dict[str, object]) -> None:
    """The service's TOML config file: ``values`` (``None`` leaves a setting unset) and the e2e PKCS#12 secret."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    lines += ["", "[pkcs12_passwords]", f"{P12_SECRET} = {_toml_value(P12_PASSWORD)}", ""]
    path.write_text("\n".join(lines))


@pytest.fixture
def e2e_factory(tmp_path: Path) -> Iterator[Callable[..., E2E]]:
    """``e2e_factory(count, profiles=[…], settings={…})`` → an :class:`E2E`, closed at teardown."""
    made: list[E2E] = []

    def factory(count: int, *, profiles: Sequence[str] = ("plain",), settings: dict[str, object] | None = None) -> E2E:
        world = make_e2e(tmp_path / f"world{len(made)}", count, profiles=profiles, settings=settings)
        made.append(world)
        return world

    yield factory
    for world in made:
        world.close()


def announce_phone(wpi_url: str, phone: SimPhone) -> None:
    """One ``start-up`` from the phone's own address (before the phone itself starts): the service records the
    phone as it would after any earlier boot. The answer (CleanUp: no job yet) is not needed."""
    cfg = phone.config
    items = (
        Item("mac-addr", cfg.mac),
        Item("e164", cfg.e164),
        Item("device-type", cfg.device_type),
        Item("software-version", cfg.software_version),
        Item("contact-me-uri", phone.contact_me_uri),
    )
    body = encode_workpoint(WorkpointMessage(new_nonce(), Reason.START_UP, items, max_items=-1))
    transport = httpx.HTTPTransport(local_address=cfg.ip, verify=False, retries=0)
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.post(wpi_url, content=body, headers={"Content-Type": "text/xml"})
    assert response.status_code == 200, response.text


def sha256_of(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of ``cert`` (DER), as certmgr stores fingerprints."""
    return cert.fingerprint(hashes.SHA256()).hex()


def served_sha256(ip: str, port: int) -> str | None:
    """SHA-256 of the certificate the phone's WBM serves right now (``None`` if nothing answers)."""
    try:
        return probe_once(ip, port, timeout=5.0)
    except DeploymentError:
        return None


def leaked_secrets(text: str, password: str = P12_PASSWORD) -> list[str]:
    """What in ``text`` (a log, transcripts, events) looks like a secret — the e2e PKCS#12 password, any PEM
    block, key material as base64/hex/escaped DER, long base64 runs: :func:`tests.leaks.leaked_secrets`."""
    return find_leaks(text, password)


def transcripts_and_events_text(world: E2E) -> str:
    """Every deployment transcript, ``last_error`` and ``info_raw`` and every audit event as one JSON text."""
    deps = [d for ds in world.deployments().values() for d in ds]
    parts: list[Any] = [[d.transcript, d.last_error] for d in deps]
    parts += [[e.action, e.subject_id, e.details] for e in world.events()]
    return json.dumps(parts, default=str)


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone (one a test may stop, pause or share between its nodes)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
