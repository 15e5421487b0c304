"""Whether the database answers, as this process last saw it — told once when it goes away and once when it is back.

:func:`certmgr.db.engine.session_scope` reports every transaction's outcome here: a connection that cannot be
opened, or a transaction that fails because the database is locked past its busy timeout or the server went away
(``OperationalError`` / ``InterfaceError`` / an invalidated connection), marks the database *unavailable*; the next
transaction that commits marks it *available* again — one that wrote, after a lock (reads keep working under
another writer's lock, so a read proves nothing then). Each change is logged once (WARNING, then INFO with how long it
lasted), so an outage is two lines in the log however many requests and ticks hit it. Callers ask
:meth:`DatabaseHealth.available` to answer phones with 503 + Retry-After and ``/readyz`` with 503 meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from sqlalchemy.engine import Engine

from certmgr.errors import CertmgrError, DatabaseError

log = logging.getLogger("certmgr.db")


class DatabaseHealth:
    """The availability of one engine's database (thread-safe)."""

    def __init__(self, shown_url: str) -> None:
        self._url = shown_url
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._reason: str | None = None
        self._locked = False

    @property
    def available(self) -> bool:
        """False from a failure until the next successful transaction."""
        return self._down_since is None

    @property
    def reason(self) -> str | None:
        """What the last failure said (one line), while unavailable."""
        return self._reason

    def failed(self, summary: str) -> None:
        """A transaction could not reach the database (or its lock); logged once per outage."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since, self._reason = time.monotonic(), summary
            self._locked = "locked" in summary.lower()
        log.warning("database %s unavailable: %s", self._url, summary)

    def succeeded(self, wrote: bool) -> None:
        """A transaction committed (``wrote``: it changed something); logged once after an outage."""
        if self._down_since is None:
            return
        with self._lock:
            if self._down_since is None or (self._locked and not wrote):
                return
            lasted = time.monotonic() - self._down_since
            self._down_since = self._reason = None
        log.info("database %s is back (unavailable for %.1f s)", self._url, lasted)


_HEALTH: weakref.WeakKeyDictionary[Engine, DatabaseHealth] = weakref.WeakKeyDictionary()
_HEALTH_LOCK = threading.Lock()


def health_of(engine: Engine) -> DatabaseHealth:
    """The :class:`DatabaseHealth` of ``engine`` (one per engine)."""
    with _HEALTH_LOCK:
        health = _HEALTH.get(engine)
        if health is None:
            health = _HEALTH[engine] = DatabaseHealth(engine.url.render_as_string(hide_password=True))
        return health


def log_failure(logger: logging.Logger, what: str, exc: CertmgrError) -> None:
    """Log a failed step at ERROR — or at DEBUG when the database is unavailable, which :class:`DatabaseHealth`
    already told once (an outage must not print a line per request and per tick)."""
    logger.log(logging.DEBUG if isinstance(exc, DatabaseError) else logging.ERROR, "%s: %s", what, exc.message)


__all__ = ["DatabaseHealth", "health_of", "log_failure"]
