"""Benchmark: 1,000 simulated phones, full deploy + verify over real TLS on loopback, against a floor.

    .venv/bin/python bench/deploy.py [--phones 1000] [--concurrency 50]

Three phases, one run; the phones (:mod:`certmgr.simulator`, 127.200.x.y) live in this process, every server
under test in its own process (the second core):

1. **floor** — a bare uvicorn TLS handler (the same server stack certmgr uses) answers canned DLS messages:
   ``solicited`` → ``WriteItems`` (one pre-built plain PKCS#12), ``reply-to WriteItems`` → ``ReadItems``,
   anything else → ``CleanUp``; the bench itself sends each contact-me and TLS-probes each WBM afterwards,
   ``--concurrency`` phones at a time. That is contact-me + 3 HTTPS round trips + probe, with no database,
   no issuance, no state machine.
2. **issuance** — ``certmgr serve --role wpi`` with a policy whose maintenance window is closed: the phones
   boot and report, the reconciler issues their certificates (RSA-2048 key generation dominates), nothing is
   deployed. Measured: all certificates recorded.
3. **delivery** — the service is restarted with the window open: contact-me → WriteItems → ReadItems → probe →
   verified for every phone. Measured: restart → all verified, and first contact-me → last verified from the
   database's own timestamps. Ratio = delivery phones/s ÷ floor phones/s.
4. **overlapped** — as in operation: a fresh service (new data dir) with the window open from the start; the
   phones report and issuance and delivery run concurrently. Measured: service start → all verified.

Everything is bounded (timeouts per phase) and cleaned up; the figures are printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from sqlalchemy import func
from sqlmodel import col, select

from certmgr.db.engine import create_db_engine, session_scope
from certmgr.db.models import Certificate, Deployment, DeploymentState
from certmgr.phones.probe import probe_once
from certmgr.simulator.fleet import fleet_addresses, fleet_mac, port_free_on_all
from certmgr.simulator.phone import PhoneConfig, SimPhone
from certmgr.wpi.codec import encode_dls
from certmgr.wpi.contactme import build_contact_me
from certmgr.wpi.messages import Action, DLSMessage, Item, cleanup_message

REPO = Path(__file__).resolve().parent.parent
BASE_IP = "127.200.0.1"
NONCE_MARK = "NONCEPLACEHOLDER0000000000000000"
PHASE_TIMEOUT_S = 600.0


# --- helpers ----------------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each phone holds 2 listeners + connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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


# --- the floor server (a subprocess: python bench/deploy.py --floor-server …) -------------------------------------
def floor_server(port: int, cert: str, key: str, p12_file: str) -> None:
    """A bare ASGI app on uvicorn + TLS answering canned DLS messages (the nonce is repeated, D2)."""
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
class Service:
    def __init__(self, work: Path, values: dict[str, object], password: str) -> None:
        self.work = work
        self.values = values
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **override: object) -> Path:
        values = {**self.values, **override}
        lines = [
            f"{k} = {json.dumps(str(v)) if isinstance(v, str | Path) else json.dumps(v)}" for k, v in values.items()
        ]
        lines += ["[pkcs12_passwords]", f"bench = {json.dumps(self.password)}"]
        path = self.work / "certmgr.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 120.0) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
        env.update(CERTMGR_CONFIG=str(self.work / "certmgr.toml"), PYTHONUNBUFFERED="1")
        log = (self.work / "service.log").open("ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certmgr", "serve", "--role", "wpi"], env=env, stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        assert self.proc.stdout is not None
        deadline = started + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"certmgr serve exited; see {self.work / 'service.log'}")
            if line.startswith(b"wpi listening on"):
                return time.monotonic()
        raise RuntimeError("certmgr serve did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def closed_window() -> str:
    """A [[windows]] entry that is closed for the next two hours (UTC)."""
    hour = (datetime.now(UTC).hour + 3) % 24
    return f'\n[[windows]]\ndays = "*"\nhours = "{hour:02d}-{(hour + 1) % 24:02d}"\ntimezone = "UTC"\n'


def write_policy(policy_dir: Path, closed: bool) -> None:
    policy_dir.mkdir(parents=True, exist_ok=True)
    text = (REPO / "policies" / "default.toml").read_text()
    (policy_dir / "default.toml").write_text(text + (closed_window() if closed else ""))


# --- phases -------------------------------------------------------------------------------------------------------
async def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(interval)
    raise RuntimeError(f"{what}: not reached within {timeout:g}s")


async def run_floor(phones: list[SimPhone], work: Path, concurrency: int, wbm_port: int, contact_port: int) -> float:
    key, cert = self_signed_rsa("floor DLS")
    cert_file, key_file, p12_file = work / "floor.pem", work / "floor.key", work / "floor.p12"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    leaf_key, leaf = self_signed_rsa("floor leaf")
    import base64

    p12 = pkcs12.serialize_key_and_certificates(b"floor", leaf_key, leaf, None, serialization.NoEncryption())
    p12_file.write_bytes(base64.b64encode(p12))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--floor-server", str(port), str(cert_file), str(key_file), str(p12_file)],
        stderr=(work / "floor.log").open("ab"),
    )
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:

            async def one(phone: SimPhone) -> None:
                before = len(phone.history)
                url = f"http://{phone.ip}:{contact_port}/contact_dls.html/ContactDLS"
                body = build_contact_me("127.0.0.1", port)
                response = await client.post(
                    url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
                )
                assert 200 <= response.status_code < 300
                await phone.wait_until(lambda p: len(p.history) > before and p.idle, 30, poll=0.02)
                if phone.history[-1].error:
                    raise RuntimeError(f"floor interaction failed: {phone.history[-1].error}")
                await asyncio.to_thread(probe_once, phone.ip, wbm_port, 5.0)

            started = time.monotonic()
            await bounded_gather(phones, concurrency, one)
            return time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def count_certs(engine: Any) -> int:
    with session_scope(engine) as s:
        return int(s.exec(select(func.count()).select_from(Certificate)).one())


def count_verified(engine: Any) -> int:
    with session_scope(engine) as s:
        return int(
            s.exec(
                select(func.count())
                .select_from(Deployment)
                .where(col(Deployment.state) == DeploymentState.VERIFIED.value)
            ).one()
        )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n, concurrency = args.phones, args.concurrency
    nofile = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="certmgr-bench-"))
    hosts = fleet_addresses(BASE_IP, n)
    wbm_port, contact_port = port_free_on_all(hosts), port_free_on_all(hosts)
    wpi_port = free_port()
    password = secrets.token_urlsafe(16)
    values: dict[str, object] = {
        "data_dir": work / "var",
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
        "reconcile_scan_batch": 2000,
        "scheduler_enabled": False,
        "node_id": "bench",
        "log_level": "WARNING",
    }
    service = Service(work, values, password)
    phones = [
        SimPhone(
            PhoneConfig(
                mac=fleet_mac(0xB00000 + i),
                ip=ip,
                e164=str(4989800000 + i),
                contact_port=contact_port,
                wbm_port=wbm_port,
                dls_url=f"https://127.0.0.1:{wpi_port}/DeploymentService/LoginService",
                contact_gap=0.0,
                request_timeout=30.0,
                interaction_timeout=120.0,
            )
        )
        for i, ip in enumerate(hosts, start=1)
    ]
    results: dict[str, Any] = {"phones": n, "concurrency": concurrency, "nofile": nofile, "cpus": os.cpu_count()}
    try:
        t0 = time.monotonic()
        await bounded_gather(phones, 64, lambda p: p.start(send_startup=False))
        results["phones_boot_s"] = time.monotonic() - t0

        # 1. floor
        floor_s = await run_floor(phones, work, concurrency, wbm_port, contact_port)
        results["floor_s"] = floor_s
        print(f"floor: {n} bare exchanges in {floor_s:.1f}s = {n / floor_s:.1f} phones/s", flush=True)

        # 2. issuance: window closed, phones report, certificates are issued, nothing deployed
        write_policy(work / "policies", closed=True)
        service.write_config()
        up = service.start()
        engine = create_db_engine(f"sqlite:///{(work / 'var' / 'certmgr.db').resolve()}")
        t_issue = time.monotonic()
        await bounded_gather(phones, 64, lambda p: p.interact())
        results["reports_s"] = time.monotonic() - t_issue
        await wait_for(lambda: count_certs(engine) >= n, PHASE_TIMEOUT_S, "issuance")
        results["issuance_s"] = time.monotonic() - t_issue
        results["service_start_s"] = up - t_issue if up > t_issue else None
        print(f"issuance: {n} certificates in {results['issuance_s']:.1f}s = {n / results['issuance_s']:.1f}/s")

        # 3. delivery: window open (restart), every phone contacted, written, read back, probed, verified
        service.stop()
        write_policy(work / "policies", closed=False)
        t_restart = time.monotonic()
        up = service.start()
        await wait_for(lambda: count_verified(engine) >= n, PHASE_TIMEOUT_S, "delivery", 0.25)
        done = time.monotonic()
        results["delivery_incl_restart_s"] = done - t_restart
        results["delivery_s"] = done - up
        with session_scope(engine) as s:
            deps = s.exec(select(Deployment)).all()
            first = min(d.contacted_at for d in deps if d.contacted_at is not None)
            last = max(d.verified_at for d in deps if d.verified_at is not None)
            latencies = sorted(
                (d.verified_at - d.contacted_at).total_seconds()
                for d in deps
                if d.verified_at is not None and d.contacted_at is not None
            )
        results["delivery_db_span_s"] = (last - first).total_seconds()
        results["latency_p50_s"] = latencies[len(latencies) // 2]
        results["latency_p95_s"] = latencies[int(len(latencies) * 0.95)]
        results["writes_accepted"] = sum(p.stats.writes_accepted for p in phones) - n  # minus the floor's writes
        results["verified"] = count_verified(engine)
        engine.dispose()
        results["ratio"] = floor_s / results["delivery_s"]
        results["end_to_end_s"] = results["issuance_s"] + results["delivery_s"]

        # 4. overlapped, as in operation: a fresh data dir (new CA, empty database), window open from the start;
        #    the phones report, and issuance and delivery run concurrently. This is "the whole 1,000".
        service.stop()
        work2 = work / "overlapped"
        service = Service(work2, {**values, "data_dir": work2 / "var", "policy_dir": work2 / "policies"}, password)
        write_policy(work2 / "policies", closed=False)
        service.write_config()
        t_all = time.monotonic()
        service.start()
        engine2 = create_db_engine(f"sqlite:///{(work2 / 'var' / 'certmgr.db').resolve()}")
        await bounded_gather(phones, 64, lambda p: p.interact())
        await wait_for(lambda: count_verified(engine2) >= n, PHASE_TIMEOUT_S, "overlapped", 0.25)
        results["overlapped_s"] = time.monotonic() - t_all
        results["overlapped_verified"] = count_verified(engine2)
        engine2.dispose()
        return results
    finally:
        service.stop()
        await asyncio.gather(*(p.stop(5.0) for p in phones), return_exceptions=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--floor-server":
        floor_server(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50, help="deploy_concurrency and floor concurrency")
    parser.add_argument("--issue-batch", type=int, default=20, help="reconcile_issue_batch")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, database)")
    args = parser.parse_args()
    if not 1 <= args.phones <= 5000:
        parser.error("--phones must be 1..5000")
    r = asyncio.run(main_async(args))
    n = r["phones"]
    print()
    print(f"command: {' '.join(sys.argv)}   ({r['cpus']} CPUs, RLIMIT_NOFILE {r['nofile'][0]})")
    print(f"phones booted:               {r['phones_boot_s']:6.1f} s")
    print(f"floor (bare exchanges):      {r['floor_s']:6.1f} s   {n / r['floor_s']:6.1f} phones/s")
    print(f"issuance ({n} certs):        {r['issuance_s']:6.1f} s   {n / r['issuance_s']:6.1f} certs/s")
    print(
        f"delivery (contact→verified): {r['delivery_s']:6.1f} s   {n / r['delivery_s']:6.1f} phones/s"
        f"   (DB span {r['delivery_db_span_s']:.1f} s, p50 {r['latency_p50_s']:.2f} s, p95 {r['latency_p95_s']:.2f} s)"
    )
    print(f"delivery ratio (floor/ours): {r['ratio']:6.2f}")
    print(f"end to end (issue+deliver):  {r['end_to_end_s']:6.1f} s   {n / r['end_to_end_s']:6.1f} phones/s")
    print(f"verified {r['verified']}/{n}, writes accepted {r['writes_accepted']}")
    print(
        f"whole fleet, overlapped:     {r['overlapped_s']:6.1f} s   {n / r['overlapped_s']:6.1f} phones/s"
        f"   (fresh service, issuance and delivery concurrent; verified {r['overlapped_verified']}/{n})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
