"""Default node names (``certmgr serve`` without ``node_id``) on one host, each node with its own data dir.

A node's name marks its leases; a starting node takes back what is leased to its own name (restart recovery). Two
nodes on one host with their own data dirs both took the name ``<hostname>-0`` (the slot is counted per data
dir), so a node starting next to a running one took back the running node's live deployments:
``bench/multinode.py`` without ``node_id`` measured 106 attempts for 60 phones, 25 phones cut off mid-interaction,
and every claim attributed to one node.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import col, select

from certmgr.clock import ManualClock, SystemClock
from certmgr.db.engine import session_scope
from certmgr.db.locks import node_name
from certmgr.db.models import Deployment, DeploymentState
from certmgr.deploy.queue import claim_due
from certmgr.deploy.reconcile import Reconciler
from certmgr.deploy.recovery import recover
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings
from tests.integration.renewal_support import report, write_policy


def _node(settings: Settings, data_dir: Path, db_url: str, clock: ManualClock, policies: Path) -> Runtime:
    custom = settings.model_copy(
        update={"data_dir": data_dir, "database_url": db_url, "policy_dir": policies, "node_id": None}
    )
    return open_runtime(custom, clock, create_ca=True, node=True)


def test_nodes_with_their_own_data_dirs_have_different_stable_names(
    settings: Settings, tmp_path: Path, db_url: str
) -> None:
    clock = ManualClock(SystemClock().now())
    policies = write_policy(tmp_path / "policies")
    a = _node(settings, tmp_path / "a", db_url, clock, policies)
    b = _node(settings, tmp_path / "b", db_url, clock, policies)
    a2 = _node(settings, tmp_path / "a", db_url, clock, policies)  # a second process on a's data dir
    try:
        names = {node_name(rt.settings) for rt in (a, b, a2)}
        assert len(names) == 3, names
        first = node_name(a.settings)
    finally:
        for rt in (a, b, a2):
            rt.close()
    again = _node(settings, tmp_path / "a", db_url, clock, policies)  # a's restart: its name back
    try:
        assert node_name(again.settings) == first
    finally:
        again.close()


def test_a_starting_node_leaves_the_other_nodes_leases_alone(settings: Settings, tmp_path: Path, db_url: str) -> None:
    clock = ManualClock(SystemClock().now())
    policies = write_policy(tmp_path / "policies")
    running = _node(settings, tmp_path / "a", db_url, clock, policies)
    starting = _node(settings, tmp_path / "b", db_url, clock, policies)
    try:
        report(running, 0, "127.0.0.2")
        assert Reconciler(running).run(clock.now()) == 1
        assert len(claim_due(running, clock.now())) == 1  # contacting, leased to the running node
        clock.advance(timedelta(seconds=1))

        assert recover(starting, clock.now()) == 0, "the starting node took back a live node's deployment"

        with session_scope(running.engine) as s:
            dep = s.exec(select(Deployment).order_by(col(Deployment.id))).one()
        assert dep.state is DeploymentState.CONTACTING
        assert dep.lease_owner == node_name(running.settings)
    finally:
        running.close()
        starting.close()
