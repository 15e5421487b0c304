"""Helpers the benches that drive ``certmgr serve`` processes share (bench/deploy.py, bench/multinode.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import func, text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from certmgr.db.engine import session_scope
from certmgr.db.models import Certificate, Deployment, DeploymentState, Enrollment

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int | str = "self", keys: tuple[str, ...] = ("VmRSS",)) -> dict[str, int]:
    """The ``keys`` of ``/proc/PID/status`` (kB figures: VmRSS, VmHWM, RssAnon, RssFile…) that the process has;
    empty once the process is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def closed_window() -> str:
    """A [[windows]] entry that is closed for the next two hours (UTC)."""
    hour = (datetime.now(UTC).hour + 3) % 24
    return f'\n[[windows]]\ndays = "*"\nhours = "{hour:02d}-{(hour + 1) % 24:02d}"\ntimezone = "UTC"\n'


def write_policy(policy_dir: Path, *, closed: bool) -> Path:
    """The shipped default policy into ``policy_dir``, with its maintenance window closed (issuance only) or
    as shipped (always open); returns ``policy_dir``."""
    policy_dir.mkdir(parents=True, exist_ok=True)
    text = (REPO / "policies" / "default.toml").read_text()
    (policy_dir / "default.toml").write_text(text + (closed_window() if closed else ""))
    return policy_dir


def stop_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT end the bench through :class:`SystemExit`, so its ``finally`` blocks and atexit hooks stop
    what it started (a throwaway PostgreSQL, the simulator, a service). Without this, SIGTERM kills the process
    outright and leaves them running, and a bench started in the background by a non-interactive shell ignores
    SIGINT altogether (the shell sets it to ignored for background jobs)."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)


#: The floor of a renewal run's scan: the database visits every approved phone's current certificate once (the
#: join the first pass runs over) and returns one number — no expression, no row leaves the database.
FLOOR_SCAN_SQL = (
    "SELECT count(*) FROM device d JOIN certificate c ON c.id = d.current_certificate_id WHERE d.enrollment = :approved"
)


def floor_scan(engine: Engine) -> int:
    """One floor scan (:data:`FLOOR_SCAN_SQL`); returns the rows visited."""
    with session_scope(engine) as s:
        return int(s.execute(text(FLOOR_SCAN_SQL), {"approved": Enrollment.APPROVED.value}).scalar_one())


def count_certs(engine: Engine) -> int:
    """Certificates in the database."""
    with session_scope(engine) as s:
        return int(s.exec(select(func.count()).select_from(Certificate)).one())


def count_verified(engine: Engine) -> int:
    """Deployments in state ``verified``."""
    with session_scope(engine) as s:
        return int(
            s.exec(
                select(func.count())
                .select_from(Deployment)
                .where(col(Deployment.state) == DeploymentState.VERIFIED.value)
            ).one()
        )


# --- /proc accounting -------------------------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid``, its reaped children and its live descendants; 0 for a
    process that is gone."""
    total = 0.0
    todo, seen = [pid], set()
    for _ in range(10_000):  # bounded walk
        if not todo:
            break
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            # fields[0] is the state (field 3): utime, stime, cutime, cstime are fields 14..17
            total += sum(int(v) for v in fields[11:15]) / CLK_TCK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


# --- certmgr serve ------------------------------------------------------------------------------------------------
def readline_within(stream: IO[bytes], timeout: float) -> bytes:
    """One line of ``stream`` within ``timeout`` seconds (b"" on timeout or end of stream)."""
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


def _drain(stream: IO[bytes]) -> None:
    for _ in iter(stream.readline, b""):
        pass


class ServeProcess:
    """One ``certmgr serve --role ROLE`` process: its settings (``values`` and the PKCS#12 password ``bench``) in
    ``folder/certmgr.toml``, its stderr in ``folder/service.log``, no ``CERTMGR_*`` variable of this process."""

    def __init__(self, folder: Path, values: dict[str, object], password: str, role: str = "wpi") -> None:
        self.folder = folder
        self.values = values
        self.password = password
        self.role = role
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, **override: object) -> Path:
        """Write ``folder/certmgr.toml`` from ``values`` and ``override``; returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        values = {**self.values, **override}
        lines = [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in values.items()]
        lines += ["[pkcs12_passwords]", f"bench = {json.dumps(self.password)}"]
        path = self.folder / "certmgr.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120.0) -> float:
        """Start on the written configuration and wait (bounded) until its WPI listener is up — a scheduler node
        announces none: at once; returns ``time.monotonic()`` then.

        Raises:
            RuntimeError: the process ended or did not announce its listener within ``timeout``.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTMGR_")}
        env.update(CERTMGR_CONFIG=str(self.folder / "certmgr.toml"), PYTHONUNBUFFERED="1")
        log = (self.folder / "service.log").open("ab")
        deadline = time.monotonic() + timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certmgr", "serve", "--role", self.role], env=env, stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        assert self.proc.stdout is not None
        for _ in range(1000):
            if self.role == "scheduler":
                break
            line = readline_within(self.proc.stdout, max(deadline - time.monotonic(), 0.1))
            if not line:
                raise RuntimeError(f"certmgr serve exited or stalled; see {self.folder / 'service.log'}")
            if line.startswith(b"wpi listening on"):
                break
        else:
            raise RuntimeError("certmgr serve did not announce its WPI listener")
        threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True).start()
        return time.monotonic()

    def kill(self) -> None:
        """SIGKILL to the process and its children (its key workers): no shutdown code runs."""
        if self.proc is None:
            return
        children = children_of(self.pid)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
