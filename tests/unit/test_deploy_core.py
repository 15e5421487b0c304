"""The pure core of the deployment pipeline: backoff, state machine, profile choice, verdict."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certmgr.db.deployments import TRANSITIONS, can_transition, check_transition
from certmgr.db.models import CheckInfo, CheckProbe, CheckReply
from certmgr.db.models import DeploymentState as S
from certmgr.deploy.backoff import JITTER, backoff_delay, next_attempt_at
from certmgr.deploy.profiles import choose_profile, profile_order
from certmgr.deploy.verdict import Verdict, combine
from certmgr.errors import ConflictError, InputError
from certmgr.pki.types import Pkcs12Profile as P

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- backoff ---
def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays = [backoff_delay(n, 10, 100, "k").total_seconds() for n in range(1, 8)]
    assert 10 * (1 - JITTER) <= delays[0] <= 10
    assert 20 * (1 - JITTER) <= delays[1] <= 20
    assert all(d <= 100 for d in delays)
    assert delays[-1] >= 100 * (1 - JITTER)


def test_backoff_is_deterministic_per_key_and_spread_across_keys() -> None:
    assert backoff_delay(3, 10, 1000, "a") == backoff_delay(3, 10, 1000, "a")
    spread = {backoff_delay(3, 10, 1000, f"phone{i}") for i in range(20)}
    assert len(spread) > 10


@given(st.integers(1, 10_000), st.integers(1, 3600), st.integers(0, 86400), st.text(max_size=20))
def test_backoff_bounds(attempts: int, base: int, extra: int, key: str) -> None:
    cap = base + extra
    delay = backoff_delay(attempts, base, cap, key).total_seconds()
    assert base * (1 - JITTER) - 1e-6 <= delay <= cap + 1e-6


def test_next_attempt_at_adds_delay_and_rejects_bad_input() -> None:
    assert next_attempt_at(1, T0, 60, 60, "x") > T0
    assert next_attempt_at(1, T0, 60, 60, "x") <= T0 + timedelta(seconds=60)
    with pytest.raises(InputError):
        backoff_delay(0, 1, 2)
    with pytest.raises(InputError):
        backoff_delay(1, 5, 2)
    with pytest.raises(ValueError, match="naive"):
        next_attempt_at(1, datetime(2026, 1, 1), 1, 2)  # noqa: DTZ001


# --- state machine ---
def test_happy_path_transitions_are_allowed() -> None:
    path = [S.QUEUED, S.CONTACTING, S.AWAITING_CALLBACK, S.WRITTEN, S.VERIFYING, S.VERIFIED]
    for a, b in itertools.pairwise(path):
        assert check_transition(a, b) is b


@pytest.mark.parametrize("final", [S.FAILED, S.SUPERSEDED, S.CANCELLED])
def test_final_states_never_change(final: S) -> None:
    for target in S:
        assert not can_transition(final, target)
    with pytest.raises(ConflictError):
        check_transition(final, S.QUEUED)


def test_illegal_transitions_raise() -> None:
    with pytest.raises(ConflictError, match="queued to verified"):
        check_transition(S.QUEUED, S.VERIFIED)
    with pytest.raises(ConflictError):
        check_transition(S.QUEUED, S.WRITTEN)
    assert not can_transition(S.VERIFIED, S.QUEUED)


def test_every_unfinished_state_can_fail_retry_or_be_superseded() -> None:
    for state in (S.CONTACTING, S.AWAITING_CALLBACK, S.WRITTEN, S.VERIFYING):
        assert can_transition(state, S.QUEUED)
        assert can_transition(state, S.FAILED)
        assert can_transition(state, S.SUPERSEDED)
    assert set(TRANSITIONS) == set(S)


# --- profiles ---
def test_profile_order_starts_at_the_remembered_profile() -> None:
    profiles = [P.PLAIN, P.LEGACY, P.MODERN]
    assert profile_order(profiles, None) == (P.PLAIN, P.LEGACY, P.MODERN)
    assert profile_order(profiles, P.LEGACY) == (P.LEGACY, P.MODERN, P.PLAIN)
    assert profile_order([P.PLAIN], P.MODERN) == (P.PLAIN,)


def test_choose_profile_moves_on_after_rejections_and_runs_out() -> None:
    profiles = [P.PLAIN, P.LEGACY]
    assert choose_profile(profiles, None, 0) is P.PLAIN
    assert choose_profile(profiles, None, 1) is P.LEGACY
    assert choose_profile(profiles, None, 2) is None
    assert choose_profile(profiles, P.LEGACY, 1) is P.PLAIN
    with pytest.raises(InputError):
        choose_profile([], None, 0)
    with pytest.raises(InputError):
        choose_profile(profiles, None, -1)


# --- verdict ---
@pytest.mark.parametrize(
    ("reply", "info", "probe", "expected"),
    [
        (CheckReply.PASSED, CheckInfo.VERIFIED, CheckProbe.PASSED, Verdict.VERIFIED),
        (CheckReply.PASSED, CheckInfo.UNDECIDED, CheckProbe.PASSED, Verdict.VERIFIED),
        (CheckReply.PASSED, CheckInfo.VERIFIED, CheckProbe.UNREACHABLE, Verdict.VERIFIED),
        (CheckReply.PASSED, CheckInfo.MISMATCH, CheckProbe.PASSED, Verdict.DRIFT),
        (CheckReply.PASSED, CheckInfo.VERIFIED, CheckProbe.FAILED, Verdict.DRIFT),
        (CheckReply.PASSED, CheckInfo.UNDECIDED, CheckProbe.UNREACHABLE, Verdict.UNDECIDED),
        (CheckReply.PASSED, None, None, Verdict.UNDECIDED),
        (CheckReply.FAILED, CheckInfo.VERIFIED, CheckProbe.PASSED, Verdict.FAILED),
        (None, CheckInfo.VERIFIED, CheckProbe.PASSED, Verdict.FAILED),
    ],
)
def test_verdict_combination(
    reply: CheckReply | None, info: CheckInfo | None, probe: CheckProbe | None, expected: Verdict
) -> None:
    assert combine(reply, info, probe) is expected
