"""Long ``IN`` lists, read a part at a time: one home for how many values one statement binds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

#: Values bound per ``IN`` list: far below every driver's parameter limit (SQLite 32,766, PostgreSQL 65,535) however
#: long the caller's list, and one statement shape per part size for the statement caches.
IN_PART = 500


def in_parts(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in consecutive parts of at most :data:`IN_PART`, in order (none for an empty sequence)."""
    size = IN_PART
    for start in range(0, len(values), size):
        yield values[start : start + size]


__all__ = ["IN_PART", "in_parts"]
