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
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

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
    """Generates keys in ``workers`` processes (default: one per core); with one worker, in this process.

    With ``read_ahead`` (keys per key type), every batch call also asks the workers for as many keys of the same types
    as it took, up to ``read_ahead`` waiting per type: the next call finds them made while the caller was busy
    signing and recording the previous batch. Issuance on the reconciler's thread and key generation in the
    workers then overlap instead of taking turns. A key is handed out once: it leaves the stock as it is taken.
    The stock lives in this process's memory only (the futures' results) and is dropped on :meth:`close`.
    """

    def __init__(self, workers: int | None = None, *, read_ahead: int = 0) -> None:
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.read_ahead = max(0, read_ahead) if self.workers > 1 else 0
        self._executor: ProcessPoolExecutor | None = None
        self._stock: dict[KeyType, deque[Future[bytes]]] = {}
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        return self._executor

    def stocked(self, key_type: KeyType) -> int:
        """Keys of ``key_type`` made or being made ahead of demand."""
        with self._lock:
            return len(self._stock.get(key_type, ()))

    def generate(self, key_types: Sequence[KeyType]) -> list[PrivateKey]:
        """One new key per entry of ``key_types``, in order. Blocks until all are generated.

        Raises:
            concurrent.futures.process.BrokenProcessPool: if a worker process died.
        """
        if not key_types:
            return []
        if self.workers == 1:
            return [generate_private_key(kt) for kt in key_types]
        if len(key_types) == 1:  # one key (an operator's renew, the CLI): from the stock, else made right here
            with self._lock:
                stock = self._stock.get(key_types[0])
                ready = stock.popleft() if stock else None
            return [load_own_key_der(ready.result()) if ready else generate_private_key(key_types[0])]
        with self._lock:
            pool = self._pool()
            futures: list[Future[bytes]] = []
            for kt in key_types:
                stock = self._stock.get(kt)
                futures.append(stock.popleft() if stock else pool.submit(_generate_der, kt.value))
            # A batch (the reconciler's) foretells the next: read ahead. Submitted after this call's own keys,
            # so the workers make those first.
            for kt in key_types:
                stock = self._stock.setdefault(kt, deque())
                if len(stock) < self.read_ahead:
                    stock.append(pool.submit(_generate_der, kt.value))
        return [load_own_key_der(f.result()) for f in futures]  # made by our own worker

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        with self._lock:
            self._stock.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
