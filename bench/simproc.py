"""Simulated phones in processes of their own, driven by the bench over a pipe (one JSON line per command).

A bench that measures the service must not share a process with 10,000 simulated phones: the simulator's CPU
would be counted against neither and would slow the bench's own clock. :class:`SimFleet` starts
``ceil(count / shard_size)`` child processes (``python bench/simproc.py``), each running a
:class:`certmgr.simulator.fleet.Fleet` of up to ``shard_size`` phones on consecutive loopback addresses — a
process may hold at most ``RLIMIT_NOFILE`` descriptors and every phone listens on two ports.

Commands (stdin, one JSON object a line; each answered by one JSON line on stdout):

``{"cmd": "boot"}``                      start every phone (no start-up message)
``{"cmd": "report", "concurrency": N}``  every phone calls the service (``start-up``), N at a time; answers when
                                         every interaction has ended; with ``"urls": [U0, U1, …]`` the *i*-th
                                         phone of the process calls ``U[i % len(urls)]`` instead of its DLS URL
                                         (phones split between several nodes)
``{"cmd": "stats"}``                     per-phone counters (:class:`~certmgr.simulator.phone.PhoneStats`)
``{"cmd": "cpu"}``                       this process's CPU seconds so far
``{"cmd": "stop"}``                      stop the phones and exit

No secret crosses the pipe: the phones learn their PKCS#12 password from the service's ``WriteItems`` (D7).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import select
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: python bench/simproc.py
    sys.path.insert(0, str(REPO))

from certmgr.simulator.fleet import FaultPlan, Fleet, fleet_addresses  # noqa: E402
from certmgr.simulator.phone import SimPhone  # noqa: E402

#: Phones per simulator process: 2 listening sockets each, plus the connections of the interactions in flight.
SHARD_SIZE = 4000
#: Longest a command may take (a report of 4,000 phones against a slow service included).
COMMAND_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class ShardSpec:
    """What one simulator process runs (JSON on its first stdin line)."""

    count: int
    base_ip: str
    mac_start: int
    e164_start: int
    dls_url: str
    wbm_port: int
    contact_port: int
    fault_every: tuple[str, ...] = ()
    request_timeout: float = 30.0
    interaction_timeout: float = 120.0

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "fault_every": list(self.fault_every)})


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- the child ----------------------------------------------------------------------------------------------------
async def _report_all(fleet: Fleet, concurrency: int, urls: Sequence[str] = ()) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int, phone: SimPhone) -> None:
        if phone.config.faults.offline:
            return
        async with semaphore:
            await phone.interact(url=urls[i % len(urls)] if urls else None)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(fleet.phones)))


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    spec = json.loads(await reader.readline())
    fleet = Fleet(
        int(spec["count"]),
        base_ip=str(spec["base_ip"]),
        dls_url=str(spec["dls_url"]),
        plan=FaultPlan.from_specs((), tuple(spec["fault_every"])),
        contact_gap=0.0,
        wbm_port=int(spec["wbm_port"]),
        contact_port=int(spec["contact_port"]),
        mac_start=int(spec["mac_start"]),
        e164_start=int(spec["e164_start"]),
        boot_concurrency=64,
        request_timeout=float(spec["request_timeout"]),
        interaction_timeout=float(spec["interaction_timeout"]),
    )

    def answer(payload: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    try:
        for _ in range(1_000_000):
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            cmd = command.get("cmd")
            if cmd == "boot":
                await fleet.start(send_startup=False)
                answer({"ok": True})
            elif cmd == "report":
                await _report_all(fleet, int(command.get("concurrency", 64)), [str(u) for u in command.get("urls", [])])
                answer({"ok": True})
            elif cmd == "stats":
                answer({"ok": True, "phones": fleet.stats()})
            elif cmd == "cpu":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                answer({"ok": True, "cpu_s": usage.ru_utime + usage.ru_stime})
            elif cmd == "stop":
                return
            else:
                answer({"ok": False, "error": f"unknown command {cmd!r}"})
    finally:
        await fleet.stop(10.0)
        answer({"ok": True, "stopped": True})


def child_main() -> int:
    raise_nofile()
    asyncio.run(_serve())
    return 0


# --- the parent ---------------------------------------------------------------------------------------------------
class SimFleet:
    """``count`` phones on ``base_ip`` onwards, in ``ceil(count / shard_size)`` simulator processes."""

    def __init__(
        self,
        count: int,
        *,
        base_ip: str,
        dls_url: str,
        wbm_port: int,
        contact_port: int,
        fault_every: tuple[str, ...] = (),
        mac_start: int = 0xB00001,
        e164_start: int = 4989800001,
        shard_size: int = SHARD_SIZE,
        log_dir: Path | None = None,
    ) -> None:
        self.count = count
        self.addresses = fleet_addresses(base_ip, count)
        shards = max(1, math.ceil(count / shard_size))
        size = math.ceil(count / shards)
        self.specs = [
            ShardSpec(
                count=min(size, count - start),
                base_ip=self.addresses[start],
                mac_start=mac_start + start,
                e164_start=e164_start + start,
                dls_url=dls_url,
                wbm_port=wbm_port,
                contact_port=contact_port,
                fault_every=fault_every,
            )
            for start in range(0, count, size)
        ]
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for i, spec in enumerate(self.specs):
            stderr = (self.log_dir / f"simulator-{i}.log").open("ab") if self.log_dir else subprocess.DEVNULL
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert proc.stdin is not None
            proc.stdin.write((spec.to_json() + "\n").encode())
            proc.stdin.flush()
            self.procs.append(proc)

    async def command(self, cmd: str, **extra: Any) -> list[dict[str, Any]]:
        """Send ``cmd`` to every shard at once and wait for all answers."""
        return list(await asyncio.gather(*(asyncio.to_thread(self._one, p, cmd, extra) for p in self.procs)))

    @staticmethod
    def _one(proc: subprocess.Popen[bytes], cmd: str, extra: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write((json.dumps({"cmd": cmd, **extra}) + "\n").encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], COMMAND_TIMEOUT_S)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"simulator process {proc.pid} ended (or stalled) during {cmd!r}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"simulator {cmd!r}: {answer.get('error')}")
        return answer

    async def boot(self) -> None:
        await self.command("boot")

    async def report(self, concurrency: int = 64, urls: Sequence[str] = ()) -> None:
        """Every phone reports (``start-up``), ``concurrency`` at a time over all shards; with ``urls``, each
        shard's phones alternate between them instead of calling their own DLS URL."""
        per_shard = max(1, concurrency // len(self.procs))
        await self.command("report", concurrency=per_shard, **({"urls": list(urls)} if urls else {}))

    async def stats(self) -> list[dict[str, Any]]:
        return [phone for answer in await self.command("stats") for phone in answer["phones"]]

    async def cpu_seconds(self) -> float:
        return sum(float(a["cpu_s"]) for a in await self.command("cpu"))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.write(b'{"cmd": "stop"}\n')
                    proc.stdin.flush()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs = []


if __name__ == "__main__":
    sys.exit(child_main())
