"""Benchmark: a year of a 100,000-phone fleet in virtual time, against a floor of bare rows and bare cryptography.

    .venv/bin/python bench/fleet_year.py [--phones 100000] [--days 400] [--backend sqlite|postgresql|both]
                                         [--cases year,mass,rotation] [--seed 1] [--quiet] [--profile FILE]

What runs is certmgr's own code on a real database (SQLite, or the throwaway PostgreSQL of :mod:`tests.pg`),
driven by a :class:`~certmgr.clock.ManualClock`:

* the renewal reconcile (:func:`certmgr.renewal.service.reconcile_renewals`: the planner with jitter, maintenance
  windows and the spread, the reissue triggers, the hourly and per-run rate limits, issuance and
  :func:`~certmgr.deploy.queue.issue_and_queue`);
* the dispatcher's steps, in the dispatcher's order: the reconciler (:class:`certmgr.deploy.reconcile.Reconciler`:
  the phones the hub saw since the last tick — every report of a trusted phone, every proven move — then the next
  slice of the fleet; a moved phone gets its certificate for the new address here, as in the service),
  :func:`~certmgr.deploy.recovery.expire_stale`, :func:`~certmgr.deploy.queue.claim_due` with the concurrency limit,
  contact gap and windows, :func:`~certmgr.deploy.queue.contact_result`, backoff through
  :func:`~certmgr.deploy.queue.retry_or_fail`;
* the WPI hub's sequence for every phone message, in the hub's order but without HTTP
  (:class:`ModelHub`): D10 admission (:func:`certmgr.deploy.admission.admit`) → the pure state machine
  (:mod:`certmgr.wpi.interaction`) → effects (:func:`certmgr.deploy.effects.apply_effects`) → the probe
  (:func:`~certmgr.deploy.verification.probe_target` / :func:`~certmgr.deploy.verification.finish_verification`)
  and address proofs (:func:`certmgr.phones.proofs.prove_address` → ``resolve_claim``);
* the probe sweep (:class:`certmgr.phones.sweep.ProbeSweep`, its TLS probe answered by the model phone).

The phones are models in memory (:class:`Phone`): no sockets. A phone answers certmgr's messages at once, opens
the PKCS#12 it is given and "serves" the certificate it accepted (its SHA-256 is what a probe of its WBM sees).
Faults (deterministic, ``--seed``): 2 % of the phones go offline for 1-10 days at a time (contact-me fails,
probes fail), 1 % answer the first write of every certificate "busy" and call back with ``solicited`` minutes
later, 0.5 % move to another address once (start-up from the new address → claim → proof of possession →
move → new certificate), 0.1 % are factory-reset once (they serve their own certificate until the probe sweep
or the next renewal puts certmgr's back).

Time: the bench is event driven. The renewal reconcile runs every ``--renewal-every`` virtual minutes, and at
the service's own interval (60 s) while the rate limit holds renewals back and budget is left, or at the moment
the hourly budget frees; the dispatcher ticks every second while it has work and is woken when a deployment
becomes claimable (next attempt, window opening, contact gap) and a second after a proven move (the reconciler
issues the certificate for the new address); the probe sweep runs hourly. Nothing skipped could have changed the
outcome except the cadence of the renewal runs (a renewal issued up to ``--renewal-every`` later than a 60-s job
would: conservative for the margins) and of the reconciler, which runs — the phones the hub marked, then its
slice of the fleet — on the bench's ticks only, not every second (a phone marked by a report waits for the next
tick there is anyway: never earlier than in the service, so again conservative).

Cases: **year** (phones with certificates issued uniformly over the year before; 400 days), **mass** (every
phone enrolled in one night; the run starts shortly before their renewal is due) and **rotation** (the CA is
replaced; every certificate is reissued). Each prints a line per night and a summary; then a floor: the bare
rows the renewals need (certificate and deployment inserts, their updates, the device update; one transaction
per renewal), the cryptography each renewal cannot skip (:func:`floor_issuance`: a key, a certificate signed by the
issuing CA, the PKCS#12) and the floor scan of each renewal run (:data:`bench.common.FLOOR_SCAN_SQL`: the database
visits every row the first pass runs over, once), measured in the same database and process, and the ratio (also
to the database part alone, the floor of the figures recorded before the cryptography was added to it).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import ctypes
import gc
import hashlib
import heapq
import ipaddress
import logging
import math
import os
import pstats
import random
import resource
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlmodel import col

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import floor_scan as common_floor_scan  # noqa: E402
from bench.common import proc_status_kib, stop_cleanly_on_signals  # noqa: E402
from certmgr.clock import ManualClock  # noqa: E402
from certmgr.db.deployments import UNFINISHED_STATES  # noqa: E402
from certmgr.db.engine import session_scope  # noqa: E402
from certmgr.db.locks import is_postgres  # noqa: E402
from certmgr.db.models import (  # noqa: E402
    CARecord,
    CARole,
    Certificate,
    Deployment,
    DeploymentState,
    Device,
    Enrollment,
    IssueReason,
)
from certmgr.deploy.admission import admit  # noqa: E402
from certmgr.deploy.effects import apply_effects  # noqa: E402
from certmgr.deploy.queue import claim_due, confirm_written, contact_result  # noqa: E402
from certmgr.deploy.reconcile import Reconciler  # noqa: E402
from certmgr.deploy.recovery import expire_stale  # noqa: E402
from certmgr.deploy.verdict import Verdict  # noqa: E402
from certmgr.deploy.verification import finish_verification, probe_target  # noqa: E402
from certmgr.inventory.enrollment import AddressClaim  # noqa: E402
from certmgr.issuance.service import BuiltCertificate  # noqa: E402
from certmgr.operations.ca import initialise_ca  # noqa: E402
from certmgr.phones.hub import _entry as transcript_entry  # noqa: E402
from certmgr.phones.proofs import prove_address  # noqa: E402
from certmgr.phones.sweep import ProbeSweep, _Target  # noqa: E402
from certmgr.pki.ca import Issuer, load_ca_definition  # noqa: E402
from certmgr.pki.leaf import LeafSpec, issue_key_and_leaf  # noqa: E402
from certmgr.pki.pkcs12 import build_pkcs12, open_pkcs12  # noqa: E402
from certmgr.pki.types import KeyType, Pkcs12Profile  # noqa: E402
from certmgr.policy.windows import window_open  # noqa: E402
from certmgr.renewal.planner import RenewalInput, base_time  # noqa: E402
from certmgr.renewal.service import RenewalReport, reconcile_renewals  # noqa: E402
from certmgr.runtime import Runtime, open_runtime  # noqa: E402
from certmgr.settings import Settings  # noqa: E402
from certmgr.wpi import interaction as wi  # noqa: E402
from certmgr.wpi.certjudge import format_certificate_info  # noqa: E402
from certmgr.wpi.jobs import Serve, deployment_of  # noqa: E402
from certmgr.wpi.messages import (  # noqa: E402
    ITEM_WBM_CERTIFICATE,
    ITEM_WBM_CERTIFICATE_INFO,
    Action,
    DLSMessage,
    Fragment,
    Item,
    Reason,
    ReplyStatus,
    WorkpointMessage,
)

TIMEZONE = "Europe/Berlin"
WINDOW_HOURS = (22, 5)
DEVICE_TYPE = "OpenStage 60"
SOFTWARE = "V3 R5.21.0"
CONTACT_PORT = 8085
SEED_CHUNK = 5000
MARGIN_STEP_H = 0.1  # the resolution of the margin quantiles (the minimum is exact)
#: The contact-me error a model phone that is not there produces (the text of certmgr.phones.contactme).
UNREACHABLE = "contact-me to {ip} failed: phone unreachable (ConnectError)"
log = logging.getLogger("bench.fleet_year")


# --- settings, policy, CA --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faults:
    """The fault mix: shares of the fleet (each phone draws its faults once, from the seed)."""

    offline: float = 0.02  # go offline for offline_days at a time, online_days in between
    busy: float = 0.01  # answer the first write of every certificate busy, call back minutes later
    move: float = 0.005  # move to another address once during the run
    reset: float = 0.001  # factory reset once during the run
    offline_days: tuple[float, float] = (1.0, 10.0)
    online_days: tuple[float, float] = (2.0, 30.0)
    busy_callback_minutes: tuple[float, float] = (2.0, 30.0)

    @classmethod
    def none(cls) -> Faults:
        return cls(offline=0.0, busy=0.0, move=0.0, reset=0.0)


def write_policy(policy_dir: Path, key: str) -> Path:
    """``policies/default.toml`` with ``key`` and a nightly window 22-05 in :data:`TIMEZONE` (everything else the
    default: 397 days, renew 30 days before expiry, 6 h jitter)."""
    policy_dir.mkdir(parents=True, exist_ok=True)
    body = (REPO / "policies" / "default.toml").read_text().replace('type = "rsa-2048"', f'type = "{key}"')
    start, end = WINDOW_HOURS
    body += f'\n[[windows]]\ndays = "*"\nhours = "{start:02d}-{end:02d}"\ntimezone = "{TIMEZONE}"\n'
    (policy_dir / "default.toml").write_text(body)
    return policy_dir


def write_ca_definition(ca_dir: Path, key: str | None) -> Path:
    """``ca/ca.toml``, with every CA key replaced by ``key`` (``None``: the repository's, RSA)."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    body = (REPO / "ca" / "ca.toml").read_text()
    if key is not None:
        body = body.replace('key = "rsa-4096"', f'key = "{key}"').replace('key = "rsa-3072"', f'key = "{key}"')
    (ca_dir / "ca.toml").write_text(body)
    return ca_dir


def open_bench_runtime(
    root: Path, url: str | None, clock: ManualClock, *, key: str, ca_key: str | None, **overrides: Any
) -> Runtime:
    """A runtime with the default settings (rate limits, gaps, backoff, concurrency), except: keys generated in this
    process (``issuance_workers = 1``), logging quiet, a fixed node name (and ``overrides``, for the tests)."""
    settings = Settings(
        data_dir=root / "var",
        database_url=url,
        policy_dir=write_policy(root / "policies", key),
        ca_config_dir=write_ca_definition(root / "ca", ca_key),
        ca_passphrase="bench-passphrase",
        master_key="bench-master-key-0123456789abcdef0123",
        issuance_workers=1,
        node_id="fleet-year",
        scheduler_enabled=False,
        log_level="WARNING",
        **overrides,
    )
    return open_runtime(settings, clock, create_ca=True)


def mac_of(n: int) -> str:
    return f"00:1A:E8:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}"


def ip_of(n: int, block: int = 10) -> str:
    return f"{block}.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{(n & 0xFF) or 0}"


def uri_of(ip: str) -> str:
    return f"http://{ip}:{CONTACT_PORT}/contact_dls.html/ContactDLS"


def seeded_fingerprint(n: int, generation: int = 0) -> str:
    return hashlib.sha256(f"seeded-{n}-{generation}".encode()).hexdigest()


def seeded_serial(n: int) -> str:
    """A seeded certificate's serial: 20 octets, as long as those certmgr issues."""
    return f"5eed{n:036x}"


# --- the model phones --------------------------------------------------------------------------------------------
class Phone:
    """One model phone: what it serves, whether it is there, its faults."""

    __slots__ = (
        "busy",
        "busy_serial",
        "due_from",
        "gen",
        "info",
        "ip",
        "issued",
        "mac",
        "n",
        "not_after",
        "online",
        "reset_at",
        "serving",
    )

    def __init__(self, n: int, ip: str, serving: str, not_after: datetime, due_from: datetime) -> None:
        self.n = n
        self.mac = mac_of(n)
        self.ip = ip
        self.online = True
        self.busy = False  # answers the first write of each certificate busy
        self.busy_serial = 0  # the certificate it was busy for
        self.serving = serving  # SHA-256 of the certificate its WBM serves
        self.info: str | None = None  # its wbm-server-certificate-info (None: a certificate it was not given by us)
        self.not_after = not_after  # expiry of its current verified certmgr certificate
        self.gen = 0  # bumped with every verified successor (stale expiry entries are skipped)
        self.due_from = due_from  # when the current certificate needs a successor (the planner's base time)
        self.issued = False  # certmgr issued it a successor that is not verified yet
        self.reset_at: datetime | None = None  # factory reset, not yet serving certmgr's certificate again

    def items(self) -> tuple[Item, ...]:
        return (
            Item("mac-addr", self.mac),
            Item("device-type", DEVICE_TYPE),
            Item("software-version", SOFTWARE),
            Item("contact-me-uri", uri_of(self.ip)),
        )


@dataclass
class Counters:
    """What one night (or the whole case) saw."""

    issued: int = 0  # certificates issued (every reason): by renewal runs and by the dispatcher's reconciler
    scheduled: int = 0  # ... of which scheduled (not immediate: held by the hourly limit, or past it by urgency)
    delivered: int = 0  # successors verified
    waiting: int = 0  # at the window's close: due (renewal time reached, or CA rotated), no verified successor
    deferred: int = 0  # ... of which no successor was issued yet (held back by the rate limit and the spread)
    queue: int = 0  # unfinished deployments when the window closed
    contacts: int = 0
    contact_failures: int = 0
    busy: int = 0
    capacity: int = 0  # renewals the hourly limit allows in the night's window
    renewed: int = 0  # phones with a successor verified since the case started (at the window's close)
    waiting_offline: int = 0  # phones without one that are offline (at the window's close)


class Margins:
    """The margins left on predecessors when their successors verified, in bounded memory: the exact minimum and a
    count per :data:`MARGIN_STEP_H` (a list of every margin grew the bench by one float per renewal, which the memory
    samples then counted as the service's)."""

    def __init__(self) -> None:
        self.count = 0
        self.min_h = math.inf
        self._steps: Counter[int] = Counter()

    def add(self, hours: float) -> None:
        self.count += 1
        self.min_h = min(self.min_h, hours)
        self._steps[math.floor(hours / MARGIN_STEP_H)] += 1

    def quantile_h(self, q: float) -> float:
        """The ``q`` quantile (the lower edge of its step; the same rank as a sorted list's ``int(q * count)``)."""
        rank = min(self.count - 1, int(q * self.count))
        seen = 0
        for step in sorted(self._steps):
            seen += self._steps[step]
            if seen > rank:
                return max(step * MARGIN_STEP_H, self.min_h)
        return math.nan


@dataclass
class Results:
    """Everything a case reports."""

    name: str
    phones: int
    nights: dict[date, Counters] = field(default_factory=dict)
    expired: list[tuple[str, datetime]] = field(default_factory=list)  # online at expiry: the target is none
    expired_offline: list[tuple[str, datetime]] = field(default_factory=list)
    margins: Margins = field(default_factory=Margins)  # left on the predecessor when a successor verified
    tight: list[tuple[float, str, datetime]] = field(default_factory=list)  # margins under 7 days: (h, phone, when)
    reasons: dict[str, int] = field(default_factory=dict)
    renewal_runs: int = 0
    dispatch_ticks: int = 0
    sweeps: int = 0
    moves: dict[str, int] = field(default_factory=dict)
    resets_detected_h: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    seed_s: float = 0.0
    timers: dict[str, float] = field(default_factory=dict)
    statements: dict[str, int] = field(default_factory=dict)  # with --statements: per timed section
    commits: dict[str, int] = field(default_factory=dict)
    memory: list[MemorySample] = field(default_factory=list)
    db_expired: int = 0  # expired before a verified successor, from the database's own records
    db_current_expired: int = 0
    done_at: datetime | None = None
    started_at: datetime | None = None
    certificates_issued: int = 0
    reconciled_reasons: dict[str, int] = field(default_factory=dict)  # what the dispatcher's reconciler recorded
    deliveries: int = 0
    contacts_outside_window: int = 0  # contact-me sent while the phone's maintenance window was shut (target 0)
    max_limited_per_hour: int = 0  # most issuances under the hourly budget in the hour up to a renewal run
    over_limit: int = 0  # scheduled issuances past the budget (no hour with room before their latest time)
    limit_per_hour: int = 0  # renewal_max_per_hour
    renewed: int = 0  # phones with a successor verified since the case started (at the end)

    @property
    def reconciled(self) -> int:
        """Certificates the dispatcher's reconciler recorded (a new address, or no valid one left)."""
        return sum(self.reconciled_reasons.values())

    def night(self, key: date) -> Counters:
        found = self.nights.get(key)
        if found is None:
            found = self.nights[key] = Counters()
        return found


@dataclass(frozen=True)
class MemorySample:
    """Where the process's memory is after a night. Python's blocks flat while RSS grows points below Python;
    RSS that malloc_trim takes back was free memory the allocator kept; ``sqlite_mib`` is what the SQLite library
    itself holds (page caches, statements), part of ``anon_mib``; ``file_mib`` is mapped files (libraries)."""

    night: int
    rss_mib: float
    trimmed_mib: float | None  # RSS after malloc_trim (with --malloc-trim)
    python_blocks: int
    anon_mib: float
    file_mib: float
    sqlite_mib: float | None  # None where the SQLite library cannot be asked
    pymalloc_mib: float | None  # Python's small-object arenas (mmap'd, 1 MiB each; freed only when empty)
    malloc_used_mib: float | None  # glibc malloc: in use (what Python, SQLite, OpenSSL... allocated)
    malloc_free_mib: float | None  # glibc malloc: free but kept

    def line(self) -> str:
        return (
            f"{self.rss_mib:.0f}/{_mib(self.trimmed_mib)}/{self.python_blocks // 1000}/{self.anon_mib:.0f}/"
            f"{self.file_mib:.0f}/{_mib(self.sqlite_mib, 1)}/{_mib(self.pymalloc_mib)}/{_mib(self.malloc_used_mib)}/"
            f"{_mib(self.malloc_free_mib)}"
        )


def rss_mib() -> float:
    return proc_status_kib().get("VmRSS", 0) / 1024


def sqlite_memory_mib() -> float | None:
    """``sqlite3_memory_used()`` of the SQLite library Python's ``sqlite3`` module is linked with (0 from a library
    built without memory statistics, ``SQLITE_DEFAULT_MEMSTATUS=0``; the one here has them)."""
    with suppress(OSError, AttributeError, ImportError):
        import _sqlite3

        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
        used.restype = ctypes.c_int64
        return int(used()) / 2**20
    return None


def pymalloc_arenas_mib() -> float | None:
    """The size of Python's small-object arenas now, from ``sys._debugmallocstats`` (CPython writes it to fd 2)."""
    with suppress(OSError, AttributeError, ValueError, IndexError), tempfile.TemporaryFile() as capture:
        sys.stderr.flush()  # nothing buffered for the real stderr lands in the capture
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines():
            if " arenas * " in line:  # "N arenas * 1048576 bytes/arena = total"
                return int(line.split("=")[1].strip().replace(",", "")) / 2**20
    return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]  # fmt: skip


def malloc_mib() -> tuple[float | None, float | None]:
    """glibc's ``mallinfo2`` over all arenas: (in use, free but kept), MiB; (None, None) without glibc."""
    with suppress(OSError, AttributeError):
        info = ctypes.CDLL("libc.so.6").mallinfo2
        info.restype = _MallInfo2
        got = info()
        return (got.uordblks + got.hblkhd) / 2**20, got.fordblks / 2**20
    return None, None


def memory_sample(night: int, trim: bool) -> MemorySample:
    """Every figure first, then (with ``trim``) glibc's ``malloc_trim`` and the RSS after it."""
    status = {k: v / 1024 for k, v in proc_status_kib(keys=("VmRSS", "RssAnon", "RssFile")).items()}
    rss, anon, mapped = status.get("VmRSS", 0.0), status.get("RssAnon", 0.0), status.get("RssFile", 0.0)
    used, free = malloc_mib()
    blocks, sqlite, arenas = sys.getallocatedblocks(), sqlite_memory_mib(), pymalloc_arenas_mib()
    trimmed = trimmed_rss_mib() if trim else None
    return MemorySample(night, rss, trimmed, blocks, anon, mapped, sqlite, arenas, used, free)


def trimmed_rss_mib() -> float:
    """RSS after glibc's ``malloc_trim(0)`` hands the heap's free pages back to the system: what is still resident
    is in use (RSS that drops here was freed memory the allocator kept). Plain RSS where there is no glibc."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the hub's sequence, without HTTP ----------------------------------------------------------------------------
class ModelHub:
    """The order of :class:`certmgr.phones.hub.DeploymentHub` for one phone message (``_open`` → ``_finish_step`` →
    ``_continue``…), the probe after the certificate info, and the proof of a claimed address — with the phone's
    side answered by :class:`Phone` in memory."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.rt = sim.rt
        self.busy_until: dict[str, datetime] = {}
        self.last_proof: dict[str, datetime] = {}
        self._nonce = 0

    def nonce(self) -> str:
        self._nonce += 1
        return f"{self._nonce:032X}"

    def call(self, phone: Phone, reason: Reason) -> None:
        """The phone opens an interaction with ``reason`` and follows certmgr's actions until CleanUp."""
        rt = self.rt
        now = rt.clock.now()
        msg = WorkpointMessage(self.nonce(), reason, phone.items(), max_items=-1)
        with self.sim.timed("hub.admit"):
            admitted = admit(
                rt, mac=phone.mac, peer=phone.ip, reason=reason, now=now, busy_until=self.busy_until.get(phone.mac)
            )
        admission, trusted = admitted.admission, admitted.from_phone
        interaction, output = wi.start(msg, admission)
        authorised = isinstance(admission, Serve)
        deployment_id = deployment_of(admission) if authorised or trusted else None
        if authorised:
            self.busy_until.pop(phone.mac, None)
        self._step(phone, msg, output, deployment_id, authorised, trusted)
        for _ in range(20):  # bounded: a certificate job is a write (maybe in parts) and a read
            if output.finished:
                return
            answer = self.sim.answer(phone, output.reply)
            output = interaction.receive(answer)
            self._step(phone, answer, output, deployment_id, authorised, trusted)
        raise RuntimeError(f"interaction with {phone.mac} did not finish")

    def _step(
        self,
        phone: Phone,
        msg: WorkpointMessage,
        output: wi.Output,
        deployment_id: int | None,
        authorised: bool,
        trusted: bool,
    ) -> None:
        rt = self.rt
        now = rt.clock.now()
        effects = output.effects
        if not trusted and any(isinstance(e, wi.SecurityRefused) for e in effects):
            refused = [e for e in effects if isinstance(e, wi.SecurityRefused)]
            effects = tuple(e for e in effects if not isinstance(e, wi.SecurityRefused))
            with self.sim.timed("hub.effects"):
                apply_effects(
                    rt,
                    effects=[wi.SecurityRefused(refused[0].reason)],
                    deployment_id=None,
                    authorised=False,
                    peer=phone.ip,
                    now=now,
                    transcript=[],
                    subject_mac=phone.mac,
                )
        transcript = [transcript_entry(now, "in", msg), transcript_entry(now, "out", output.reply)]
        with self.sim.timed("hub.effects"):
            applied = apply_effects(
                rt,
                effects=effects,
                deployment_id=deployment_id,
                authorised=authorised,
                peer=phone.ip,
                now=now,
                transcript=transcript if deployment_id is not None else [],
            )
        if applied.busy_mac is not None:
            self.busy_until[applied.busy_mac] = now + timedelta(seconds=rt.settings.busy_callback_seconds)
        if applied.probe_deployment_id is not None:
            self.probe(applied.probe_deployment_id)
        for claim in applied.claims:
            self.prove(claim)
        if trusted:  # the hub's on_device_seen for every report of a trusted phone: the reconciler looks at it
            for effect in effects:
                if isinstance(effect, wi.PhoneReported) and effect.mac is not None:
                    self.sim.seen(effect.mac)

    def probe(self, deployment_id: int) -> None:
        """The hub's ``_probe``: the probe sees what the phone at the address serves."""
        rt = self.rt
        with self.sim.timed("hub.verify"):
            target = probe_target(rt, deployment_id)
            if target is None:
                return
            seen = self.sim.served_at(target.host)
            error = None if seen is not None else f"{target.host}: connection refused"
            verdict = finish_verification(rt, deployment_id, seen_sha256=seen, probe_error=error, now=rt.clock.now())
        if verdict is Verdict.VERIFIED:
            self.sim.verified(target.host)

    def prove(self, claim: AddressClaim) -> None:
        """The hub's ``start_proof`` (one proof per phone per ``address_proof_interval_seconds``) and ``_prove``."""
        rt = self.rt
        now = rt.clock.now()
        last = self.last_proof.get(claim.mac)
        if last is not None and last + timedelta(seconds=rt.settings.address_proof_interval_seconds) > now:
            return
        self.last_proof[claim.mac] = now
        seen = self.sim.served_at(claim.ip)
        error = None if seen is not None else f"{claim.ip}: connection refused"
        with self.sim.timed("hub.prove"):
            outcome = prove_address(rt, claim, seen, error, now)
        self.sim.results.moves[outcome] = self.sim.results.moves.get(outcome, 0) + 1
        if outcome == "moved":
            self.sim.seen(claim.mac, wake=True)  # the proofs' on_moved (the hub's on_device_seen)


class ModelSweep(ProbeSweep):
    """The probe sweep with its TLS probe answered by the model phone at the address (the only override)."""

    def __init__(self, runtime: Runtime, sim: Simulation) -> None:
        super().__init__(runtime)
        self.sim = sim

    def _probe(self, target: _Target) -> tuple[_Target, str | None, str | None]:
        seen = self.sim.served_at(target.ip)
        return target, seen, None if seen is not None else f"{target.ip}: connection refused"


class ModelReconciler(Reconciler):
    """The dispatcher's reconciler, telling the simulation what it recorded (the only override)."""

    def __init__(self, runtime: Runtime, sim: Simulation) -> None:
        super().__init__(runtime)
        self.sim = sim

    def _record(self, cand: Any, built: BuiltCertificate, now: datetime) -> bool:  # cand: reconcile._Candidate
        recorded = super()._record(cand, built, now)
        if recorded:
            self.sim.reconciled(cand.mac, cand.reason)
        return recorded


class StatementCensus:
    """The statements and commits the database driver ran, counted under the innermost running timed section of
    :class:`Simulation` (``--statements``; "other" outside every section), from SQLAlchemy's engine events on the
    case's engine. An ``executemany`` (one statement, several parameter sets) counts once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sections: list[str] = ["other"]
        self.statements: Counter[str] = Counter()
        self.commits: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, *_args: Any) -> None:
        self.statements[self.sections[-1]] += 1

    def _commit(self, *_args: Any) -> None:
        self.commits[self.sections[-1]] += 1

    def close(self) -> None:
        """Stop counting (before the floor is measured on the same engine)."""
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)


# --- the simulation ------------------------------------------------------------------------------------------------
RENEWAL, DISPATCH, SWEEP, OFFLINE, ONLINE, MOVE, RESET, CALLBACK, WINDOW_CLOSE = range(9)
#: Regular renewal runs happen at this minute of the hour (see :meth:`Simulation._next_regular`).
RUN_MINUTE = 56


class Simulation:
    """The event loop over virtual time for one case (see the module docstring)."""

    def __init__(
        self,
        rt: Runtime,
        clock: ManualClock,
        name: str,
        *,
        faults: Faults,
        seed: int,
        renewal_every: timedelta = timedelta(minutes=60),
        quiet: bool = False,
        out: Callable[[str], None] = print,
        rss_every: int = 50,
        malloc_trim: bool = False,
        statements: bool = False,
    ) -> None:
        self.rt = rt
        self.census = StatementCensus(rt.engine) if statements else None
        self.rss_every = rss_every
        self.malloc_trim = malloc_trim
        self.clock = clock
        self.faults = faults
        self.rng = random.Random(seed)
        self.renewal_every = renewal_every
        self.quiet = quiet
        self.out = out
        self.results = Results(name, 0)
        self.phones: list[Phone] = []
        self.by_ip: dict[str, Phone] = {}
        self.by_mac: dict[str, Phone] = {}
        self.hub = ModelHub(self)
        self.sweep = ModelSweep(rt, self)
        self.reconciler = ModelReconciler(rt, self)
        self.policy = rt.policies.get("default")
        self.windows = self.policy.windows
        self.tz = ZoneInfo(TIMEZONE)
        self._heap: list[tuple[datetime, int, int, int]] = []
        self._seq = 0
        self._expiry: list[tuple[datetime, int, int]] = []  # (not_after, phone, gen)
        self._next_renewal: datetime | None = None
        self._next_dispatch: datetime | None = None
        self._budget: deque[tuple[datetime, int]] = deque()  # (run or tick time, budget-counted issuances)
        self._limited: deque[tuple[datetime, int]] = deque()  # (run time, issuances the hourly limit holds back)
        self._spare_ip = 0
        self._nights_seen = 0
        self._stop_when: Callable[[], bool] | None = None
        self._installed: dict[int, tuple[datetime, datetime]] = {}  # accepted, not yet verified
        self.renewed = 0  # phones with a successor verified since the case started

    # -- timing --
    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        census = self.census
        if census is not None:
            census.sections.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.results.timers[name] = self.results.timers.get(name, 0.0) + time.perf_counter() - t0
            if census is not None:
                census.sections.pop()

    # -- the fleet --
    def add_phones(self, specs: list[tuple[int, str, str, datetime, datetime]]) -> None:
        """Model phones ``(n, ip, serving, not_before, not_after)`` of certificates certmgr issued (and verified)."""
        issuer = self.rt.issuer().cert.subject.rfc4514_string()
        for n, ip, serving, not_before, not_after in specs:
            phone = Phone(n, ip, serving, not_after, self.renewal_time(n, not_before, not_after))
            # What a phone serving its seeded certificate reports, from the start: a model phone that held no info
            # until its first renewal grew the bench by ~0.5 KiB per phone renewed, which the memory samples then
            # counted as the service's.
            phone.info = format_certificate_info(
                serial=int(seeded_serial(n), 16), subject=f"CN={ip},O=certmgr", issuer=issuer, not_before=not_before,
                not_after=not_after, sha1=serving[:40], sha256=serving,
            )  # fmt: skip
            self.phones.append(phone)
            self.by_ip[ip] = phone
            self.by_mac[phone.mac] = phone
            heapq.heappush(self._expiry, (not_after, n, 0))
        self.results.phones = len(self.phones)

    def draw_faults(self, start: datetime, end: datetime) -> None:
        """Schedule each phone's faults between ``start`` and ``end``."""
        f, rng = self.faults, self.rng
        span = (end - start).total_seconds()
        for phone in self.phones:
            if rng.random() < f.busy:
                phone.busy = True
            if rng.random() < f.offline:
                t = start + timedelta(seconds=rng.uniform(0, 30 * 86400))
                while t < end:
                    self.at(t, OFFLINE, phone.n)
                    t += timedelta(days=rng.uniform(*f.offline_days))
                    self.at(t, ONLINE, phone.n)
                    t += timedelta(days=rng.uniform(*f.online_days))
            if rng.random() < f.move:
                self.at(start + timedelta(seconds=rng.uniform(0, span)), MOVE, phone.n)
            elif rng.random() < f.reset:  # disjoint from moves: a reset phone cannot prove a move (held for people)
                self.at(start + timedelta(seconds=rng.uniform(0, span)), RESET, phone.n)

    def renewal_time(self, n: int, not_before: datetime, not_after: datetime) -> datetime:
        """When phone ``n``'s certificate is due for renewal at the earliest (the planner's base time)."""
        return base_time(RenewalInput.from_policy(n, mac_of(n), not_before, not_after, self.policy))

    def due_now(self, since: datetime) -> None:
        """Every phone needs a successor from ``since`` on (a CA rotation)."""
        for phone in self.phones:
            phone.due_from = min(phone.due_from, since)

    def served_at(self, ip: str) -> str | None:
        """What a TLS probe of ``ip`` sees: the SHA-256 the phone there serves (None: nothing answers)."""
        phone = self.by_ip.get(ip)
        return phone.serving if phone is not None and phone.online else None

    def answer(self, phone: Phone, reply: DLSMessage) -> WorkpointMessage:
        """The phone's answer to certmgr's ``WriteItems`` / ``ReadItems`` (an OpenStage in Default Mode)."""
        nonce = self.hub.nonce()
        if reply.action is Action.WRITE_ITEMS:
            item = reply.item(ITEM_WBM_CERTIFICATE)
            if item is None or item.value is None:
                status = ReplyStatus.FAILED
            else:
                _key, cert, _chain = open_pkcs12(base64.b64decode(item.value), None)
                if phone.busy and phone.busy_serial != cert.serial_number:
                    phone.busy_serial = cert.serial_number
                    self.night_now().busy += 1
                    callback = self.rng.uniform(*self.faults.busy_callback_minutes)
                    self.at(self.clock.now() + timedelta(minutes=callback), CALLBACK, phone.n)
                    return WorkpointMessage(
                        nonce, Reason.REPLY_TO, (), fragment=Fragment.FINAL, reply_action=Action.WRITE_ITEMS,
                        reply_status=ReplyStatus.BUSY,
                    )  # fmt: skip
                self.install(phone, cert)
                status = ReplyStatus.ACCEPTED
            return WorkpointMessage(
                nonce, Reason.REPLY_TO, (), fragment=Fragment.FINAL, reply_action=Action.WRITE_ITEMS,
                reply_status=status,
            )  # fmt: skip
        if reply.action is Action.READ_ITEMS:
            return WorkpointMessage(
                nonce, Reason.REPLY_TO, (Item(ITEM_WBM_CERTIFICATE_INFO, phone.info),), fragment=Fragment.FINAL,
                reply_action=Action.READ_ITEMS, reply_status=ReplyStatus.ACCEPTED,
            )  # fmt: skip
        raise RuntimeError(f"model phone got {reply.action}")

    def install(self, phone: Phone, cert: x509.Certificate) -> None:
        phone.serving = cert.fingerprint(hashes.SHA256()).hex()
        phone.info = format_certificate_info(
            serial=cert.serial_number,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sha1=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - the phone's info shows it
            sha256=phone.serving,
        )
        self._installed[phone.n] = (cert.not_valid_before_utc, cert.not_valid_after_utc)

    def verified(self, ip: str) -> None:
        """certmgr verified the certificate the phone at ``ip`` serves: the margin its predecessor had left."""
        phone = self.by_ip[ip]
        now = self.clock.now()
        new_before, new_after = self._installed.pop(phone.n)
        margin = (phone.not_after - now).total_seconds() / 3600
        self.results.margins.add(margin)
        if margin < 7 * 24:
            self.results.tight.append((margin, phone.mac, now))
        phone.not_after = new_after
        phone.due_from = self.renewal_time(phone.n, new_before, new_after)
        phone.issued = False
        if phone.gen == 0:
            self.renewed += 1
        phone.gen += 1
        heapq.heappush(self._expiry, (new_after, phone.n, phone.gen))
        if phone.reset_at is not None:
            self.results.resets_detected_h.append((now - phone.reset_at).total_seconds() / 3600)
            phone.reset_at = None
        self.night_now().delivered += 1
        self.results.deliveries += 1

    # -- events --
    def at(self, when: datetime, kind: int, arg: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, arg))

    def wake_renewal(self, when: datetime) -> None:
        """Run the renewal reconcile at the first job tick (60 s grid) at or after ``when``, unless one is due
        earlier."""
        interval = self.rt.settings.renewal_interval_seconds
        ts = when.timestamp()
        aligned = datetime.fromtimestamp(-(-ts // interval) * interval, UTC)
        if self._next_renewal is None or aligned < self._next_renewal:
            self._next_renewal = aligned
            self.at(aligned, RENEWAL)

    def wake_dispatch(self, when: datetime) -> None:
        if self._next_dispatch is None or when < self._next_dispatch:
            self._next_dispatch = when
            self.at(when, DISPATCH)

    def night_of(self, at: datetime) -> date:
        """A night runs from local noon to local noon; it is named by the date its window opens."""
        return (at.astimezone(self.tz) - timedelta(hours=12)).date()

    def night_now(self) -> Counters:
        return self.results.night(self.night_of(self.clock.now()))

    def window_bounds(self, night: date) -> tuple[datetime, datetime]:
        start, end = WINDOW_HOURS
        opens = datetime(night.year, night.month, night.day, start, tzinfo=self.tz).astimezone(UTC)
        following = night + timedelta(days=1)
        closes = datetime(following.year, following.month, following.day, end, tzinfo=self.tz).astimezone(UTC)
        return opens, closes

    def schedule_nights(self, start: datetime, end: datetime) -> None:
        night = self.night_of(start)
        limit = self.results.limit_per_hour = self.rt.settings.renewal_max_per_hour
        while True:
            opens, closes = self.window_bounds(night)
            if opens > end:
                return
            assert window_open(self.windows, opens)
            assert not window_open(self.windows, closes)
            self.results.night(night).capacity = int(limit * (closes - opens).total_seconds() // 3600)
            self.at(closes, WINDOW_CLOSE)
            night += timedelta(days=1)

    def run(self, start: datetime, end: datetime, *, stop_when: Callable[[], bool] | None = None) -> Results:
        """Run from ``start`` until ``end`` (or until ``stop_when()`` holds at a window's close)."""
        self._stop_when = stop_when
        self.results.started_at = start
        self.clock.set(start)
        self.schedule_nights(start, end)
        self.wake_renewal(start)
        self.wake_dispatch(start)
        self.at(start, SWEEP)
        wall = time.perf_counter()
        handlers: dict[int, Callable[[int], bool]] = {
            RENEWAL: self._renewal,
            DISPATCH: self._dispatch,
            SWEEP: self._sweep,
            OFFLINE: self._offline,
            ONLINE: self._online,
            MOVE: self._move,
            RESET: self._reset,
            CALLBACK: self._callback,
            WINDOW_CLOSE: self._window_close,
        }
        while self._heap and self._heap[0][0] <= end:
            when, _seq, kind, arg = heapq.heappop(self._heap)
            if when > self.clock.now():
                self._expire_until(when)
                self.clock.set(when)
            if handlers[kind](arg):
                break
        self._expire_until(min(end, self.clock.now()) if self._heap and self._heap[0][0] <= end else end)
        self.results.done_at = self.clock.now()
        self.results.renewed = self.renewed
        self.results.wall_s = time.perf_counter() - wall
        if self.census is not None:
            self.census.close()
            self.results.statements = dict(self.census.statements)
            self.results.commits = dict(self.census.commits)
        return self.results

    def _expire_until(self, until: datetime) -> None:
        """Certificates that expire before ``until`` while their phone has no verified successor."""
        while self._expiry and self._expiry[0][0] <= until:
            not_after, n, gen = heapq.heappop(self._expiry)
            phone = self.phones[n]
            if gen != phone.gen:
                continue  # a successor was verified before this one expired
            (self.results.expired if phone.online else self.results.expired_offline).append((phone.mac, not_after))

    # -- handlers (True: stop) --
    def _renewal(self, _arg: int) -> bool:
        now = self.clock.now()
        if self._next_renewal != now:
            return False  # superseded by an earlier wake-up
        self._next_renewal = None
        with self.timed("renewal"):
            report = reconcile_renewals(self.rt, now)
        self.results.renewal_runs += 1
        self._account(report, now)
        if report.issued:
            self.wake_dispatch(now)
        self.wake_renewal(self._next_renewal_time(report, now))
        return False

    def seen(self, mac: str, *, wake: bool = False) -> None:
        """The hub's ``on_device_seen``: the dispatcher's reconciler looks at ``mac`` on its next tick — with
        ``wake`` (a proven move: the phone needs a certificate for its new address) the service's next tick, a
        second from now; otherwise the bench's next tick, whenever the dispatcher has work (module docstring)."""
        self.reconciler.mark(mac)
        if wake:
            self.wake_dispatch(self.clock.now() + timedelta(seconds=self.rt.settings.dispatch_tick_seconds))

    def reconciled(self, mac: str, why: IssueReason) -> None:
        """The reconciler recorded a certificate for ``mac`` (a new address, or none valid left)."""
        self.results.reconciled_reasons[why.value] = self.results.reconciled_reasons.get(why.value, 0) + 1
        self._count_issued([mac], {why.value: 1}, self.clock.now())

    def _count_issued(self, macs: Sequence[str], reasons: Mapping[str, int], now: datetime) -> None:
        """Certificates issued for ``macs``, counted by reason in ``reasons``, by a renewal run or the reconciler: the
        night's and the case's counts, and the model of the hourly budget (every reason but a first enrollment, as
        certmgr counts it)."""
        self.night_now().issued += len(macs)
        for mac in macs:
            self.by_mac[mac].issued = True
        self.results.certificates_issued += len(macs)
        for why, count in reasons.items():
            self.results.reasons[why] = self.results.reasons.get(why, 0) + count
        budgeted = sum(c for why, c in reasons.items() if why != IssueReason.ENROLLMENT.value)
        if budgeted:
            self._budget.append((now, budgeted))

    def _account(self, report: RenewalReport, now: datetime) -> None:
        self._count_issued(report.issued, report.reasons, now)
        night = self.night_now()
        limited = report.issued_within_budget
        night.scheduled += limited + report.issued_over_limit
        self.results.over_limit += report.issued_over_limit
        if limited:
            self._limited.append((now, limited))
            while self._limited[0][0] <= now - timedelta(hours=1):  # the service's window: created_at > now - 1 h
                self._limited.popleft()
            in_hour = sum(n for _t, n in self._limited)
            self.results.max_limited_per_hour = max(self.results.max_limited_per_hour, in_hour)

    def _next_renewal_time(self, report: RenewalReport, now: datetime) -> datetime:
        """When the next renewal run could do something the service's 60-s job would have done (module docstring)."""
        settings = self.rt.settings
        interval = timedelta(seconds=settings.renewal_interval_seconds)
        while self._budget and self._budget[0][0] <= now - timedelta(hours=1):
            self._budget.popleft()
        if report.deferred_by_limit > 0:
            used = sum(n for _t, n in self._budget)
            if used < settings.renewal_max_per_hour:
                return now + interval  # the per-run limit held some back: the next job run takes more
            return self._budget[0][0] + timedelta(hours=1)  # the hourly budget frees then
        return self._next_regular(now)

    def _next_regular(self, now: datetime) -> datetime:
        """The next regular run: ``renewal_every`` after ``now`` at minute :data:`RUN_MINUTE` while a window is open
        (the spread staggers an hour's renewals from the hour's start, so a run late in the hour finds them due), else
        at the next window's opening (what became urgent outside the window: expired, deadline, immediate triggers)."""
        hour = now.replace(minute=0, second=0, microsecond=0)
        regular = hour + timedelta(minutes=RUN_MINUTE)
        while regular <= now:
            regular += self.renewal_every
        if window_open(self.windows, regular):
            return regular
        opens, _closes = self.window_bounds(self.night_of(now))
        if opens <= now:
            opens, _closes = self.window_bounds(self.night_of(now) + timedelta(days=1))
        return min(opens, regular + timedelta(days=1))

    def _dispatch(self, _arg: int) -> bool:
        now = self.clock.now()
        if self._next_dispatch != now:
            return False
        self._next_dispatch = None
        rt = self.rt
        self.results.dispatch_ticks += 1
        with self.timed("reconcile"):
            self.reconciler.run(now)  # the phones the hub saw first, then the next slice of the fleet
        if self.reconciler.marked:  # more marked phones than a call looks at: the service's next tick takes them
            self.wake_dispatch(now + timedelta(seconds=rt.settings.dispatch_tick_seconds))
        with self.timed("dispatch"):
            expire_stale(rt, now, active_deployments=frozenset())
            tasks = claim_due(rt, now, exclude_macs=frozenset())
        night = self.night_now()
        if tasks and not window_open(self.windows, now):
            self.results.contacts_outside_window += len(tasks)
        for task in tasks:
            phone = self.by_mac[task.mac]
            there = self.by_ip.get(task.target.host) is phone and phone.online
            if task.unknown_write is not None and self.served_at(task.phone_ip) == task.unknown_write:
                with self.timed("dispatch"):
                    confirm_written(rt, task.deployment_id, now)
            error = None if there else UNREACHABLE.format(ip=task.target.host)
            night.contacts += 1
            night.contact_failures += error is not None
            with self.timed("dispatch"):
                contact_result(rt, task.deployment_id, now, error=error, dls_ip_addr=None if error else "127.0.0.1")
            if error is None:
                self.hub.call(phone, Reason.SOLICITED)  # the phone calls back at once
        if tasks:
            self.wake_dispatch(now + timedelta(seconds=rt.settings.dispatch_tick_seconds))
        else:
            nxt = self._next_claimable(now)
            if nxt is not None:
                self.wake_dispatch(nxt)
        return False

    def _next_claimable(self, now: datetime) -> datetime | None:
        """The first moment :func:`claim_due` could claim a deployment no tick could claim up to ``now``: the next
        attempt time, the next window opening, or the end of a contact gap (a bench-side query)."""
        gap = timedelta(seconds=self.rt.settings.contact_gap_seconds)
        with session_scope(self.rt.engine) as s, self.timed("bench.next-claimable"):
            queued = DeploymentState.QUEUED.value
            later = s.execute(
                select(func.min(col(Deployment.next_attempt_at))).where(
                    col(Deployment.state) == queued, col(Deployment.next_attempt_at) > now
                )
            ).scalar_one()
            ready = s.execute(
                select(func.max(col(Device.last_contact_me_at)))
                .select_from(Deployment)
                .join(Device, col(Device.id) == col(Deployment.device_id))
                .where(
                    col(Deployment.state) == queued,
                    (col(Deployment.next_attempt_at).is_(None)) | (col(Deployment.next_attempt_at) <= now),
                )
            ).one()
            ready_count = s.execute(
                select(func.count())
                .select_from(Deployment)
                .where(
                    col(Deployment.state) == queued,
                    (col(Deployment.next_attempt_at).is_(None)) | (col(Deployment.next_attempt_at) <= now),
                )
            ).scalar_one()
        candidates: list[datetime] = []
        if later is not None:
            candidates.append(later if later.tzinfo else later.replace(tzinfo=UTC))
        if ready_count:
            if not window_open(self.windows, now):
                opens, _closes = self.window_bounds(self.night_of(now))
                if opens <= now:
                    opens, _closes = self.window_bounds(self.night_of(now) + timedelta(days=1))
                candidates.append(opens)
            else:
                last = ready[0]
                if last is not None:
                    last = last if last.tzinfo else last.replace(tzinfo=UTC)
                    candidates.append(max(now + timedelta(seconds=1), last + gap))
        return min(candidates) if candidates else None

    def _sweep(self, _arg: int) -> bool:
        now = self.clock.now()
        with self.timed("sweep"):
            report = self.sweep.run(now)
        self.results.sweeps += 1
        if report.drift:
            self.wake_renewal(now)  # drift is an immediate trigger
        self.at(now + timedelta(seconds=self.rt.settings.probe_sweep_interval_seconds), SWEEP)
        return False

    def _offline(self, n: int) -> bool:
        self.phones[n].online = False
        return False

    def _online(self, n: int) -> bool:
        phone = self.phones[n]
        phone.online = True
        self.hub.call(phone, Reason.START_UP)
        return False

    def _move(self, n: int) -> bool:
        phone = self.phones[n]
        if not phone.online:
            self.at(self.clock.now() + timedelta(days=1), MOVE, n)
            return False
        self._spare_ip += 1
        del self.by_ip[phone.ip]
        phone.ip = ip_of(self._spare_ip, block=11)
        self.by_ip[phone.ip] = phone
        self.hub.call(phone, Reason.START_UP)  # from the new address: a claim, proven by what the phone serves
        return False

    def _reset(self, n: int) -> bool:
        phone = self.phones[n]
        phone.serving = hashlib.sha256(f"factory-default-{phone.mac}".encode()).hexdigest()
        phone.info = None
        phone.reset_at = self.clock.now()
        if phone.online:
            self.hub.call(phone, Reason.START_UP)
        return False

    def _callback(self, n: int) -> bool:
        phone = self.phones[n]
        if phone.online:
            self.hub.call(phone, Reason.SOLICITED)  # after "busy": the phone calls back when it is free
        return False

    def _window_close(self, _arg: int) -> bool:
        now = self.clock.now()
        night = self.results.night(self.night_of(now - timedelta(hours=1)))
        with session_scope(self.rt.engine) as s, self.timed("bench.window-close"):
            night.queue = s.execute(
                select(func.count())
                .select_from(Deployment)
                .where(col(Deployment.state).in_([x.value for x in UNFINISHED_STATES]))
            ).scalar_one()
        waiting = [p for p in self.phones if p.due_from <= now]
        night.waiting = len(waiting)
        night.deferred = sum(1 for p in waiting if not p.issued)
        night.renewed = self.renewed
        night.waiting_offline = sum(1 for p in self.phones if p.gen == 0 and not p.online) if self.renewed else 0
        self._nights_seen += 1
        if self._nights_seen % self.rss_every == 0:
            self.results.memory.append(memory_sample(self._nights_seen, self.malloc_trim))
        if not self.quiet:
            self.out(self.night_line(self.night_of(now - timedelta(hours=1)), night))
        return self._stop_when is not None and self._stop_when()

    def night_line(self, key: date, n: Counters) -> str:
        return (
            f"  night {key.isoformat()}  due {n.delivered + n.waiting:>6}  delivered {n.delivered:>6}  "
            f"deferred {n.deferred:>6}  queue {n.queue:>5}  (issued {n.issued}/{n.capacity}, contacts {n.contacts}, "
            f"unreachable {n.contact_failures}, busy {n.busy}, waiting {n.waiting})"
        )


# --- seeding (multi-row inserts, no ORM) ---------------------------------------------------------------------------
def active_issuer(rt: Runtime) -> str:
    with session_scope(rt.engine) as s:
        return str(
            s.execute(
                select(col(CARecord.fingerprint_sha256)).where(
                    col(CARecord.active).is_(True), col(CARecord.role) == CARole.ISSUING.value
                )
            ).scalar_one()
        )


def seed(rt: Runtime, births: list[datetime]) -> list[tuple[int, str, str, datetime, datetime]]:
    """Phones ``0..len(births)-1``, approved and verified, each with a current certificate issued at ``births[n]``
    (rows as certmgr stores them; the PEM and sealed key are placeholders: a seeded certificate is never delivered
    again, only planned, compared and superseded). Returns the model phones' specs
    ``(n, ip, serving, not_before, not_after)``."""
    policy = rt.policies.get("default")
    issuer = active_issuer(rt)
    validity = policy.validity
    specs: list[tuple[int, str, str, datetime, datetime]] = []
    for lo in range(0, len(births), SEED_CHUNK):
        hi = min(len(births), lo + SEED_CHUNK)
        devices, certs = [], []
        for n in range(lo, hi):
            ip = ip_of(n + 1)
            born = births[n]
            fingerprint = seeded_fingerprint(n)
            devices.append(
                {"mac": mac_of(n), "ip": ip, "contact_me_uri": uri_of(ip), "dns_names": [], "policy_name": "default",
                 "device_type": DEVICE_TYPE, "software_version": SOFTWARE, "enrollment": Enrollment.APPROVED,
                 "status": "verified", "drift": False, "last_seen_at": born, "last_verified_at": born,
                 "created_at": born, "updated_at": born}
            )  # fmt: skip
            certs.append(
                {"device_id": n + 1, "serial": seeded_serial(n), "subject": f"CN={ip},O=certmgr", "sans": [f"IP:{ip}"],
                 "key_type": policy.key_type, "not_before": born, "not_after": born + validity,
                 "fingerprint_sha256": fingerprint, "cert_pem": "-", "key_blob": b"-", "issuer_fingerprint": issuer,
                 "policy_name": policy.name, "policy_digest": policy.digest, "status": "active",
                 "reason": IssueReason.ENROLLMENT, "created_at": born}
            )  # fmt: skip
            specs.append((n, ip, fingerprint, born, born + validity))
        with session_scope(rt.engine) as s:
            s.execute(insert(Device), devices)
            s.execute(insert(Certificate), certs)
            s.execute(
                text("UPDATE device SET current_certificate_id = id WHERE id > :lo AND id <= :hi"), {"lo": lo, "hi": hi}
            )
    with rt.engine.connect() as conn:  # fresh statistics, as autovacuum / ANALYZE keep them in production
        conn.execute(text("ANALYZE"))
        conn.commit()
    return specs


# --- what the database says ------------------------------------------------------------------------------------------
def database_expiries(rt: Runtime, end: datetime) -> tuple[int, int]:
    """From certmgr's own records: successors verified after their predecessor had expired, and current
    certificates expired at ``end``."""
    with session_scope(rt.engine) as s:
        late = s.execute(
            text(
                "SELECT count(*) FROM deployment dep JOIN certificate c ON c.id = dep.certificate_id "
                "JOIN certificate p ON p.id = c.previous_certificate_id "
                "WHERE dep.verified_at IS NOT NULL AND dep.verified_at > p.not_after"
            )
        ).scalar_one()
        current = s.execute(
            select(func.count())
            .select_from(Device)
            .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
            .where(col(Certificate.not_after) <= end)
        ).scalar_one()
    return int(late), int(current)


# --- the floor -------------------------------------------------------------------------------------------------------
def _sql(rt: Runtime, statement: str) -> str:
    """``:name`` parameters in the driver's own style."""
    if is_postgres(rt.engine):
        import re

        return re.sub(r":([a-z_]+)", r"%(\1)s", statement)
    return statement


def floor_scan(rt: Runtime) -> float:
    """One floor scan of a renewal run (:data:`bench.common.FLOOR_SCAN_SQL`: the database visits every row the first
    pass runs over, once). Returns seconds."""
    t0 = time.perf_counter()
    common_floor_scan(rt.engine)
    return time.perf_counter() - t0


def _returned_id(row: Any) -> int:
    if row is None:
        raise RuntimeError("INSERT ... RETURNING returned no row")
    return int(row[0])


def floor_rows(rt: Runtime, count: int, now: datetime) -> float:
    """``count`` renewals as bare rows through the DBAPI cursor, one transaction each: insert the certificate and
    its deployment, mark the deployment verified, the old certificate superseded and the new one active, point the
    device at it. Returns seconds."""
    ins_cert = _sql(
        rt,
        "INSERT INTO certificate (device_id, serial, subject, sans, key_type, not_before, not_after, "
        "fingerprint_sha256, cert_pem, key_blob, issuer_fingerprint, policy_name, policy_digest, status, reason, "
        "previous_certificate_id, created_at) VALUES (:device_id, :serial, :subject, :sans, :key_type, :nb, :na, :fp, "
        ":pem, :blob, :issuer, 'default', 'x', 'pending', 'renewal', :prev, :now)",
    )
    ins_dep = _sql(
        rt,
        "INSERT INTO deployment (device_id, certificate_id, state, attempts, profile_index, password_item_used, "
        "verify_failures, transcript, version, created_at, updated_at) VALUES (:device_id, :cert_id, 'queued', 0, 0, "
        "false, 0, '[]', 1, :now, :now)",
    )
    upd_dep = _sql(
        rt,
        "UPDATE deployment SET state = 'verified', attempts = 1, written_at = :now, verified_at = :now, "
        "finished_at = :now, updated_at = :now, version = version + 1 WHERE id = :id",
    )
    upd_old = _sql(rt, "UPDATE certificate SET status = 'superseded' WHERE id = :id")
    upd_new = _sql(rt, "UPDATE certificate SET status = 'active' WHERE id = :id")
    upd_dev = _sql(
        rt, "UPDATE device SET current_certificate_id = :cert_id, last_verified_at = :now, updated_at = :now "
        "WHERE id = :device_id"
    )  # fmt: skip
    returning = " RETURNING id"
    pem = "-----BEGIN CERTIFICATE-----\n" + "A" * 640 + "\n-----END CERTIFICATE-----\n"
    blob = os.urandom(180)
    with session_scope(rt.engine) as s:
        devices = s.execute(text("SELECT id, current_certificate_id FROM device ORDER BY id LIMIT :n"), {"n": count})
        pairs = [(int(d), int(c) if c is not None else None) for d, c in devices]
    raw = rt.engine.raw_connection()
    t0 = time.perf_counter()
    try:
        cursor = raw.cursor()
        for k, (device_id, prev) in enumerate(pairs):
            values = {"device_id": device_id, "serial": f"f100{k:012x}", "subject": "CN=floor,O=certmgr",
                      "sans": '["IP:10.0.0.1"]', "key_type": "ec-p256", "nb": now, "na": now + timedelta(days=397),
                      "fp": hashlib.sha256(f"floor{k}".encode()).hexdigest(), "pem": pem, "blob": blob,
                      "issuer": "f" * 64, "prev": prev, "now": now}  # fmt: skip
            cursor.execute(ins_cert + returning, values)
            cert_id = _returned_id(cursor.fetchone())
            cursor.execute(ins_dep + returning, {"device_id": device_id, "cert_id": cert_id, "now": now})
            dep_id = _returned_id(cursor.fetchone())
            cursor.execute(upd_dep, {"id": dep_id, "now": now})
            if prev is not None:
                cursor.execute(upd_old, {"id": prev})
            cursor.execute(upd_new, {"id": cert_id})
            cursor.execute(upd_dev, {"cert_id": cert_id, "now": now, "device_id": device_id})
            raw.commit()
        cursor.close()
    finally:
        raw.close()
    return time.perf_counter() - t0


def floor_issuance(issuer: Issuer, key_type: KeyType, n: int, now: datetime) -> bytes:
    """The cryptography one renewal cannot do without: a key of ``key_type`` (the bench policy's: EC P-256, or
    RSA-2048 with ``--rsa``), a server certificate for phone ``n``'s IP signed by the issuing CA, and the PKCS#12 of
    key, certificate and chain in the policy's profile (``plain``, as the bench's phones take it) — through
    certmgr's own thin builders (:func:`~certmgr.pki.leaf.issue_key_and_leaf`, the one home of what a phone's
    certificate carries, and :func:`~certmgr.pki.pkcs12.build_pkcs12`), without the policy, identity, templates,
    database and audit around them. Returns the PKCS#12 (DER)."""
    ip = ip_of(n + 1)
    spec = LeafSpec(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]),
        dns_names=(),
        ip_addresses=(ipaddress.ip_address(ip),),
        validity=timedelta(days=397),
    )
    key, cert = issue_key_and_leaf(spec, key_type, issuer, now)
    return build_pkcs12(key, cert, issuer.chain, Pkcs12Profile.PLAIN, None, b"WBM")


#: Bare issuances the cryptographic floor times at most (RSA-2048 keys take ~40 ms each).
CRYPTO_SAMPLE = 1000


def floor_crypto(rt: Runtime, count: int, now: datetime) -> float:
    """``count`` bare issuances (:func:`floor_issuance`) with certmgr's issuing CA and the bench policy's key type.
    Returns seconds."""
    issuer = rt.issuer()
    key_type = rt.policies.get("default").key_type
    t0 = time.perf_counter()
    for k in range(count):
        floor_issuance(issuer, key_type, k, now)
    return time.perf_counter() - t0


@dataclass
class Floor:
    scan_s: float  # one bare scan
    rows_s: float  # per renewal
    sample: int
    crypto_s: float = 0.0  # per renewal: key, certificate and PKCS#12 (floor_issuance)

    def total(self, runs: int, renewals: int) -> float:
        return self.storage(runs, renewals) + self.crypto_s * renewals

    def storage(self, runs: int, renewals: int) -> float:
        """The database part alone (the floor before the cryptography was added to it)."""
        return self.scan_s * runs + self.rows_s * renewals


def measure_floor(rt: Runtime, renewals: int, now: datetime, sample: int = 5000) -> Floor:
    scan = min(floor_scan(rt) for _ in range(3))
    n = max(1, min(sample, renewals))
    rows = floor_rows(rt, n, now)
    signed = min(n, CRYPTO_SAMPLE)
    crypto = floor_crypto(rt, signed, now)
    return Floor(scan, rows / n, n, crypto / signed)


# --- the cases -----------------------------------------------------------------------------------------------------
#: The first simulated moment (a Monday, noon UTC); the CA is created 400 days earlier.
START = datetime(2027, 1, 4, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Options:
    phones: int = 100_000
    days: int = 400
    seed: int = 1
    key: str = "ec-p256"
    ca_key: str | None = "ec-p256"
    renewal_every: timedelta = timedelta(minutes=60)
    faults: Faults = field(default_factory=Faults)
    quiet: bool = False
    stress_days: int = 60  # a stress case gives up after this many days
    floor_sample: int = 5000
    rss_every: int = 50  # nights between RSS samples
    malloc_trim: bool = False  # at each RSS sample, also the RSS after malloc_trim (changes what follows)
    statements: bool = False  # count the statements and commits of each timed section (StatementCensus)
    settings: dict[str, Any] = field(default_factory=dict)  # overrides (the tests' shorter sweep)


@dataclass
class CaseRun:
    results: Results
    floor: Floor | None


def _year_births(rng: random.Random, n: int) -> list[datetime]:
    """Certificates issued uniformly over the 367 days before :data:`START` (the steady state: each is renewed 30
    days before its 397-day expiry)."""
    return [START - timedelta(seconds=rng.uniform(0, 367 * 86400)) for _ in range(n)]


def _mass_births(rng: random.Random, n: int, tz: ZoneInfo) -> list[datetime]:
    """Every phone enrolled in one night's window 360 days before :data:`START`."""
    night = (START - timedelta(days=360)).astimezone(tz).date()
    opens = datetime(night.year, night.month, night.day, WINDOW_HOURS[0], tzinfo=tz).astimezone(UTC)
    return [opens + timedelta(seconds=rng.uniform(0, 7 * 3600)) for _ in range(n)]


def run_case(
    name: str, root: Path, url: str | None, opts: Options, out: Callable[[str], None] = print, *, floor: bool = True
) -> CaseRun:
    """Set up a fresh database for case ``name`` (year | mass | rotation), run it, check it, measure the floor."""
    clock = ManualClock(START - timedelta(days=400))
    rt = open_bench_runtime(root / name, url, clock, key=opts.key, ca_key=opts.ca_key, **opts.settings)
    try:
        clock.set(START)
        rng = random.Random(opts.seed)
        tz = ZoneInfo(TIMEZONE)
        births = _mass_births(rng, opts.phones, tz) if name == "mass" else _year_births(rng, opts.phones)
        t0 = time.perf_counter()
        specs = seed(rt, births)
        seed_s = time.perf_counter() - t0
        del births
        sim = Simulation(
            rt, clock, name, faults=opts.faults, seed=opts.seed + 1, renewal_every=opts.renewal_every,
            quiet=opts.quiet, out=out, rss_every=opts.rss_every, malloc_trim=opts.malloc_trim,
            statements=opts.statements,
        )  # fmt: skip
        sim.add_phones(specs)
        del specs
        if name == "year":
            end = START + timedelta(days=opts.days)
            stop = None
        else:
            end = START + timedelta(days=opts.stress_days)
            stop = lambda: sim.renewed == len(sim.phones)  # noqa: E731
        sim.draw_faults(START, end)
        if name == "rotation":
            definition = load_ca_definition(rt.settings.ca_config_dir / "ca.toml")
            initialise_ca(rt, definition, rt.passphrase().get_secret_value().encode(), actor="bench", force=True)
            sim.due_now(START)
        gc.collect()
        results = sim.run(START, end, stop_when=stop)
        results.seed_s = seed_s
        results.db_expired, results.db_current_expired = database_expiries(rt, results.done_at or end)
        measured = measure_floor(rt, results.certificates_issued, clock.now(), opts.floor_sample) if floor else None
        return CaseRun(results, measured)
    finally:
        rt.close()


# --- reporting ---------------------------------------------------------------------------------------------------
def _mib(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def census_lines(r: Results) -> list[str]:
    """The ``--statements`` lines: statements (commits) per timed section, and certmgr's sections (not the bench's
    own queries, not "other") per certificate issued."""
    order = sorted(r.statements, key=lambda k: -r.statements[k])
    parts = ", ".join(f"{k} {r.statements[k]:,} ({r.commits.get(k, 0):,})" for k in order)
    ours = [k for k in order if not k.startswith("bench.") and k != "other"]
    statements = sum(r.statements[k] for k in ours)
    commits = sum(r.commits.get(k, 0) for k in ours)
    per = r.certificates_issued or 1
    return [
        f"  statements (commits) the database ran, per section: {parts}",
        f"  in certmgr's functions {statements:,} statements and {commits:,} commits = {statements / per:.1f} "
        f"statements and {commits / per:.1f} commits per certificate issued ({r.certificates_issued})",
    ]


def summary(run: CaseRun, backend: str) -> list[str]:
    r, fl = run.results, run.floor
    lines = [f"== {r.name} on {backend}: {r.phones} phones, {len(r.nights)} nights (wall {r.wall_s:.1f} s, seeding "
             f"{r.seed_s:.1f} s)"]  # fmt: skip
    nights = sorted(r.nights.items())
    busiest = max(nights, key=lambda kv: kv[1].issued, default=None)
    lines.append(
        f"  renewal runs {r.renewal_runs}, dispatcher ticks {r.dispatch_ticks}, probe sweeps {r.sweeps}; "
        f"certificates issued {r.certificates_issued} {dict(sorted(r.reasons.items()))} ({r.reconciled} by the "
        f"dispatcher's reconciler, the rest by renewal runs); verified {r.deliveries}"
    )
    lines.append(
        f"  expired before a verified successor: {len(r.expired)} (database: {r.db_expired} late successors, "
        f"{r.db_current_expired} current certificates expired); offline past expiry, apart: {len(r.expired_offline)}"
    )
    if r.margins.count:
        m = r.margins
        lines.append(
            f"  margin left on the predecessor when its successor verified: min {m.min_h / 24:.2f} d, "
            f"p1 {m.quantile_h(0.01) / 24:.2f} d, median {m.quantile_h(0.5) / 24:.2f} d"
        )
    if busiest is not None:
        key, n = busiest
        share = n.issued / n.capacity if n.capacity else float("nan")
        lines.append(
            f"  busiest window: night {key.isoformat()} issued {n.issued} of a capacity of {n.capacity} "
            f"({share:.0%}; the hourly limit {r.limit_per_hour}/h over the window); most issuances under the budget in "
            f"one rolling hour {r.max_limited_per_hour} (limit {r.limit_per_hour}; past it by urgency: {r.over_limit});"
            " contact-me outside the window "
            f"{r.contacts_outside_window}"
        )
    if r.name != "year":
        active = [k for k, n in nights if n.scheduled]  # the wave, not the faults' immediate reissues
        complete = next((k for k, n in nights if n.renewed + n.waiting_offline >= r.phones), None)
        everyone = next((k for k, n in nights if n.renewed >= r.phones), None)
        if active:
            first = active[0]
            lines.append(
                f"  nights needed: {((complete or active[-1]) - first).days + 1} for every reachable phone "
                f"(from {first}), {((everyone - first).days + 1) if everyone else 'not'} until the last offline "
                f"phone came back and was renewed"
            )
    lines.append(f"  address claims: {dict(sorted(r.moves.items()))}; factory resets served again after (h): "
                 f"{sorted(round(h, 1) for h in r.resets_detected_h)}")  # fmt: skip
    certmgr_s = sum(v for k, v in r.timers.items() if not k.startswith("bench."))
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.timers.items(), key=lambda kv: -kv[1]))
    lines.append(f"  time in certmgr's functions {certmgr_s:.1f} s of {r.wall_s:.1f} s: {parts}")
    if r.statements:
        lines.extend(census_lines(r))
    lines.append(
        "  memory at nights " + f"{[m.night for m in r.memory]} — RSS (MiB) / after malloc_trim (MiB, with "
        "--malloc-trim) / Python blocks (thousands) / anonymous (MiB) / mapped files (MiB) / the SQLite library's "
        "own / Python's arenas / malloc in use / malloc free but kept (MiB): "
        f"{[m.line() for m in r.memory]}; "
        f"peak RSS {peak_rss_mib():.0f} MiB"
    )
    if fl is not None:
        total = fl.total(r.renewal_runs, r.certificates_issued)
        storage = fl.storage(r.renewal_runs, r.certificates_issued)
        lines.append(
            f"  floor: floor scan {fl.scan_s * 1000:.0f} ms x {r.renewal_runs} runs + (bare rows "
            f"{fl.rows_s * 1000:.2f} ms + bare key, certificate and PKCS#12 {fl.crypto_s * 1000:.2f} ms) x "
            f"{r.certificates_issued} renewals (sampled {fl.sample}) = {total:.1f} s; "
            f"ratio certmgr / floor {certmgr_s / total if total else float('nan'):.1f} "
            f"(to the database part alone, {storage:.1f} s: {certmgr_s / storage if storage else float('nan'):.1f})"
        )
    return lines


#: The fleet the default settings are sized for.
DEFAULT_FLEET = 100_000


def scaled_limits(phones: int) -> dict[str, Any]:
    """The per-fleet limits scaled from their defaults by ``phones`` / :data:`DEFAULT_FLEET` (at least 1)."""
    defaults = Settings.model_fields
    share = phones / DEFAULT_FLEET
    return {
        name: max(1, round(int(defaults[name].default) * share))
        for name in ("renewal_max_per_hour", "renewal_max_per_run", "probe_sweep_batch")
    }


def main() -> int:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phones", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--cases", default="year,mass,rotation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--renewal-every", type=float, default=60.0, help="virtual minutes between renewal runs")
    parser.add_argument("--rsa", action="store_true", help="RSA-2048 phone keys and the repository's RSA CA")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no line per night")
    parser.add_argument("--rss-every", type=int, default=50, help="nights between RSS samples")
    parser.add_argument(
        "--malloc-trim",
        action="store_true",
        help="at each RSS sample also print the RSS after glibc's malloc_trim (what is in use; changes later RSS)",
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile of the first case here")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="count the statements and commits the database ran in each timed section, and per certificate issued",
    )
    parser.add_argument(
        "--scale-limits",
        action="store_true",
        help="scale the per-fleet settings (renewal_max_per_hour, renewal_max_per_run, probe_sweep_batch) by "
        "phones/100,000, so that a smaller fleet meets the same pressure per night as 100,000 phones at the defaults",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("certmgr").setLevel(logging.WARNING)
    logging.getLogger("certmgr.story").setLevel(logging.ERROR)  # the audit story of every claim and move
    opts = Options(
        phones=args.phones,
        days=args.days,
        seed=args.seed,
        key="rsa-2048" if args.rsa else "ec-p256",
        ca_key=None if args.rsa else "ec-p256",
        renewal_every=timedelta(minutes=args.renewal_every),
        faults=Faults.none() if args.no_faults else Faults(),
        quiet=args.quiet,
        rss_every=args.rss_every,
        malloc_trim=args.malloc_trim,
        statements=args.statements,
        settings=scaled_limits(args.phones) if args.scale_limits else {},
    )
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"command: {' '.join(sys.argv)}  ({os.cpu_count()} CPUs, load average {os.getloadavg()})", flush=True)
    if opts.settings:
        print(f"settings scaled to {opts.phones} phones: {opts.settings}", flush=True)
    profiler = cProfile.Profile() if args.profile else None
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="certmgr-fleet-") as tmp:
            server: Any = None
            if backend == "postgresql":
                from tests.pg import PostgresServer

                server = PostgresServer()
                server.start()
            try:
                for k, case in enumerate(cases):
                    url = server.create_database() if server is not None else None
                    print(f"-- {case} on {backend} ({opts.phones} phones)", flush=True)
                    if profiler is not None and k == 0 and backend == backends[0]:
                        profiler.enable()
                    run = run_case(case, Path(tmp), url, opts, lambda line: print(line, flush=True))
                    if profiler is not None and k == 0 and backend == backends[0]:
                        profiler.disable()
                    for line in summary(run, backend):
                        print(line, flush=True)
                    print(f"  load average {os.getloadavg()}", flush=True)
            finally:
                if server is not None:
                    server.stop()
    if profiler is not None and args.profile is not None:
        profiler.dump_stats(str(args.profile))
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
