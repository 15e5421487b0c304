"""Benchmark: ``certmgr serve --role wpi`` under attack from the phone network — memory under a flood of
unauthenticated fragmented openings, trickling connections closed, a phone still served meanwhile.

    .venv/bin/python bench/hostile.py [--openings 700] [--senders 20] [--connections 1200]

1. **flood** — ``--openings`` ``start-up`` messages with ``fragment="next"`` and ~60 KB of padding each (the
   largest body the listener takes), no cookies (each opens a new interaction), from ``--senders`` foreign
   loopback addresses, 32 at a time. Printed: the answers by status, the service's RSS before, at its peak
   during the flood, and after the untrusted interactions expired (``wpi_untrusted_timeout_seconds``). The
   **floor** is the same service's RSS when the same number of bytes arrives as well-formed one-message
   start-ups (nothing to buffer): what a flood costs beyond the bytes themselves. While the flood runs, a
   start-up from a phone's own address is answered (time to answer printed).
2. **slowloris** — ``--connections`` TLS connections to the WPI port, each sending one byte of a request line
   and then one more byte a second; printed: how many the service closed, and when, against the read deadline
   (``request_timeout_seconds``).

Everything runs on loopback (127.77.x.y); the service is a subprocess, stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import proc_status_kib, stop_cleanly_on_signals
from certmgr.simulator.ports import free_port
from certmgr.wpi.codec import encode_workpoint
from certmgr.wpi.messages import Fragment, Item, Reason, WorkpointMessage

REPO = Path(__file__).resolve().parent.parent
PADDING = 60_000
START_TIMEOUT_S = 120.0


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid).get("VmRSS", 0) / 1024


def start_service(tmp: Path, wpi_port: int, poll_port: int) -> subprocess.Popen[str]:
    config = tmp / "certmgr.toml"
    config.write_text(
        "\n".join(
            [
                f'data_dir = "{tmp / "var"}"',
                f'policy_dir = "{REPO / "policies"}"',
                f'ca_config_dir = "{REPO / "ca"}"',
                'ca_passphrase = "bench-passphrase-not-secret"',
                'master_key = "bench-master-key-not-secret-0123456789abcdef"',
                'wpi_host = "127.0.0.1"',
                f"wpi_port = {wpi_port}",
                f"wpi_poll_port = {poll_port}",
                "scheduler_enabled = false",
                'log_level = "WARNING"',
            ]
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
    env.update(CERTMGR_CONFIG=str(config), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "certmgr", "serve", "--role", "wpi"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp / "service.log").open("w"),
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"certmgr serve ended during start; see {tmp / 'service.log'}")
        if line.startswith("wpi listening on"):
            return proc
    proc.kill()
    raise SystemExit("certmgr serve did not start")


def opening(n: int, fragment: Fragment | None) -> bytes:
    mac = f"00:1A:E8:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"
    items = (Item("mac-addr", mac), Item("padding", "x" * PADDING))
    return encode_workpoint(WorkpointMessage(f"{n:032X}", Reason.START_UP, items, max_items=-1, fragment=fragment))


async def flood(url: str, senders: list[str], openings: int, fragment: Fragment | None, pid: int) -> dict[str, object]:
    clients = [
        httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address=ip, verify=False, retries=0),
            timeout=30,
        )
        for ip in senders
    ]
    statuses: dict[int, int] = {}
    peak = rss_mib(pid)
    semaphore = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        nonlocal peak
        async with semaphore:
            client = clients[n % len(clients)]
            client.cookies.clear()
            try:
                response = await client.post(url, content=opening(n, fragment), headers={"Content-Type": "text/xml"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            except httpx.HTTPError:
                statuses[0] = statuses.get(0, 0) + 1
            peak = max(peak, rss_mib(pid))

    started = time.monotonic()
    await asyncio.gather(*(one(n) for n in range(openings)))
    elapsed = time.monotonic() - started
    for client in clients:
        await client.aclose()
    return {"statuses": statuses, "peak_mib": peak, "seconds": elapsed}


async def phone_during_flood(url: str, flood_task: asyncio.Task[dict[str, object]]) -> float:
    """A start-up from a phone's own address while the flood runs; seconds until it is answered."""
    await asyncio.sleep(0.5)  # the flood is under way
    body = encode_workpoint(
        WorkpointMessage("A1", Reason.START_UP, (Item("mac-addr", "00:1A:E8:AA:00:01"),), max_items=-1)
    )
    transport = httpx.AsyncHTTPTransport(local_address="127.77.200.1", verify=False, retries=0)
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        started = time.monotonic()
        response = await client.post(url, content=body, headers={"Content-Type": "text/xml"})
        assert response.status_code == 200, response.status_code
        return time.monotonic() - started


def slowloris(port: int, connections: int, deadline_s: float) -> dict[str, object]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    socks: list[ssl.SSLSocket] = []
    for _ in range(connections):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        tls = context.wrap_socket(raw)
        tls.sendall(b"P")
        tls.setblocking(False)
        socks.append(tls)
    opened = time.monotonic()
    closed_at: dict[int, float] = {}
    limit = opened + deadline_s + 15
    while len(closed_at) < len(socks) and time.monotonic() < limit:
        for i, sock in enumerate(socks):
            if i in closed_at:
                continue
            try:
                sock.send(b"O")  # one more byte a second
                if sock.recv(1) == b"":
                    closed_at[i] = time.monotonic() - opened
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except (OSError, ssl.SSLError):
                closed_at[i] = time.monotonic() - opened
        time.sleep(1.0)
    for sock in socks:
        sock.close()
    times = sorted(closed_at.values())
    return {
        "opened": len(socks),
        "closed": len(times),
        "first_closed_s": times[0] if times else None,
        "last_closed_s": times[-1] if times else None,
    }


def main() -> None:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openings", type=int, default=700)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--connections", type=int, default=1200)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="certmgr-hostile-"))
    wpi_port, poll_port = free_port(), free_port()
    service = start_service(tmp, wpi_port, poll_port)
    url = f"https://127.0.0.1:{wpi_port}/DeploymentService/LoginService"
    senders = [f"127.77.{n // 250}.{n % 250 + 1}" for n in range(args.senders)]
    try:
        baseline = rss_mib(service.pid)

        async def attack() -> tuple[dict[str, object], float]:
            task = asyncio.create_task(flood(url, senders, args.openings, Fragment.NEXT, service.pid))
            answered = await phone_during_flood(url, task)
            return await task, answered

        result, answered = asyncio.run(attack())
        time.sleep(12)  # the untrusted interactions expire (10 s) and a dispatcher tick sweeps them
        after = rss_mib(service.pid)
        floor = asyncio.run(flood(url, senders, args.openings, None, service.pid))
        after_floor = rss_mib(service.pid)
        print(f"load average {os.getloadavg()[0]:.2f}")
        sent_mib = args.openings * PADDING / 2**20
        print(f"flood: {args.openings} fragmented openings (~{sent_mib:.0f} MiB) from {len(senders)} addresses "
              f"in {result['seconds']:.1f} s; answers {result['statuses']}")  # fmt: skip
        print(
            f"  service RSS: before {baseline:.0f} MiB, peak {result['peak_mib']:.0f} MiB, after expiry {after:.0f} MiB"
        )
        print(f"  a phone's own start-up during the flood answered in {answered * 1000:.0f} ms")
        print(f"floor: the same bytes as complete start-ups: peak {floor['peak_mib']:.0f} MiB, "
              f"after {after_floor:.0f} MiB; answers {floor['statuses']}")  # fmt: skip
        growth = float(str(result["peak_mib"])) - baseline
        floor_growth = max(float(str(floor["peak_mib"])) - after, 0.1)
        ratio = growth / floor_growth
        print(f"  flood growth {growth:.0f} MiB vs floor growth {floor_growth:.0f} MiB (ratio {ratio:.1f})")
        loris = slowloris(wpi_port, args.connections, 10.0)
        print(f"slowloris: {loris['closed']} of {loris['opened']} trickling connections closed by the service, "
              f"the first after {loris['first_closed_s']:.1f} s, the last after {loris['last_closed_s']:.1f} s "
              f"(read deadline 10 s)")  # fmt: skip
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
