"""The processes a test session started, read from ``/proc`` (Linux; no psutil). Holds no tests; used by
``tests/conftest.py`` to fail a session that leaves a process behind.

:func:`become_subreaper` makes the calling process the Linux "child subreaper" of its descendants: a process
whose parent dies (a service killed with ``kill -9`` leaves its workers so) is re-parented to the test process
instead of to init, so that :func:`descendants` still finds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

#: ``prctl`` option making this process the subreaper of its orphaned descendants (linux/prctl.h).
_PR_SET_CHILD_SUBREAPER = 36
#: How often :func:`wait_gone` looks again.
POLL_S = 0.1


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (``PR_SET_CHILD_SUBREAPER``); False where Linux refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """PID → parent PID of every live process (zombies, which have exited and only wait to be reaped, left out)."""
    table: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # comm (field 2) may hold spaces and parentheses: the fields after its last ")" are fixed.
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state not in ("Z", "X"):
            table[int(stat.parent.name)] = int(ppid)
    return table


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: it only waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int | None = None) -> list[int]:
    """Live processes below ``pid`` (default: this process), children first."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in sorted(children.get(todo.pop(0), ())):
            if child not in found and child != root:
                found.append(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """The process's command line, as it would be typed (its name in brackets if it has none)."""
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        if raw:
            return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    with contextlib.suppress(OSError):
        return "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
    return "[gone]"


def interpreter_helpers() -> set[int]:
    """Helper processes the interpreter keeps until it exits (multiprocessing's resource tracker and fork server,
    started by the first ``spawn`` / ``forkserver`` pool): they are not left behind by a test."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    pids = {
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
    }
    return {pid for pid in pids if pid is not None}


def left_behind(wait_s: float) -> list[int]:
    """This process's descendants (bar :func:`interpreter_helpers`) still alive after waiting up to ``wait_s``
    seconds for them to exit (looked at every :data:`POLL_S`; returns as soon as none is left)."""
    deadline = time.monotonic() + wait_s
    while True:
        helpers = interpreter_helpers()
        alive = [pid for pid in descendants() if pid not in helpers]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_S)


def kill(pids: list[int]) -> None:
    """SIGKILL ``pids`` (each a descendant found just before); those gone meanwhile are skipped."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
