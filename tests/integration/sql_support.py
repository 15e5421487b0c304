"""Counting the statements a piece of certmgr runs (SQLAlchemy's engine events), for tests that pin how many."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event


@contextmanager
def statements(engine: Any) -> Iterator[list[str]]:
    """The SQL of every statement ``engine`` runs inside the block, in order."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def updates_of(seen: list[str], table: str) -> int:
    """How many of ``seen`` are an UPDATE of ``table``."""
    return sum(1 for s in seen if s.lstrip().upper().startswith(f"UPDATE {table.upper()} "))
