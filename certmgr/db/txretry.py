"""Run a deployment transaction in a worker thread, retrying when a concurrent change beat it.

``Deployment.version`` is an optimistic lock (:mod:`certmgr.db.models`): when two transactions change one
deployment at the same moment — typically the dispatcher recording its contact-me while the phone, answering
that very contact-me, is already calling back — the later one fails with ``StaleDataError`` and is rolled back
entirely. Each deployment-changing function of :mod:`certmgr.deploy` re-reads the rows it changes and re-checks
the state, so running it again on the fresh data is safe; :func:`run_db` does that a bounded number of times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError

from certmgr.db.engine import is_conflict

P = ParamSpec("P")
T = TypeVar("T")

#: Attempts in all (the first run included).
ATTEMPTS = 4


async def run_db(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``await asyncio.to_thread(fn, *args, **kwargs)``, retried when it lost a race (bounded): a
    ``StaleDataError`` (optimistic lock) or a PostgreSQL deadlock / serialization failure.

    Raises:
        StaleDataError / OperationalError: if every attempt lost the race (not expected: each attempt re-reads).
        Whatever ``fn`` raises otherwise.
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (StaleDataError, OperationalError) as exc:
            if attempt == ATTEMPTS or not (isinstance(exc, StaleDataError) or is_conflict(exc)):
                raise
            await asyncio.sleep(0.005 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover
