"""Private-key generation on every core.

RSA key generation dominates issuance (tens of milliseconds per key, see ``docs/benchmarks.md``), and one
Python process uses one core. :class:`KeyPool` generates keys in worker processes and hands them back to the
caller as PKCS#8 DER over the pool's pipe — process memory only, never a file, a log or argv — where they are
loaded again. Workers are started with the ``spawn`` method, so they never inherit the service's threads,
event loop, database connections or CA key. A worker watches its parent and exits as soon as the parent is
gone (even after ``kill -9``): no orphaned worker ever outlives the service.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from cryptography.hazmat.primitives import serialization

from certmgr.pki.keys import PrivateKey, generate_private_key, load_own_key_der
from certmgr.pki.types import KeyType

#: How often a worker checks that its parent is alive (seconds).
PARENT_CHECK_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: a daemon thread that ends the worker once ``parent_pid`` is no longer its parent (the
    parent died and the worker was re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _generate_der(key_type: str) -> bytes:
    key = generate_private_key(KeyType(key_type))
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class KeyPool:
    """Generates keys in ``workers`` processes (default: one per core); with one worker, in this process."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        return self._executor

    def generate(self, key_types: Sequence[KeyType]) -> list[PrivateKey]:
        """One new key per entry of ``key_types``, in order. Blocks until all are generated."""
        if not key_types:
            return []
        if self.workers == 1 or len(key_types) == 1:
            return [generate_private_key(kt) for kt in key_types]
        ders = self._pool().map(_generate_der, [kt.value for kt in key_types])
        return [load_own_key_der(der) for der in ders]  # made a moment ago by our own worker

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
