"""Logging of a certmgr process: one place that sets levels, the format and what the libraries may say.

* ``log_level`` (``CERTMGR_LOG_LEVEL``) is certmgr's own level; at ``INFO`` the log tells each phone's story
  (:mod:`certmgr.audit.story`) and an idle service is quiet.
* ``log_format`` (``CERTMGR_LOG_FORMAT``): ``text`` (one human line per record) or ``json`` (one JSON object per
  line for log shippers: ``ts``, ``level``, ``logger``, ``message`` and the record's ``extra`` fields such as
  ``mac``, ``ca``, ``action``, ``deployment``, ``serial``).
* APScheduler's per-job lines ("Running job …", "executed successfully") and uvicorn's access lines are kept to
  ``WARNING`` (unless the level is ``DEBUG``): they repeat every few seconds and tell nothing an operator needs.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
#: Libraries whose routine chatter stays below WARNING whatever certmgr's own level is.
QUIET_LOGGERS = ("apscheduler", "uvicorn", "uvicorn.access", "uvicorn.error", "httpx", "httpcore", "asyncio", "alembic")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (UTC timestamp to the millisecond)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Route every record to standard error in ``log_format`` at ``level`` (replacing earlier handlers).

    Raises:
        ValueError: for an unknown level or format.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r}: use text or json")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    numeric = logging.getLevelName(level)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    for name in QUIET_LOGGERS:  # at DEBUG everything speaks; otherwise the libraries only warn
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else max(logging.WARNING, numeric))


__all__ = ["QUIET_LOGGERS", "JsonFormatter", "configure_logging"]
