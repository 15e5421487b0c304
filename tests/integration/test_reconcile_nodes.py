"""Two nodes' reconcilers on one PostgreSQL do not both build a phone's certificate.

Building a certificate (its key above all) runs outside any transaction, so the device row lock that makes
:func:`~certmgr.deploy.queue.issue_and_queue` record one certificate per phone comes too late to save the work:
without a claim, node B's reconciler picks the very phones node A is generating keys for, builds them too, and
one of the two sets is thrown away (measured by ``bench/multinode.py``: half the keys of two WPI nodes wasted).
Here node B's whole run happens while node A is inside its key generation: B must skip A's phones, build no key,
and every key built must become a recorded certificate.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import col, select

from certmgr.clock import ManualClock, SystemClock
from certmgr.db.engine import session_scope
from certmgr.db.locks import work_claims
from certmgr.db.models import Certificate, Deployment
from certmgr.deploy.reconcile import Reconciler
from certmgr.pki.keys import PrivateKey
from certmgr.pki.types import KeyType
from certmgr.runtime import Runtime
from certmgr.settings import Settings
from tests.integration.renewal_support import open_test_runtime, report
from tests.pg import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

PHONES = 3


class CountingRuntime:
    """Wraps ``runtime.generate_keys``: counts the keys asked for and runs ``during`` inside the first call."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = 0
        self.during: list[threading.Thread] = []
        self._generate = runtime.generate_keys
        runtime.generate_keys = self.generate  # type: ignore[method-assign]

    def generate(self, key_types: Sequence[KeyType]) -> list[PrivateKey]:
        self.keys += len(key_types)
        for thread in self.during:  # the other node's whole run, while this node is "generating keys"
            thread.start()
            thread.join(60)
            assert not thread.is_alive(), "the other node's run did not finish"
        self.during = []
        return self._generate(key_types)


def test_second_node_skips_the_phones_the_first_is_building(
    settings: Settings, tmp_path: Path, pg_server: PostgresServer
) -> None:
    url = pg_server.create_database()
    clock = ManualClock(SystemClock().now())
    rt_a = open_test_runtime(settings, clock, tmp_path / "a", database_url=url, data_dir=tmp_path / "a" / "var")
    rt_b = open_test_runtime(settings, clock, tmp_path / "b", database_url=url, data_dir=tmp_path / "b" / "var")
    try:
        for n in range(PHONES):
            report(rt_a, n)  # new phones: each needs a certificate
        node_a, node_b = CountingRuntime(rt_a), CountingRuntime(rt_b)
        created_b: list[int] = []
        node_a.during.append(threading.Thread(target=lambda: created_b.append(Reconciler(rt_b).run(clock.now()))))

        created_a = Reconciler(rt_a).run(clock.now())

        assert created_b == [0], "node B built certificates node A was building"
        assert node_b.keys == 0, "node B generated keys for phones node A was building"
        assert (created_a, node_a.keys) == (PHONES, PHONES)
        with session_scope(rt_a.engine) as s:
            assert s.exec(select(func.count()).select_from(Certificate)).one() == PHONES
            assert s.exec(select(func.count()).select_from(Deployment)).one() == PHONES
        # The claims end with the run: node B now finds nothing left to do, and claims are free again.
        assert Reconciler(rt_b).run(clock.now()) == 0
        with session_scope(rt_a.engine) as s:
            ids = s.exec(select(Certificate.device_id).order_by(col(Certificate.id))).all()
        with work_claims(rt_b.engine, "issue") as claim:
            assert all(claim(str(i)) for i in ids)
    finally:
        rt_a.close()
        rt_b.close()


def test_claims_exclude_other_holders_until_released(settings: Settings, pg_server: PostgresServer) -> None:
    """``work_claims``: held for the block by one holder, refused to another, released at the end."""
    from certmgr.db.engine import create_db_engine

    engine = create_db_engine(pg_server.create_database())
    try:
        with work_claims(engine, "issue") as mine:
            assert mine("7")
            assert mine("7")  # held; asking again is fine
            with work_claims(engine, "issue") as theirs:
                assert not theirs("7")
                assert theirs("8")
            with work_claims(engine, "other") as other_scope:
                assert other_scope("7")
        with work_claims(engine, "issue") as theirs:
            assert theirs("7")
    finally:
        engine.dispose()
