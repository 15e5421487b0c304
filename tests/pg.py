"""A throwaway PostgreSQL server for tests.

:class:`PostgresServer` initdb's a cluster in a temporary directory, starts it on a free port of 127.0.0.1
(unix socket inside the temp dir, durability switched off for speed), hands out fresh databases and removes
everything on :meth:`PostgresServer.stop` — also at interpreter exit if a test run dies half-way.

When running as root, initdb and the server run as the ``postgres`` OS user (``runuser``), because PostgreSQL
refuses to run as root. If no binaries are found and we are root, ``apt-get install -y postgresql`` runs once.

Set ``CERTMGR_TEST_POSTGRES_URL`` (a superuser URL, e.g. ``postgresql://postgres@db:5432/postgres``) to use an
existing server instead; databases are then still created and dropped per test.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from sqlalchemy import URL, make_url

from certmgr.simulator.ports import free_port

PG_USER = "postgres"
START_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 120
APT_TIMEOUT_S = 900
EXTERNAL_URL_ENV = "CERTMGR_TEST_POSTGRES_URL"

_install_lock = threading.Lock()
_install_attempted = False


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL server binaries can be found or installed."""


def _is_root() -> bool:
    return os.geteuid() == 0


def _bin_dir_of(pg_ctl: str) -> Path | None:
    directory = Path(pg_ctl).resolve().parent
    if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
        return directory
    return None


def _search_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        directory = _bin_dir_of(found)
        if directory is not None:
            return directory

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version, reverse=True):
        directory = _bin_dir_of(candidate)
        if directory is not None:
            return directory
    return None


def find_pg_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then ``/usr/lib/postgresql/*/bin``.

    As root and with nothing found, installs the ``postgresql`` package once with apt-get.

    Raises:
        PostgresUnavailableError: if the binaries cannot be found (or installed).
    """
    global _install_attempted
    directory = _search_bin_dir()
    if directory is not None:
        return directory
    if not _is_root() or shutil.which("apt-get") is None:
        raise PostgresUnavailableError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
            f"install PostgreSQL, set {EXTERNAL_URL_ENV}, or deselect with -m 'not postgres'"
        )
    with _install_lock:
        if not _install_attempted:
            _install_attempted = True
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            result = subprocess.run(
                ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
                capture_output=True,
                text=True,
                timeout=APT_TIMEOUT_S,
                env=env,
                check=False,
            )
            if result.returncode != 0:
                tail = " ".join(result.stderr.strip().splitlines()[-3:])
                raise PostgresUnavailableError(f"apt-get install postgresql failed: {tail}")
    directory = _search_bin_dir()
    if directory is None:
        raise PostgresUnavailableError("postgresql was installed but initdb/pg_ctl are still not found")
    return directory


class PostgresServer:
    """A PostgreSQL cluster living in a temporary directory (or an external server, see module docs).

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, external_url: str | None = None) -> None:
        self._external = make_url(external_url) if external_url else None
        self._tmp: Path | None = None
        self._bin: Path | None = None
        self.port: int | None = None
        self._atexit_registered = False

    # --- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._external is not None or self.port is not None

    def start(self) -> None:
        """initdb and start the server (no-op for an external server).

        Raises:
            PostgresUnavailableError: if the binaries are missing or the server does not come up.
        """
        if self.running:
            return
        if self._external is not None:
            return
        self._bin = find_pg_bin_dir()
        self._tmp = Path(tempfile.mkdtemp(prefix="certmgr-pg-"))
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            if _is_root():
                entry = pwd.getpwnam(PG_USER)
                os.chown(self._tmp, entry.pw_uid, entry.pw_gid)
            self._initdb()
            last_error = ""
            for _attempt in range(3):  # a free port can be taken between probing and binding
                port = free_port()
                ok, last_error = self._pg_ctl_start(port)
                if ok:
                    self.port = port
                    return
            raise PostgresUnavailableError(f"PostgreSQL did not start: {last_error}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server immediately and delete its directory. Safe to call more than once."""
        tmp, self._tmp = self._tmp, None
        port, self.port = self.port, None
        if tmp is None:
            return
        data = tmp / "data"
        if port is not None and self._bin is not None:
            try:
                self._run(
                    [str(self._bin / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "20"],
                    timeout=30,
                )
            except (subprocess.SubprocessError, OSError):
                self._kill_postmaster(data)
        shutil.rmtree(tmp, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected) but keep its data and port, for :meth:`resume`
        — a database going away under a running service.

        Raises:
            RuntimeError: for an external server or one not running. subprocess.CalledProcessError: if pg_ctl fails.
        """
        if self._external is not None or self._tmp is None or self.port is None or self._bin is None:
            raise RuntimeError("only a running throwaway server can be paused")
        self._run([str(self._bin / "pg_ctl"), "stop", "-D", str(self._tmp / "data"), "-m", "fast", "-w"], timeout=60)

    def resume(self) -> None:
        """Start a paused server again on the same port.

        Raises:
            PostgresUnavailableError: if it does not come back.
        """
        assert self._tmp is not None
        assert self.port is not None
        ok, error = self._pg_ctl_start(self.port)
        if not ok:
            raise PostgresUnavailableError(f"PostgreSQL did not come back: {error}")

    # --- databases -----------------------------------------------------------------------------------------
    @property
    def admin_url(self) -> URL:
        """SQLAlchemy URL of the ``postgres`` maintenance database (superuser)."""
        if self._external is not None:
            return self._external.set(drivername="postgresql+psycopg")
        if self.port is None:
            raise RuntimeError("PostgreSQL server is not running")
        return URL.create("postgresql+psycopg", username=PG_USER, host="127.0.0.1", port=self.port, database="postgres")

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL string (password included) of ``database`` on this server."""
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def _admin_connect(self) -> psycopg.Connection[tuple[object, ...]]:
        url = self.admin_url
        return psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create a database (random name by default, optionally copied from ``template``); return its URL.

        Raises:
            psycopg.Error: if the server rejects the statement.
        """
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        with self._admin_connect() as conn:
            conn.execute(statement)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting any remaining sessions.

        Raises:
            psycopg.Error: if the server rejects the statement.
        """
        with self._admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # --- internals -----------------------------------------------------------------------------------------
    def _run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        if _is_root():
            argv = ["runuser", "-u", PG_USER, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True)

    def _initdb(self) -> None:
        assert self._tmp is not None
        assert self._bin is not None
        try:
            self._run(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self._tmp / "data"),
                    "-U",
                    PG_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                timeout=COMMAND_TIMEOUT_S,
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailableError(f"initdb failed: {exc.stderr.strip()[-500:]}") from exc

    def _pg_ctl_start(self, port: int) -> tuple[bool, str]:
        assert self._tmp is not None
        assert self._bin is not None
        sock_dir = self._tmp / "sock"
        sock_dir.mkdir(exist_ok=True)
        if _is_root():
            entry = pwd.getpwnam(PG_USER)
            os.chown(sock_dir, entry.pw_uid, entry.pw_gid)
        options = " ".join(
            [
                f"-c port={port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={sock_dir}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c synchronous_commit=off",
                "-c max_connections=200",
            ]
        )
        log = self._tmp / "server.log"
        try:
            self._run(
                [
                    str(self._bin / "pg_ctl"),
                    "start",
                    "-D",
                    str(self._tmp / "data"),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "-o",
                    options,
                ],
                timeout=START_TIMEOUT_S + 15,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            self._kill_postmaster(self._tmp / "data")
            detail = ""
            with contextlib.suppress(OSError):
                detail = " ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            return False, detail or str(exc)
        return True, ""

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        """SIGKILL the postmaster this object started (pid from its own postmaster.pid), if any."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


def server_from_environment() -> PostgresServer:
    """A started :class:`PostgresServer`: external if ``CERTMGR_TEST_POSTGRES_URL`` is set, else throwaway.

    Raises:
        PostgresUnavailableError: if no server can be started.
    """
    server = PostgresServer(os.environ.get(EXTERNAL_URL_ENV) or None)
    server.start()
    return server


__all__ = ["PostgresServer", "PostgresUnavailableError", "find_pg_bin_dir", "server_from_environment"]
