"""``python -m certmgr.demo`` (``make demo``): certmgr deploys WBM certificates to 20 simulated phones, live.

Everything runs in this one process, on loopback addresses only, and is removed afterwards:

1. a private data dir (a temporary folder, or ``--data-dir``): SQLite database, a fresh CA, secrets;
2. the service exactly as ``certmgr serve --role wpi`` builds it — the WPI listener over TLS, the DCMP poll
   listener and the deployment dispatcher — with demo timings (1 s contact gap, 0.2 s ticks);
3. 20 simulated OpenStage phones (:mod:`certmgr.simulator`) on 127.99.x.y, a few of them with faults
   (busy in a call, refusing the legacy PKCS#12, slow, fragmenting, ``maxItems=1``, unparseable certificate
   info, one switched off); the policy offers ``legacy`` first and ``plain`` second;
4. a progress line per second (deployments per state) until every phone that is on is verified (bounded);
5. a summary table: per phone the deployment state, the three checks (reply, info, probe) and the serial of
   the certificate its WBM serves *now* (fetched over TLS by the demo itself), compared with the database.

Exit status 0 when every phone that is on is verified and serves its certificate, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, Deployment, DeploymentState, Device
from certmgr.runtime import Runtime, open_runtime
from certmgr.serve import Role, build_listeners, run_forever
from certmgr.settings import Settings
from certmgr.simulator.faults import parse_fault_spec
from certmgr.simulator.fleet import fleet_addresses, fleet_mac
from certmgr.simulator.phone import PhoneConfig, SimPhone, new_nonce
from certmgr.simulator.ports import port_free_on_all
from certmgr.wpi.codec import encode_workpoint
from certmgr.wpi.messages import Item, Reason, WorkpointMessage

REPO = Path(__file__).resolve().parent.parent
BASE_IP = "127.99.0.1"
PASSWORD_SECRET = "demo"  # noqa: S105 - the name of a secret, not a secret
#: Faults by phone number (1-based); the others are healthy.
FAULTS: dict[int, str] = {
    3: "busy-first-write",
    5: "reject-legacy",
    7: "slow=1",
    9: "fragments",
    11: "max-items-1",
    13: "unparseable-info",
    15: "busy-first-write,fragments",
    17: "reject-legacy,slow=0.5",
    20: "offline",
}
UNFINISHED = (
    DeploymentState.QUEUED,
    DeploymentState.CONTACTING,
    DeploymentState.AWAITING_CALLBACK,
    DeploymentState.WRITTEN,
    DeploymentState.VERIFYING,
)
VERIFIED = DeploymentState.VERIFIED
FINISHED = (DeploymentState.VERIFIED, DeploymentState.FAILED, DeploymentState.SUPERSEDED, DeploymentState.CANCELLED)


def demo_settings(data_dir: Path, hosts: Sequence[str]) -> Settings:
    """Settings of the demo service: private data dir, legacy+plain policy, short timings, loopback only."""
    policy_dir = data_dir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    policy = (REPO / "policies" / "default.toml").read_text(encoding="utf-8")
    policy = policy.replace(
        'profiles = ["plain"]', f'profiles = ["legacy", "plain"]\npassword_secret = "{PASSWORD_SECRET}"'
    )
    (policy_dir / "default.toml").write_text(policy, encoding="utf-8")
    root = os.geteuid() == 0
    return Settings(
        data_dir=data_dir / "var",
        policy_dir=policy_dir,
        ca_config_dir=REPO / "ca",
        ca_passphrase=SecretStr(secrets.token_urlsafe(24)),
        master_key=SecretStr(secrets.token_urlsafe(32)),
        pkcs12_passwords={PASSWORD_SECRET: SecretStr(secrets.token_urlsafe(16))},
        wpi_host="127.0.0.1",
        wpi_port=port_free_on_all(["127.0.0.1"]),
        wpi_poll_port=port_free_on_all(["127.0.0.1"]),
        wbm_port=port_free_on_all(hosts, preferred=(443,) if root else ()),
        contact_me_port=port_free_on_all(hosts, preferred=(8085,) if root else ()),
        contact_gap_seconds=1,
        callback_timeout_seconds=6,
        retry_base_seconds=1,
        retry_max_seconds=3,
        max_attempts=4,
        dispatch_tick_seconds=0.2,
        interaction_timeout_seconds=20,
        busy_callback_seconds=30,
        probe_tries=4,
        probe_interval_seconds=0.3,
        probe_timeout_seconds=2.0,
        node_id="demo",
        scheduler_enabled=False,
        log_level="WARNING",
    )


def make_phones(settings: Settings, count: int, password: bytes) -> list[SimPhone]:
    """``count`` phones on 127.99.0.1 upwards with the demo's faults."""
    phones: list[SimPhone] = []
    for number, ip in enumerate(fleet_addresses(BASE_IP, count), start=1):
        config = PhoneConfig(
            mac=fleet_mac(0x990000 + number),
            ip=ip,
            e164=str(4989722000 + number),
            contact_port=settings.contact_me_port,
            wbm_port=settings.wbm_port,
            dls_url=f"https://127.0.0.1:{settings.wpi_port}/DeploymentService/LoginService",
            faults=parse_fault_spec(FAULTS.get(number, "")),
            pkcs12_passwords=(password,),  # given to the phones out of band (D7)
            contact_gap=1.0,
            request_timeout=15.0,
            interaction_timeout=60.0,
        )
        phones.append(SimPhone(config))
    return phones


async def announce(phone: SimPhone, dls_url: str) -> None:
    """One ``start-up`` from a phone that is about to be switched off: certmgr knows it from an earlier boot."""
    cfg = phone.config
    items = (
        Item("mac-addr", cfg.mac),
        Item("e164", cfg.e164),
        Item("device-type", cfg.device_type),
        Item("software-version", cfg.software_version),
        Item("contact-me-uri", phone.contact_me_uri),
    )
    body = encode_workpoint(WorkpointMessage(new_nonce(), Reason.START_UP, items, max_items=-1))
    transport = httpx.AsyncHTTPTransport(local_address=cfg.ip, verify=False, retries=0)  # Default Mode, §3.7
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        await client.post(dls_url, content=body, headers={"Content-Type": "text/xml"})


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    mac: str
    ip: str
    faults: str
    state: str
    reply: str
    info: str
    probe: str
    attempts: int
    db_serial: str
    served_serial: str
    error: str

    @property
    def matches(self) -> bool:
        return bool(self.db_serial) and self.db_serial == self.served_serial


def latest_deployments(runtime: Runtime) -> dict[str, tuple[Device, Deployment | None, Certificate | None]]:
    """Per MAC: the device, its newest deployment and that deployment's certificate."""
    out: dict[str, tuple[Device, Deployment | None, Certificate | None]] = {}
    with session_scope(runtime.engine) as session:
        devices = {d.id: d for d in session.exec(select(Device)).all()}
        certs = {c.id: c for c in session.exec(select(Certificate)).all()}
        newest: dict[int, Deployment] = {}
        for dep in session.exec(select(Deployment).order_by(col(Deployment.id))).all():
            newest[dep.device_id] = dep
        for device_id, device in devices.items():
            last = newest.get(device_id or 0)
            out[device.mac] = (device, last, certs.get(last.certificate_id) if last is not None else None)
    return out


def served_serial(ip: str, port: int) -> str:
    """Serial (hex) of the certificate the phone's WBM serves right now, or ``"-"`` if nothing answers."""
    try:
        pem = ssl.get_server_certificate((ip, port), timeout=5)
    except (OSError, ssl.SSLError):
        return "-"
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


def progress_line(elapsed: float, states: Counter[str], total: int) -> str:
    parts = [f"{s.value} {states.get(s.value, 0)}" for s in (*UNFINISHED, *FINISHED) if states.get(s.value)]
    known = sum(states.values())
    return f"{elapsed:6.1f}s  phones known {known}/{total}  " + " | ".join(parts)


async def run_demo(count: int, timeout: float, data_dir: Path, console: Console) -> int:
    """Start the service and the phones, show progress until converged (or ``timeout``), print the table."""
    hosts = fleet_addresses(BASE_IP, count)
    settings = demo_settings(data_dir, hosts)
    runtime = await asyncio.to_thread(open_runtime, settings, create_ca=True)
    listeners, background = build_listeners(runtime, Role.WPI)
    stop = asyncio.Event()
    service = asyncio.create_task(run_forever(listeners, background, announce=console.print, stop=stop))
    password = settings.pkcs12_passwords[PASSWORD_SECRET].get_secret_value().encode()
    phones = make_phones(settings, count, password)
    by_mac = {p.config.mac: p for p in phones}
    started = time.monotonic()
    try:
        for _ in range(200):  # the listeners announce themselves once bound
            if all(listener.server.started for listener in listeners) or service.done():
                break
            await asyncio.sleep(0.05)
        if service.done():
            await service  # raises the listener's start-up error
        console.print(
            f"[bold]certmgr demo[/]: {count} phones on {hosts[0]} … {hosts[-1]}, WBM port {settings.wbm_port}, "
            f"contact-me port {settings.contact_me_port}, data dir {data_dir}"
        )
        for phone in phones:
            if phone.faults.offline:
                await announce(phone, phone.config.dls_url)
        await asyncio.gather(*(p.start(send_startup=True, wait_startup=False) for p in phones))
        online = {p.config.mac for p in phones if not p.faults.offline}
        deadline = started + timeout
        converged = False
        while time.monotonic() < deadline:
            snapshot = await asyncio.to_thread(latest_deployments, runtime)
            states: Counter[str] = Counter(dep.state.value for _d, dep, _c in snapshot.values() if dep is not None)
            console.print(progress_line(time.monotonic() - started, states, count))
            verified = {mac for mac, (_d, dep, _c) in snapshot.items() if dep is not None and dep.state is VERIFIED}
            if online <= verified and all(by_mac[m].idle for m in online):
                converged = True
                break
            await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        snapshot = await asyncio.to_thread(latest_deployments, runtime)
        rows: list[Row] = []
        for phone in phones:
            device, dep, cert = snapshot.get(phone.config.mac, (None, None, None))
            rows.append(
                Row(
                    mac=phone.config.mac,
                    ip=phone.ip,
                    faults=phone.faults.to_spec() or "-",
                    state=dep.state.value if dep is not None else "unknown",
                    reply=dep.check_reply.value if dep is not None and dep.check_reply else "-",
                    info=dep.check_info.value if dep is not None and dep.check_info else "-",
                    probe=dep.check_probe.value if dep is not None and dep.check_probe else "-",
                    attempts=dep.attempts if dep is not None else 0,
                    db_serial=cert.serial if cert is not None else "",
                    served_serial=await asyncio.to_thread(served_serial, phone.ip, settings.wbm_port),
                    error=(dep.last_error or "") if dep is not None and device is not None else "",
                )
            )
        console.print(summary_table(rows))
        good = [r for r in rows if r.mac in online and r.state == DeploymentState.VERIFIED.value and r.matches]
        ok = converged and len(good) == len(online)
        verdict = "[green]converged[/]" if ok else "[red]NOT converged[/]"
        console.print(
            f"{verdict} in {elapsed:.1f}s: {len(good)}/{len(online)} phones that are on are verified and serve the "
            f"certificate in the database; {count - len(online)} phone(s) switched off."
        )
        return 0 if ok else 1
    finally:
        await asyncio.gather(*(p.stop(5.0) for p in phones), return_exceptions=True)
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(service, 30)
        runtime.close()


def summary_table(rows: Sequence[Row]) -> Table:
    table = Table(title="certmgr demo — deployments", show_lines=False)
    for name in ("MAC", "IP", "faults", "state", "reply", "info", "probe", "tries", "served cert serial", "= DB"):
        table.add_column(name, no_wrap=name != "faults")
    for r in rows:
        colour = "green" if r.state == "verified" else "red" if r.state == "failed" else "yellow"
        table.add_row(
            r.mac,
            r.ip,
            r.faults,
            f"[{colour}]{r.state}[/]",
            r.reply,
            r.info,
            r.probe,
            str(r.attempts),
            r.served_serial[:16] + ("…" if len(r.served_serial) > 16 else ""),
            "yes" if r.matches else ("-" if r.served_serial == "-" else "no"),
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certmgr.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=20, help="number of simulated phones (default 20, max 200)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for convergence (max 600)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the data here instead of a temp folder")
    args = parser.parse_args(argv)
    if not 1 <= args.phones <= 200 or not 1 <= args.timeout <= 600:
        parser.error("--phones must be 1..200 and --timeout 1..600")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    temp = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="certmgr-demo-")) if temp else args.data_dir
    try:
        return asyncio.run(run_demo(args.phones, args.timeout, data_dir, console))
    except KeyboardInterrupt:
        return 130
    finally:
        if temp:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
