"""Benchmark: a fleet of simulated phones, full deploy + verify over real TLS on loopback, against a floor.

    .venv/bin/python bench/deploy.py [--phones 1000] [--db sqlite|postgres] [--concurrency 50]
                                     [--faults] [--disrupt] [--no-overlapped] [--profile DIR]

Every party has a process of its own, so that each one's CPU is measured apart: the simulated phones
(:mod:`bench.simproc`, up to 4,000 phones a process on 127.200.x.y), the server under test, and this bench
(the floor's client, the clock, the database queries that watch progress). Phases:

1. **floor** — a bare uvicorn TLS handler (the same server stack certmgr uses) answers canned DLS messages:
   ``solicited`` → ``WriteItems`` (one pre-built plain PKCS#12), ``reply-to WriteItems`` → ``ReadItems``,
   anything else → ``CleanUp``; this bench sends each contact-me and, once the handler has sent ``CleanUp``,
   TLS-probes the WBM until it serves the new certificate (as certmgr does), ``--concurrency`` phones at a time.
   Contact-me + 3 HTTPS round trips + probe, with no database, no issuance, no state machine.
2. **issuance** — ``certmgr serve --role wpi`` with a policy whose maintenance window is closed: the phones
   report, the reconciler issues their certificates (RSA-2048 key generation dominates), nothing is deployed.
3. **delivery** — the service restarted with the window open: contact-me → WriteItems → ReadItems → probe →
   verified for every phone. Ratio = floor time ÷ delivery time (service ready → all verified).
4. **overlapped** — as in operation: a fresh service (new data dir, new database) with the window open from
   the start; the phones report, issuance and delivery run concurrently. Ratio = overlapped ÷ the slower of
   issuance alone and the floor.

Measured per phase: wall time; CPU seconds of the service's own process and, apart, of its key-generation
workers; CPU of the floor handler and of the simulator; the service's peak RSS (``VmHWM``) and its RSS when the
first 1,000 phones were verified; the database's size; delivery p50/p95 (contact-me → verified, from the
database's own timestamps). At the end every reachable phone must be verified with exactly one accepted write
per service phase; the bench prints the phones that are not.

``--faults``: 1 % of the phones offline, 1 % slow (2 s before each message), 1 % busy on the first write,
0.5 % move to another address after accepting the certificate; the floor runs on the healthy ones only.
``--disrupt``: when 40 % are verified, the database goes away for 10 s (PostgreSQL: fast shutdown and start on
the same port) or, on SQLite, the service is killed (``kill -9``) and started again.
``--profile DIR``: py-spy samples the service (and its key workers) during delivery and overlapped; the raw
stacks go to DIR and a summary of where the time went is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: python bench/deploy.py
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from sqlalchemy import func, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import col, select  # noqa: E402

from bench.common import (  # noqa: E402
    ServeProcess,
    children_of,
    count_certs,
    count_verified,
    proc_cpu,
    proc_status_kib,
    stop_cleanly_on_signals,
    write_policy,
)
from bench.simproc import SimFleet, raise_nofile  # noqa: E402
from certmgr.db.engine import create_db_engine, session_scope  # noqa: E402
from certmgr.db.models import AuditEvent, Deployment, Device  # noqa: E402
from certmgr.phones.probe import probe_once  # noqa: E402
from certmgr.simulator.fleet import fleet_addresses  # noqa: E402
from certmgr.simulator.ports import free_port, port_free_on_all  # noqa: E402
from certmgr.wpi.codec import encode_dls  # noqa: E402
from certmgr.wpi.contactme import build_contact_me  # noqa: E402
from certmgr.wpi.messages import Action, DLSMessage, Item, cleanup_message  # noqa: E402

BASE_IP = "127.200.0.1"
NONCE_MARK = "NONCEPLACEHOLDER0000000000000000"
PHASE_TIMEOUT_S = 3600.0
PAGE = os.sysconf("SC_PAGE_SIZE")
#: The fault mix of ``--faults`` (rules of the simulator: every N-th phone of a simulator process).
FAULT_MIX = ("100:offline", "101:slow=2", "103:busy-first-write", "199:ip-change")


# --- helpers ----------------------------------------------------------------------------------------------------
def self_signed_rsa(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


async def bounded_gather(items: list[Any], limit: int, fn: Callable[[Any], Awaitable[None]]) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def one(item: Any) -> None:
        async with semaphore:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


# --- /proc accounting -------------------------------------------------------------------------------------------
def proc_mem_kib(pid: int) -> dict[str, int]:
    return proc_status_kib(pid, ("VmRSS", "VmHWM"))


@dataclass
class CpuSample:
    main: float
    workers: float


# --- the floor server (a subprocess: python bench/deploy.py --floor-server …) -------------------------------------
def floor_server(port: int, cert: str, key: str, p12_file: str) -> None:
    """A bare ASGI app on uvicorn + TLS answering canned DLS messages (the nonce is repeated, D2). Prints the
    caller's address on stdout when it sends ``CleanUp`` after a ``ReadItems`` reply (the exchange is over)."""
    import uvicorn

    p12 = Path(p12_file).read_bytes().decode()
    canned = {
        "write": encode_dls(DLSMessage(NONCE_MARK, Action.WRITE_ITEMS, (Item("wbm-server-certificate", p12),))),
        "read": encode_dls(DLSMessage(NONCE_MARK, Action.READ_ITEMS, (Item("wbm-server-certificate-info"),))),
        "cleanup": encode_dls(cleanup_message(NONCE_MARK)),
    }
    nonce_re = re.compile(rb'nonce="([0-9A-Za-z]{1,64})"')

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        for _ in range(1000):
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        match = nonce_re.search(body)
        nonce = match.group(1) if match else b"0"
        if b">solicited<" in body:
            kind = "write"
        elif b'action="WriteItems"' in body:
            kind = "read"
        else:
            kind = "cleanup"
        reply = canned[kind].replace(NONCE_MARK.encode(), nonce)
        headers = [(b"content-type", b"text/xml; charset=utf-8"), (b"content-length", str(len(reply)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})
        if kind == "cleanup" and b'action="ReadItems"' in body and scope.get("client"):
            sys.stdout.write(f"done {scope['client'][0]}\n")
            sys.stdout.flush()

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        http="h11",
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=10,
    )
    uvicorn.Server(config).run()


# --- certmgr serve (a subprocess) ---------------------------------------------------------------------------------
class Service(ServeProcess):
    """``certmgr serve --role wpi`` in ``work``, optionally sampled by py-spy."""

    def __init__(self, work: Path, values: dict[str, object], password: str) -> None:
        super().__init__(work, values, password)
        self.work = work
        self.profiler: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0, profile: Path | None = None) -> float:
        up = super().start(timeout)
        if profile is not None:
            self.start_profile(profile)
        return up

    def start_profile(self, out: Path) -> None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("--profile needs py-spy (make installs it into .venv)")
        self.profiler = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(self.pid),
                "--subprocesses",
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "py-spy.log").open("ab"),
        )

    def stop_profile(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            try:
                self.profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait(timeout=10)
            self.profiler = None

    def cpu(self) -> CpuSample:
        return CpuSample(proc_cpu(self.pid), sum(proc_cpu(c) for c in children_of(self.pid)))

    def kill(self) -> None:
        self.stop_profile()
        super().kill()

    def stop(self) -> None:
        self.stop_profile()
        super().stop()


# --- database views -------------------------------------------------------------------------------------------
def deployment_summary(engine: Engine) -> dict[str, Any]:
    with session_scope(engine) as s:
        states = Counter(str(st) for st in s.exec(select(Deployment.state)).all())
        rows = s.exec(select(Deployment.contacted_at, Deployment.verified_at)).all()
        audit = int(s.exec(select(func.count()).select_from(AuditEvent)).one())
    latencies = [(v - c).total_seconds() for c, v in rows if c is not None and v is not None]
    return {
        "states": dict(states),
        "deployments": sum(states.values()),
        "audit_events": audit,
        "p50": pct(latencies, 0.5),
        "p95": pct(latencies, 0.95),
        "contact_first": min((c for c, _ in rows if c is not None), default=None),
        "verified_last": max((v for _, v in rows if v is not None), default=None),
    }


def certificates_written(engine: Engine) -> dict[str, int]:
    """Per phone (MAC): how many distinct certificates certmgr recorded as written to it. A phone that changes
    address gets a second certificate (for its new address) and accepts a second write: the rule is one accepted
    write per certificate, checked against the simulator's own count."""
    with session_scope(engine) as s:
        rows = s.exec(
            select(Device.mac, func.count(func.distinct(Deployment.certificate_id)))
            .join(Deployment, col(Deployment.device_id) == col(Device.id))
            .where(col(Deployment.written_at).is_not(None))
            .group_by(col(Device.mac))
        ).all()
    return {mac: int(count) for mac, count in rows}


def not_one_write_per_certificate(
    stats: dict[str, dict[str, Any]], before: dict[str, int], written: dict[str, int]
) -> dict[str, tuple[int, int, str]]:
    """Phones whose accepted writes (simulator) differ from the certificates recorded as written to them:
    (writes accepted, certificates written, faults)."""
    return {
        mac: (p["writes_accepted"] - before[mac], written.get(mac, 0), p["faults"])
        for mac, p in stats.items()
        if p["writes_accepted"] - before[mac] != written.get(mac, 0)
        or ("offline" not in p["faults"] and written.get(mac, 0) < 1)
    }


def database_bytes(engine: Engine, sqlite_file: Path | None) -> int:
    if sqlite_file is not None:
        with engine.connect() as conn:  # the WAL is transient: fold it into the database file first
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in sqlite_file.parent.glob(sqlite_file.name + "*"))
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


# --- profile summary ----------------------------------------------------------------------------------------------
def summarise_profile(raw: Path, top: int = 18) -> list[str]:
    """Where the samples went: shares by area (the first certmgr/library frame that names one) and the
    functions with the largest inclusive share."""
    if not raw.exists():
        return [f"(no profile at {raw})"]
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        seen: set[str] = set()
        for frame in frames:
            name = re.sub(r":\d+\)$", ")", frame.strip())
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
        areas[_area(frames)] += count
    if total == 0:
        return ["(empty profile)"]
    out = [f"{total} samples"]
    out += [f"  area {share / total:6.1%}  {name}" for name, share in areas.most_common(14)]
    out += [
        f"  incl {share / total:6.1%}  {name[:150]}"
        for name, share in inclusive.most_common(200)
        if ("certmgr" in name or "ssl" in name or "sqlalchemy" in name or "h11" in name) and "process " not in name
    ][:top]
    return out


_AREAS = (
    ("keypool", "key generation (workers)"),
    ("generate_private_key", "key generation"),
    ("do_handshake", "TLS handshakes"),
    ("probe", "TLS probe"),
    ("ssl.py", "TLS record layer"),
    ("sslproto", "TLS record layer"),
    ("audit", "audit log"),
    ("sqlalchemy", "database (SQLAlchemy)"),
    ("sqlite3", "database (driver)"),
    ("psycopg", "database (driver)"),
    ("codec", "WPI codec"),
    ("pkcs12", "PKCS#12"),
    ("issuance", "issuance"),
    ("h11", "HTTP (h11/uvicorn)"),
    ("uvicorn", "HTTP (h11/uvicorn)"),
    ("httpx", "HTTP client (httpx)"),
    ("httpcore", "HTTP client (httpx)"),
    ("logging", "logging"),
)


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for needle, area in _AREAS:
            if needle in frame:
                return area
    return "other (event loop, threads)"


# --- the phases ---------------------------------------------------------------------------------------------------
async def wait_for(
    predicate: Callable[[], int], goal: int, timeout: float, what: str, on_value: Callable[[int], None] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if on_value is not None:
            on_value(value)
        if value >= goal:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{what}: {value}/{goal} within {timeout:g}s")


@dataclass
class Floor:
    seconds: float
    handler_cpu_s: float
    client_cpu_s: float
    simulator_cpu_s: float
    phones: int


async def run_floor(
    sim: SimFleet, ips: list[str], work: Path, concurrency: int, wbm_port: int, contact_port: int
) -> Floor:
    key, cert = self_signed_rsa("floor DLS")
    cert_file, key_file, p12_file = work / "floor.pem", work / "floor.key", work / "floor.p12"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    leaf_key, leaf = self_signed_rsa("floor leaf")
    leaf_sha = leaf.fingerprint(hashes.SHA256()).hex()
    p12 = pkcs12.serialize_key_and_certificates(b"floor", leaf_key, leaf, None, serialization.NoEncryption())
    p12_file.write_bytes(base64.b64encode(p12))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--floor-server", str(port), str(cert_file), str(key_file), str(p12_file)],
        stdout=subprocess.PIPE,
        stderr=(work / "floor.log").open("ab"),
    )
    loop = asyncio.get_running_loop()
    done: dict[str, asyncio.Event] = {ip: asyncio.Event() for ip in ips}

    def read_done() -> None:  # a thread: the handler's "done <ip>" lines
        assert proc.stdout is not None
        for line in proc.stdout:
            ip = line.decode().split()[-1]
            if ip in done:
                loop.call_soon_threadsafe(done[ip].set)

    reader = loop.run_in_executor(None, read_done)
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        sim_cpu0 = await sim.cpu_seconds()
        own0 = time.process_time()
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:

            async def one(ip: str) -> None:
                url = f"http://{ip}:{contact_port}/contact_dls.html/ContactDLS"
                body = build_contact_me("127.0.0.1", port)
                response = await client.post(
                    url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
                )
                if not 200 <= response.status_code < 300:
                    raise RuntimeError(f"floor contact-me to {ip}: HTTP {response.status_code}")
                await asyncio.wait_for(done[ip].wait(), 60)
                for _ in range(25):  # as certmgr does: probe until the new certificate is served
                    if await asyncio.to_thread(probe_once, ip, wbm_port, 5.0) == leaf_sha:
                        return
                    await asyncio.sleep(0.2)
                raise RuntimeError(f"floor: {ip} never served the new certificate")

            started = time.monotonic()
            await bounded_gather(ips, concurrency, one)
            seconds = time.monotonic() - started
        return Floor(
            seconds=seconds,
            handler_cpu_s=proc_cpu(proc.pid),
            client_cpu_s=time.process_time() - own0,
            simulator_cpu_s=await sim.cpu_seconds() - sim_cpu0,
            phones=len(ips),
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        await reader


@dataclass
class Backend:
    kind: str
    pg: Any = None
    databases: list[str] = field(default_factory=list)

    def url(self, data_dir: Path) -> tuple[str, Path | None]:
        if self.kind == "sqlite":
            path = (data_dir / "certmgr.db").resolve()
            return f"sqlite:///{path}", path
        name = self.pg.create_database()
        self.databases.append(name)
        return name, None

    def outage(self, service: Service) -> str:
        if self.kind == "postgres":
            self.pg.pause()
            time.sleep(10)
            self.pg.resume()
            return "PostgreSQL stopped (fast shutdown) for 10 s and started again"
        service.kill()
        service.start()
        return "service killed (kill -9) and started again"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n, concurrency = args.phones, args.concurrency
    nofile = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="certmgr-bench-"))
    backend = Backend(args.db)
    if args.db == "postgres":
        from tests.pg import PostgresServer

        backend.pg = PostgresServer()
        backend.pg.start()
    hosts = fleet_addresses(BASE_IP, n)
    wbm_port, contact_port = port_free_on_all(hosts), port_free_on_all(hosts)
    wpi_port = free_port()
    password = secrets.token_urlsafe(16)
    data_dir = work / "var"
    db_url, sqlite_file = backend.url(data_dir)
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": db_url,
        "policy_dir": work / "policies",
        "ca_config_dir": REPO / "ca",
        "ca_passphrase": secrets.token_urlsafe(16),
        "master_key": secrets.token_urlsafe(32),
        "wpi_host": "127.0.0.1",
        "wpi_port": wpi_port,
        "wpi_poll_port": free_port(),
        "wbm_port": wbm_port,
        "contact_me_port": contact_port,
        "contact_gap_seconds": 0,
        "callback_timeout_seconds": 30,
        "retry_base_seconds": 1,
        "retry_max_seconds": 5,
        "dispatch_tick_seconds": 0.2,
        "interaction_timeout_seconds": 30,
        "probe_tries": 4,
        "probe_interval_seconds": 0.2,
        "probe_timeout_seconds": 5.0,
        "deploy_concurrency": concurrency,
        "reconcile_issue_batch": args.issue_batch,
        "scheduler_enabled": False,
        "node_id": "bench",
        "log_level": "WARNING",
    }
    service = Service(work, values, password)
    sim = SimFleet(
        n,
        base_ip=BASE_IP,
        dls_url=f"https://127.0.0.1:{wpi_port}/DeploymentService/LoginService",
        wbm_port=wbm_port,
        contact_port=contact_port,
        fault_every=FAULT_MIX if args.faults else (),
        log_dir=work,
    )
    results: dict[str, Any] = {
        "phones": n,
        "concurrency": concurrency,
        "nofile": nofile,
        "cpus": os.cpu_count(),
        "db": args.db,
        "shards": len(sim.specs),
        "events": [],
    }
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    engine: Engine | None = None
    try:
        sim.start()
        t0 = time.monotonic()
        await sim.boot()
        results["phones_boot_s"] = time.monotonic() - t0
        stats0 = {p["mac"]: p for p in await sim.stats()}
        healthy = [p["ip"] for p in stats0.values() if not p["faults"]]
        reachable = [p for p in stats0.values() if "offline" not in p["faults"]]
        results["reachable"] = len(reachable)
        results["faulty"] = dict(Counter(p["faults"] for p in stats0.values() if p["faults"]))

        # 1. floor
        floor = await run_floor(sim, healthy, work, concurrency, wbm_port, contact_port)
        results["floor"] = floor
        print(
            f"floor: {floor.phones} bare exchanges in {floor.seconds:.1f}s = {floor.phones / floor.seconds:.1f}/s",
            flush=True,
        )
        after_floor = {p["mac"]: p["writes_accepted"] for p in await sim.stats()}

        # 2. issuance: window closed, phones report, certificates are issued, nothing deployed
        write_policy(work / "policies", closed=True)
        service.write_config()
        service.start()
        engine = create_db_engine(db_url)
        cpu0, sim0 = service.cpu(), await sim.cpu_seconds()
        t_issue = time.monotonic()
        await sim.report(64)
        results["reports_s"] = time.monotonic() - t_issue
        e1 = engine
        await wait_for(lambda: count_certs(e1), len(reachable), PHASE_TIMEOUT_S, "issuance")
        results["issuance_s"] = time.monotonic() - t_issue
        cpu1 = service.cpu()
        results["issuance_cpu"] = CpuSample(cpu1.main - cpu0.main, cpu1.workers - cpu0.workers)
        results["issuance_sim_cpu_s"] = await sim.cpu_seconds() - sim0
        results["issuance_mem"] = proc_mem_kib(service.pid)
        print(f"issuance: {len(reachable)} certificates in {results['issuance_s']:.1f}s", flush=True)

        # 3. delivery: window open (restart), every phone contacted, written, read back, probed, verified
        service.stop()
        write_policy(work / "policies", closed=False)
        up = service.start(profile=profile_dir / f"delivery-{args.db}-{n}.txt" if profile_dir else None)
        cpu0, sim0 = service.cpu(), await sim.cpu_seconds()
        mem_at_1000: dict[str, int] = {}
        trajectory: list[tuple[int, int]] = []  # (verified, service RSS KiB) at every further 1,000 verified
        disrupted = False

        def watch(value: int) -> None:
            nonlocal disrupted
            if value >= min(1000, n) and not mem_at_1000:
                mem_at_1000.update(proc_mem_kib(service.pid), verified=value)
            if value >= 1000 * (len(trajectory) + 1):
                trajectory.append((value, proc_mem_kib(service.pid).get("VmRSS", 0)))
            if args.disrupt and not disrupted and value >= 0.4 * len(reachable):
                disrupted = True
                at = time.monotonic() - up
                what = backend.outage(service)
                results["events"].append(f"{at:.1f} s into delivery, {value} verified: {what}")
                print(results["events"][-1], flush=True)

        await wait_for(lambda: count_verified(e1), len(reachable), PHASE_TIMEOUT_S, "delivery", watch)
        done = time.monotonic()
        cpu1 = service.cpu()
        results["delivery_cpu"] = CpuSample(cpu1.main - cpu0.main, cpu1.workers - cpu0.workers)
        results["delivery_sim_cpu_s"] = await sim.cpu_seconds() - sim0
        results["delivery_mem"] = proc_mem_kib(service.pid)
        results["delivery_mem_at_1000"] = mem_at_1000
        results["delivery_rss_trajectory"] = trajectory
        results["delivery_s"] = done - up
        service.stop()
        summary = deployment_summary(engine)
        results["delivery"] = summary
        results["db_bytes"] = database_bytes(engine, sqlite_file)
        stats = {p["mac"]: p for p in await sim.stats()}
        written = certificates_written(engine)
        results["not_one_write"] = not_one_write_per_certificate(stats, after_floor, written)
        results["writes_accepted"] = sum(p["writes_accepted"] - after_floor[mac] for mac, p in stats.items())
        results["certificates_written"] = sum(written.values())
        engine.dispose()
        engine = None

        # 4. overlapped, as in operation: a fresh data dir (new CA, empty database), window open from the start
        if not args.no_overlapped:
            work2 = work / "overlapped"
            data2 = work2 / "var"
            url2, _ = backend.url(data2)
            service = Service(
                work2, {**values, "data_dir": data2, "database_url": url2, "policy_dir": work2 / "policies"}, password
            )
            work2.mkdir(parents=True, exist_ok=True)
            write_policy(work2 / "policies", closed=False)
            service.write_config()
            before = {p["mac"]: p["writes_accepted"] for p in await sim.stats()}
            t_all = time.monotonic()
            service.start(profile=profile_dir / f"overlapped-{args.db}-{n}.txt" if profile_dir else None)
            engine = create_db_engine(url2)
            cpu0 = service.cpu()
            await sim.report(64)
            e2 = engine
            await wait_for(lambda: count_verified(e2), len(reachable), PHASE_TIMEOUT_S, "overlapped")
            results["overlapped_s"] = time.monotonic() - t_all
            cpu1 = service.cpu()
            results["overlapped_cpu"] = CpuSample(cpu1.main - cpu0.main, cpu1.workers - cpu0.workers)
            results["overlapped_mem"] = proc_mem_kib(service.pid)
            service.stop()
            stats = {p["mac"]: p for p in await sim.stats()}
            results["overlapped_not_one_write"] = not_one_write_per_certificate(
                stats, before, certificates_written(engine)
            )
            results["overlapped"] = deployment_summary(engine)
            engine.dispose()
            engine = None
        return results
    finally:
        service.stop()
        if engine is not None:
            engine.dispose()
        sim.stop()
        if backend.pg is not None:
            backend.pg.stop()
        if profile_dir is not None:
            for name in sorted(profile_dir.glob(f"*-{args.db}-{n}.txt")):
                print(f"\nprofile {name.name}:")
                print("\n".join(summarise_profile(name)))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def report(r: dict[str, Any]) -> None:
    n, reach = r["phones"], r["reachable"]
    floor: Floor = r["floor"]
    floor_rate = floor.phones / floor.seconds
    print()
    print(f"command: {' '.join(sys.argv)}")
    print(f"  {r['cpus']} CPUs, {r['db']}, RLIMIT_NOFILE {r['nofile'][0]}, {r['shards']} simulator process(es)")
    if r["faulty"]:
        print(f"  faults: {r['faulty']} — {reach} of {n} phones reachable")
    print(f"phones booted:               {r['phones_boot_s']:7.1f} s")
    print(
        f"floor ({floor.phones} bare exchanges): {floor.seconds:7.1f} s  {floor_rate:6.1f} phones/s;"
        f" handler CPU {1000 * floor.handler_cpu_s / floor.phones:.1f} ms/exchange,"
        f" client {1000 * floor.client_cpu_s / floor.phones:.1f} ms,"
        f" simulator {1000 * floor.simulator_cpu_s / floor.phones:.1f} ms"
    )
    ic: CpuSample = r["issuance_cpu"]
    print(
        f"issuance ({reach} certs):       {r['issuance_s']:7.1f} s  {reach / r['issuance_s']:6.1f} certs/s;"
        f" service CPU {1000 * ic.main / reach:.1f} ms/cert + key workers {1000 * ic.workers / reach:.1f} ms/cert;"
        f" peak RSS {r['issuance_mem'].get('VmHWM', 0) / 1024:.0f} MiB"
    )
    dc: CpuSample = r["delivery_cpu"]
    d = r["delivery"]
    rate = reach / r["delivery_s"]
    print(
        f"delivery (ready→all verified): {r['delivery_s']:7.1f} s  {rate:6.1f} phones/s;"
        f" p50 {d['p50']:.2f} s, p95 {d['p95']:.2f} s per phone"
    )
    print(
        f"  service CPU {1000 * dc.main / reach:.1f} ms/phone (workers {1000 * dc.workers / reach:.1f} ms)"
        f" vs floor handler {1000 * floor.handler_cpu_s / floor.phones:.1f} ms/exchange"
        f" = {dc.main / reach / (floor.handler_cpu_s / floor.phones):.2f} times;"
        f" simulator {1000 * r['delivery_sim_cpu_s'] / reach:.1f} ms/phone"
    )
    m1000, mend = r["delivery_mem_at_1000"], r["delivery_mem"]
    print(
        f"  service RSS at {m1000.get('verified', 0)} verified {m1000.get('VmRSS', 0) / 1024:.1f} MiB,"
        f" at {reach} {mend.get('VmRSS', 0) / 1024:.1f} MiB; peak {mend.get('VmHWM', 0) / 1024:.1f} MiB"
    )
    if r["delivery_rss_trajectory"]:
        steps = ", ".join(f"{v}: {kib / 1024:.1f}" for v, kib in r["delivery_rss_trajectory"])
        print(f"  service RSS (MiB) by phones verified: {steps}")
    print(f"delivery ratio (floor rate ÷ ours): {rate / floor_rate:.2f}")
    print(
        f"database: {r['db_bytes'] / 1e6:.1f} MB = {r['db_bytes'] / n / 1024:.1f} KiB/phone;"
        f" {d['audit_events']} audit events ({d['audit_events'] / n:.1f}/phone); deployments {d['states']}"
    )
    bad = r["not_one_write"]
    print(
        f"writes accepted {r['writes_accepted']} for {r['certificates_written']} certificates written;"
        f" phones without exactly one accepted write per certificate: {len(bad)}"
    )
    for mac, value in list(bad.items())[:10]:
        print(f"    {mac}: {value}")
    for event in r["events"]:
        print(f"event: {event}")
    if "overlapped_s" in r:
        slower = max(r["issuance_s"], reach / floor_rate)
        oc: CpuSample = r["overlapped_cpu"]
        o = r["overlapped"]
        print(
            f"whole fleet, overlapped:     {r['overlapped_s']:7.1f} s  {reach / r['overlapped_s']:6.1f} phones/s;"
            f" ÷ slower of issuance/floor ({slower:.1f} s) = {r['overlapped_s'] / slower:.2f};"
            f" p50 {o['p50']:.2f} s p95 {o['p95']:.2f} s; service CPU {1000 * oc.main / reach:.1f} ms/phone"
            f" + workers {1000 * oc.workers / reach:.1f};"
            f" peak RSS {r['overlapped_mem'].get('VmHWM', 0) / 1024:.1f} MiB;"
            f" phones without one write per certificate: {len(r['overlapped_not_one_write'])}"
        )


def main() -> int:
    stop_cleanly_on_signals()
    if len(sys.argv) > 1 and sys.argv[1] == "--floor-server":
        floor_server(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=1000)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=50, help="deploy_concurrency and floor concurrency")
    parser.add_argument("--issue-batch", type=int, default=20, help="reconcile_issue_batch")
    parser.add_argument("--faults", action="store_true", help="offline, slow, busy and moving phones (see above)")
    parser.add_argument("--disrupt", action="store_true", help="database outage (PG) / service kill (SQLite)")
    parser.add_argument("--no-overlapped", action="store_true", help="skip phase 4")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the service during delivery and overlapped")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    args = parser.parse_args()
    if not 1 <= args.phones <= 20000:
        parser.error("--phones must be 1..20000")
    r = asyncio.run(main_async(args))
    report(r)
    bad = len(r["not_one_write"]) + len(r.get("overlapped_not_one_write", {}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
