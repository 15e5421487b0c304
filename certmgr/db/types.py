"""Column types shared by every certmgr table.

* :class:`UTCDateTime` is the one type for timestamps: aware UTC in, aware UTC out, on every backend.
* :class:`StrEnumType` stores a :class:`~enum.StrEnum` as a plain ``VARCHAR(n)`` (no native database enum, no
  CHECK constraint: adding a value needs no migration) and gives enum members back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import DateTime, Dialect, String
from sqlalchemy.types import TypeDecorator

E = TypeVar("E", bound=StrEnum)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts and only returns aware UTC datetimes.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones and stores the UTC wall time as text, so
    values read from SQLite come back naive and get UTC attached here.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC for SQLite, whose driver cannot store an offset).

        Raises:
            ValueError: if ``value`` is naive; certmgr never guesses a time zone.
            TypeError: if ``value`` is not a datetime.
        """
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: use an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(TypeDecorator[E], Generic[E]):
    """A :class:`~enum.StrEnum` stored as ``VARCHAR(length)``.

    Binding accepts members or their string values (so ``col == "active"`` works in queries); results come
    back as members.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum_class: type[E], length: int, **kwargs: Any) -> None:
        longest = max(len(member.value) for member in enum_class)
        if longest > length:
            raise ValueError(f"{enum_class.__name__} has a value of {longest} characters; length {length}")
        super().__init__(length, **kwargs)
        self.enum_class = enum_class
        self.length = length

    @property
    def python_type(self) -> type[E]:
        return self.enum_class

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        """Validate ``value`` against the enum and store its string value.

        Raises:
            ValueError: if ``value`` is not a value of the enum.
        """
        if value is None:
            return None
        return self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        if value is None:
            return None
        return self.enum_class(value)

    def __repr__(self) -> str:
        # Alembic autogenerate renders types with repr(); keep it importable-looking and honest.
        return f"StrEnumType({self.enum_class.__name__}, length={self.length})"
