"""Benchmark: several certmgr nodes on one PostgreSQL — two ``--role wpi`` nodes and a ``--role scheduler`` node
deliver to 2,000 simulated phones, then the same with one WPI node killed (``kill -9``) mid-run; against one
``--role all`` node doing the same (the floor).

    .venv/bin/python bench/multinode.py [--phones 2000] [--concurrency 50] [--kill-at 0.5] [--keep]

Everything runs on one machine: a throwaway PostgreSQL (:mod:`tests.pg`), every node its own ``certmgr serve``
process with its own data dir and node name, and the phones (127.210.x.y) in processes of their own
(:mod:`bench.simproc`, as in ``bench/deploy.py``), so that this process only watches the database.

* **Set-up** (once): the two WPI nodes and the scheduler node with the policy's maintenance window closed; half
  the phones report (``start-up``) to each WPI node, both nodes' reconcilers issue the certificates, nothing is
  delivered. The database then serves as the template of every run (``CREATE DATABASE … TEMPLATE``), so each
  run delivers the same 2,000 issued certificates; issuance is reported apart.
* **Runs** — each on a fresh copy of that database, fresh data dirs, fresh simulator processes (booted without
  ``start-up``: the phones are known), the window open:

  1. *one node* — one ``certmgr serve --role all`` (the floor of this bench: the same work on one node);
  2. *two WPI nodes + scheduler*;
  3. *the same, one WPI node killed* with SIGKILL once ``--kill-at`` of the phones are verified, not restarted.

  How the phones reach both WPI nodes: each node's dispatcher claims deployments (``FOR UPDATE SKIP LOCKED``
  under an advisory lock; ``deploy_concurrency`` is global) and names itself in the contact-me it sends
  (``dls_ip_addr``/``dls_ip_port``, D4), so the phone calls back the node that claimed it.

Measured per run, from the database and the simulator's own counters: every phone verified; exactly one
accepted write per certificate (each phone's ``writes_accepted`` and the certificate it serves); each attempt
claimed once; work per node (claims = ``deployment.contacting`` audit events by ``node``; CPU seconds of each
node's process tree); throughput = phones ÷ (first contact-me → last verified, database timestamps), and the
ratio to the one-node floor. For the kill: the deployments the dead node held (leased to it), and for each the
time from the kill to its first audit event by the survivor (the recovery), against one lease period
(:func:`certmgr.deploy.records.interaction_lease`, the longest lease a node takes).

Bounded: every wait has a deadline, every process is stopped (SIGTERM, then SIGKILL) at the end, PostgreSQL and
the work dir are removed (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: python bench/multinode.py
    sys.path.insert(0, str(REPO))

from sqlalchemy.engine import Engine  # noqa: E402
from sqlmodel import col, select  # noqa: E402

from bench.common import (  # noqa: E402
    ServeProcess,
    count_certs,
    count_verified,
    stop_cleanly_on_signals,
    tree_cpu_seconds,
    write_policy,
)
from bench.simproc import SimFleet, raise_nofile  # noqa: E402
from certmgr.clock import SystemClock  # noqa: E402
from certmgr.db.deployments import IN_FLIGHT_STATES  # noqa: E402
from certmgr.db.engine import create_db_engine, session_scope  # noqa: E402
from certmgr.db.models import AuditEvent, Certificate, Deployment, DeploymentState, Device  # noqa: E402
from certmgr.deploy.records import interaction_lease  # noqa: E402
from certmgr.settings import Settings  # noqa: E402
from certmgr.simulator.fleet import fleet_addresses  # noqa: E402
from certmgr.simulator.ports import free_port, port_free_on_all  # noqa: E402

BASE_IP = "127.210.0.1"
MAC_START = 0xD00000
START_TIMEOUT_S = 180.0
POLL_S = 0.5
S = DeploymentState


# --- helpers ----------------------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = POLL_S) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise RuntimeError(f"{what}: not reached within {timeout:g}s")


# --- certmgr nodes ------------------------------------------------------------------------------------------------
class Node(ServeProcess):
    """One ``certmgr serve --role ROLE`` process with its own data dir, ports and node name, in ``work/name``."""

    def __init__(self, name: str, role: str, work: Path, values: dict[str, object], password: str) -> None:
        super().__init__(work / name, values, password, role)
        self.name = name
        self.cpu_s = 0.0  # CPU seconds of its process tree, read before it was stopped or killed

    @property
    def wpi_url(self) -> str:
        return f"https://127.0.0.1:{self.values['wpi_port']}/DeploymentService/LoginService"

    def kill(self) -> None:
        """SIGKILL (no shutdown code runs), its key workers too."""
        if self.running():
            self.cpu_s = tree_cpu_seconds(self.pid)
        super().kill()

    def stop(self) -> None:
        if self.running():
            self.cpu_s = tree_cpu_seconds(self.pid)
        super().stop()


# --- reading the database -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Held:
    """A deployment the killed node held (leased to it) when it died."""

    id: int
    state: DeploymentState
    lease_until: datetime


def held_by(engine: Engine, node: str) -> list[Held]:
    with session_scope(engine) as s:
        rows = s.exec(
            select(Deployment).where(
                col(Deployment.lease_owner) == node,
                col(Deployment.state).in_([st.value for st in IN_FLIGHT_STATES]),
            )
        ).all()
        return [Held(d.id or 0, d.state, d.lease_until) for d in rows if d.lease_until is not None]


@dataclass
class RunResult:
    """What one run measured."""

    name: str
    phones: int
    nodes: list[Node]
    boot_s: float = 0.0
    wall_s: float = 0.0  # first node started → all verified
    span_s: float = 0.0  # first contact-me → last verified (database timestamps)
    verified: int = 0
    certificates: int = 0
    deployments: int = 0
    attempts: int = 0
    claims_twice: int = 0
    claims_per_node: dict[str, int] = field(default_factory=dict)
    writes: Counter[int] = field(default_factory=Counter)  # writes accepted per phone → phones
    serves_other: int = 0  # phones whose served certificate is not the verified one
    phone_errors: int = 0
    pg_cpu_s: float = 0.0
    phones_cpu_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    killed: str | None = None
    killed_at_verified: int = 0
    held: list[Held] = field(default_factory=list)
    steps_p50: dict[str, float] = field(default_factory=dict)
    recovery_s: dict[int, float] = field(default_factory=dict)  # held deployment → kill → its first event after
    not_recovered: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.phones / self.span_s if self.span_s else 0.0


def analyse(engine: Engine, result: RunResult, stats: list[dict[str, Any]], killed_at: datetime | None) -> None:
    """Fill ``result`` from the database and the phones' counters."""
    with session_scope(engine) as s:
        deps = s.exec(select(Deployment)).all()
        certs = {c.id: c for c in s.exec(select(Certificate)).all()}
        devices = {d.id: d for d in s.exec(select(Device)).all()}
        steps = s.exec(
            select(AuditEvent)
            .where(col(AuditEvent.action).in_(STEPS), col(AuditEvent.subject_type) == "deployment")
            .order_by(col(AuditEvent.seq))
        ).all()
        claims = [e for e in steps if e.action == "deployment.contacting"]
        first_claim = min(e.at for e in claims)
        last_verified = max(d.verified_at for d in deps if d.verified_at is not None)
        after_kill: dict[str, datetime] = {}
        if killed_at is not None:
            ids = [str(h.id) for h in result.held]
            for e in s.exec(
                select(AuditEvent)
                .where(col(AuditEvent.subject_type) == "deployment", col(AuditEvent.subject_id).in_(ids))
                .where(col(AuditEvent.at) > killed_at)
                .order_by(col(AuditEvent.seq))
            ).all():
                after_kill.setdefault(e.subject_id or "", e.at)
    result.span_s = (last_verified - first_claim).total_seconds()
    result.verified = sum(d.state is S.VERIFIED for d in deps)
    result.certificates = len(certs)
    result.deployments = len(deps)
    result.attempts = sum(d.attempts for d in deps)
    result.claims_twice = sum(n - 1 for n in Counter((e.subject_id, e.details["attempt"]) for e in claims).values())
    result.claims_per_node = dict(Counter(str(e.details.get("node")) for e in claims))
    verified_fp = {
        devices[d.device_id].mac: certs[d.certificate_id].fingerprint_sha256 for d in deps if d.state is S.VERIFIED
    }
    result.steps_p50 = step_latencies(steps)
    result.writes = Counter(int(p["writes_accepted"]) for p in stats)
    result.serves_other = sum(1 for p in stats if verified_fp.get(p["mac"]) != p["current_cert_sha256"])
    result.phone_errors = sum(1 for p in stats if p["last_error"])
    if killed_at is not None:
        for h in result.held:
            at = after_kill.get(str(h.id))
            if at is None:
                result.not_recovered.append(h.id)
            else:
                result.recovery_s[h.id] = (at - killed_at).total_seconds()


#: The audit events of a delivery's steps, in order: claimed, contact-me answered, write accepted, verified.
STEPS = ("deployment.contacting", "deployment.contacted", "deployment.written", "deployment.verified")


def step_latencies(events: Sequence[AuditEvent]) -> dict[str, float]:
    """Median seconds of each step of a delivery (its last attempt), over the verified deployments."""
    per_dep: dict[str, dict[str, datetime]] = {}
    for e in events:  # in chain order: a later attempt overwrites an earlier one
        steps = per_dep.setdefault(e.subject_id or "", {})
        if e.action == STEPS[0]:
            steps.clear()
        steps[e.action] = e.at
    spans: dict[str, list[float]] = {}
    names = ("claim -> contact-me answered", "-> write accepted", "-> verified", "claim -> verified")
    pairs = ((STEPS[0], STEPS[1]), (STEPS[1], STEPS[2]), (STEPS[2], STEPS[3]), (STEPS[0], STEPS[3]))
    for steps in per_dep.values():
        if all(a in steps for a in STEPS):
            for name, (a, b) in zip(names, pairs, strict=True):
                spans.setdefault(name, []).append((steps[b] - steps[a]).total_seconds())
    return {name: sorted(v)[len(v) // 2] for name, v in spans.items()}


# --- the bench ----------------------------------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    pg: Any
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    secrets_: dict[str, str] = field(
        default_factory=lambda: {"ca_passphrase": secrets.token_urlsafe(16), "master_key": secrets.token_urlsafe(32)}
    )
    hosts: list[str] = field(default_factory=list)
    wbm_port: int = 0
    contact_port: int = 0
    running: list[Node] = field(default_factory=list)
    phones: SimFleet | None = None

    def __post_init__(self) -> None:
        self.hosts = fleet_addresses(BASE_IP, self.args.phones)
        self.wbm_port = port_free_on_all(self.hosts)
        self.contact_port = port_free_on_all(self.hosts)

    def settings(self) -> dict[str, object]:
        """The nodes' shared settings (each node adds its data dir, ports and name)."""
        return {
            "policy_dir": self.work / "policies",
            "ca_config_dir": REPO / "ca",
            **self.secrets_,
            "wpi_host": "127.0.0.1",
            "api_host": "127.0.0.1",
            "wbm_port": self.wbm_port,
            "contact_me_port": self.contact_port,
            "contact_gap_seconds": 0,
            "callback_timeout_seconds": 30,
            "retry_base_seconds": 1,
            "retry_max_seconds": 5,
            "max_attempts": 10,
            "dispatch_tick_seconds": 0.2,
            "interaction_timeout_seconds": 30,
            "probe_tries": 4,
            "probe_interval_seconds": 0.2,
            "probe_timeout_seconds": 5.0,
            "deploy_concurrency": self.args.concurrency,
            "reconcile_issue_batch": 20,
            "scheduler_enabled": True,
            "log_level": "WARNING",
        }

    def node(self, run: str, name: str, role: str, database_url: str) -> Node:
        values = {
            **self.settings(),
            "database_url": database_url,
            "data_dir": self.work / run / name / "var",
            "node_id": name,
            "wpi_port": free_port(),
            "wpi_poll_port": free_port(),
            "api_port": free_port(),
        }
        return Node(name, role, self.work / run, values, self.password)

    def start_nodes(self, nodes: Sequence[Node]) -> None:
        for node in nodes:  # one after the other: the first migrates the database (and creates the CA in it)
            self.running.append(node)
            node.write_config()
            node.start(START_TIMEOUT_S)

    def stop_all(self) -> None:
        for node in self.running:
            node.stop()
        self.running = []
        if self.phones is not None:
            self.phones.stop()
            self.phones = None

    def start_phones(self, run: str, urls: Sequence[str], *, report: bool) -> float:
        """Start the simulator processes (:class:`bench.simproc.SimFleet`) and boot every phone without a start-up
        message; with ``report``, every phone then reports (``start-up``) to ``urls`` in turn, 64 at a time.
        Returns the seconds this took."""
        folder = self.work / run
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.phones = SimFleet(
            self.args.phones,
            base_ip=BASE_IP,
            dls_url=urls[0],
            wbm_port=self.wbm_port,
            contact_port=self.contact_port,
            mac_start=MAC_START,
            log_dir=folder,
        )
        self.phones.start()
        asyncio.run(self.phones.boot())
        if report:
            asyncio.run(self.phones.report(64, urls))
        return time.monotonic() - started

    def setup(self) -> tuple[str, float, dict[str, float]]:
        """Issue every certificate once (window closed) into the template database; returns its name, the issuance
        time and the CPU seconds of each node."""
        url = self.pg.create_database("template_fleet")
        write_policy(self.work / "policies", closed=True)
        nodes = [
            self.node("setup", "wpi-a", "wpi", url),
            self.node("setup", "wpi-b", "wpi", url),
            self.node("setup", "sched", "scheduler", url),
        ]
        self.start_nodes(nodes)
        engine = create_db_engine(url)
        try:
            t0 = time.monotonic()
            self.start_phones("setup", [nodes[0].wpi_url, nodes[1].wpi_url], report=True)
            n = self.args.phones
            wait_for(lambda: count_certs(engine) >= n, n * 1.0 + 300, "issuance")
            issuance_s = time.monotonic() - t0
            self.stop_all()
            certs = count_certs(engine)
            if certs != n:
                raise RuntimeError(f"issuance recorded {certs} certificates for {n} phones")
        finally:
            engine.dispose()
        write_policy(self.work / "policies", closed=False)
        return "template_fleet", issuance_s, {node.name: node.cpu_s for node in nodes}

    def run(self, name: str, template: str, roles: list[tuple[str, str]], kill: str | None = None) -> RunResult:
        """One delivery run on a copy of ``template``."""
        run = f"run-{len(list(self.work.glob('run-*'))) + 1}"
        url = self.pg.create_database(run.replace("-", "_"), template=template)
        nodes = [self.node(run, n, role, url) for n, role in roles]
        result = RunResult(name, self.args.phones, nodes, load_before=os.getloadavg())
        engine = create_db_engine(url)
        killed_at: datetime | None = None
        pg_pid = self.pg_pid()
        pg_before = tree_cpu_seconds(pg_pid)
        try:
            result.boot_s = self.start_phones(run, [nodes[0].wpi_url], report=False)
            assert self.phones is not None
            phones_cpu0 = asyncio.run(self.phones.cpu_seconds())
            t0 = time.monotonic()
            self.start_nodes(nodes)
            n = self.args.phones
            deadline = t0 + n * 1.0 + 600
            victim = next((node for node in nodes if node.name == kill), None)
            for _ in range(int((deadline - t0) / POLL_S) + 2):
                verified = count_verified(engine)
                if verified >= n:
                    break
                if victim is not None and killed_at is None and verified >= n * self.args.kill_at:
                    victim.kill()
                    killed_at = SystemClock().now()
                    result.killed, result.killed_at_verified = victim.name, verified
                    result.held = held_by(engine, victim.name)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: {verified}/{n} verified within {deadline - t0:.0f}s")
                if not all(node.running() for node in nodes if node is not victim):
                    raise RuntimeError(f"{name}: a node exited; see {self.work / run}")
                time.sleep(POLL_S)
            result.wall_s = time.monotonic() - t0
            result.phones_cpu_s = asyncio.run(self.phones.cpu_seconds()) - phones_cpu0
            result.pg_cpu_s = tree_cpu_seconds(pg_pid) - pg_before
            result.load_after = os.getloadavg()
            stats = asyncio.run(self.phones.stats())
            self.phones.stop()
            self.phones = None
            for node in nodes:
                node.stop()
            self.running = []
            analyse(engine, result, stats, killed_at)
        finally:
            engine.dispose()
        return result

    def pg_pid(self) -> int:
        """The postmaster's PID (its tree: every backend)."""
        pid_file = Path(self.pg._tmp) / "data" / "postmaster.pid"
        return int(pid_file.read_text().split()[0])


def lease_seconds(values: dict[str, object]) -> float:
    """The longest lease a node takes on a deployment (an interaction and its probe), from the one home."""
    settings = Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})  # type: ignore[arg-type]
    now = SystemClock().now()
    claim = timedelta(seconds=settings.callback_timeout_seconds)
    return max(interaction_lease(settings, now) - now, claim).total_seconds()


def report(results: list[RunResult], issuance: tuple[float, dict[str, float]], args: argparse.Namespace) -> None:
    n = args.phones
    floor = results[0]
    print()
    print(f"command: {' '.join(sys.argv)}   ({os.cpu_count()} CPUs)")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    cpu = ", ".join(f"{k} {v:.0f} s" for k, v in issuance[1].items())
    print(f"set-up: {n} certificates issued by two WPI nodes in {issuance[0]:.1f} s (node CPU: {cpu})")
    print()
    for r in results:
        print(f"== {r.name}")
        print(
            f"   verified {r.verified}/{n}; certificates {r.certificates}; deployments {r.deployments}; "
            f"attempts {r.attempts}; attempts claimed twice {r.claims_twice}"
        )
        writes = ", ".join(f"{count} phones {w}" for w, count in sorted(r.writes.items()))
        print(
            f"   writes accepted per phone: {writes}; phones serving another certificate than the verified one: "
            f"{r.serves_other}; phones with an error: {r.phone_errors}"
        )
        print(
            f"   first contact-me -> last verified {r.span_s:.1f} s = {r.rate:.1f} phones/s "
            f"(wall incl. node start {r.wall_s:.1f} s; phones booted in {r.boot_s:.1f} s)"
        )
        print(f"   claims per node: {r.claims_per_node}")
        print("   per phone, median: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.steps_p50.items()))
        node_cpu = ", ".join(f"{node.name} {node.cpu_s:.0f} s" for node in r.nodes)
        print(f"   CPU: {node_cpu}; PostgreSQL {r.pg_cpu_s:.0f} s; phones {r.phones_cpu_s:.0f} s")
        print(
            f"   load average before {r.load_before[0]:.2f} {r.load_before[1]:.2f}, "
            f"after {r.load_after[0]:.2f} {r.load_after[1]:.2f}"
        )
        if r.killed is not None:
            lease = lease_seconds(r.nodes[0].values)
            states = Counter(h.state.value for h in r.held)
            worst = max(r.recovery_s.values(), default=0.0)
            print(
                f"   killed {r.killed} (kill -9) at {r.killed_at_verified}/{n} verified; it held {len(r.held)} "
                f"deployments {dict(states)}"
            )
            print(
                f"   kill -> last of them taken back: {worst:.1f} s (lease period {lease:.1f} s); "
                f"never taken back: {len(r.not_recovered)}; stuck past one lease period: "
                f"{sum(1 for s in r.recovery_s.values() if s > lease) + len(r.not_recovered)}"
            )
    print()
    for r in results[1:]:
        print(f"throughput {r.name}: {r.rate:.1f} phones/s = {r.rate / floor.rate:.2f} x one node ({floor.rate:.1f})")
    ok = all(r.verified == n and set(r.writes) == {1} and r.serves_other == 0 and r.claims_twice == 0 for r in results)
    print(f"all runs: every phone verified, one accepted write each, nothing claimed twice: {'yes' if ok else 'NO'}")


def main() -> int:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50, help="deploy_concurrency (global, every run)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="kill a WPI node at this share verified")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    args = parser.parse_args()
    if not 10 <= args.phones <= 5000:
        parser.error("--phones must be 10..5000")
    if not 0.05 <= args.kill_at <= 0.95:
        parser.error("--kill-at must be 0.05..0.95")
    raise_nofile()
    from tests.pg import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="certmgr-multinode-"))
    pg = PostgresServer()
    bench: Bench | None = None
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    try:
        pg.start()
        bench = Bench(args, work, pg)
        template, issuance_s, issuance_cpu = bench.setup()
        print(f"set-up: {args.phones} certificates issued in {issuance_s:.1f} s", flush=True)
        results = []
        for name, roles, kill in (
            ("one node (--role all)", [("solo", "all")], None),
            ("two WPI nodes + scheduler", [("wpi-a", "wpi"), ("wpi-b", "wpi"), ("sched", "scheduler")], None),
            (
                "two WPI nodes + scheduler, wpi-b killed",
                [("wpi-a", "wpi"), ("wpi-b", "wpi"), ("sched", "scheduler")],
                "wpi-b",
            ),
        ):
            results.append(bench.run(name, template, roles, kill))
            r = results[-1]
            print(f"{name}: {r.verified} verified, {r.rate:.1f} phones/s", flush=True)
        report(results, (issuance_s, issuance_cpu), args)
        return 0
    finally:
        if bench is not None:
            bench.stop_all()
        pg.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
