"""Combine the three checks of a deployment (reply, info, probe) into one verdict. Pure.

* ``failed`` — the phone did not accept the write (no key on the phone to check).
* ``drift`` — the phone reports (info) or serves (probe) a *different* certificate than the one written.
* ``verified`` — the write was accepted, nothing contradicts it, and at least one of info / probe positively
  identifies the deployed certificate (D6: an info that decides nothing leaves the proof to the probe).
* ``undecided`` — accepted, nothing contradicts it, but nothing proves it either (info undecided and the
  WBM unreachable): re-verify later, never write again.
"""

from __future__ import annotations

from enum import StrEnum

from certmgr.db.models import CheckInfo, CheckProbe, CheckReply


class Verdict(StrEnum):
    VERIFIED = "verified"
    FAILED = "failed"
    DRIFT = "drift"
    UNDECIDED = "undecided"


def combine(reply: CheckReply | None, info: CheckInfo | None, probe: CheckProbe | None) -> Verdict:
    """The verdict for the recorded checks (``None`` = check not made)."""
    if reply is not CheckReply.PASSED:
        return Verdict.FAILED
    if info is CheckInfo.MISMATCH or probe is CheckProbe.FAILED:
        return Verdict.DRIFT
    if info is CheckInfo.VERIFIED or probe is CheckProbe.PASSED:
        return Verdict.VERIFIED
    return Verdict.UNDECIDED
