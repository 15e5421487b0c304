"""Locks by key for the phone edge: the messages of one (peer, phone) are handled one at a time.

The table holds the requests in flight, not every key ever seen: an entry lives while someone holds or awaits its
lock (it once kept up to 10,000 idle locks, 1.4 KiB of the service's memory per phone between 1,000 and 10,000
phones: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class KeyLocks:
    """``async with locks.hold(key):`` serialises the holders of ``key``; ``len(locks)`` counts keys in use."""

    _entries: dict[str, _Entry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the block (waiting for earlier holders); the entry goes with its last user."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(key) is entry:
                del self._entries[key]


__all__ = ["KeyLocks"]
