"""Which PKCS#12 profile an attempt uses (D7). Pure.

The policy lists its profiles in order. A deployment starts at the profile remembered for the phone's device
type and software version (:class:`~certmgr.db.models.ProfileMemory`), or at the first one; every
``WriteRejected`` moves on to the next profile (``profile_index`` counts those steps, wrapping round the
list from the starting point). When every profile was refused, the deployment has failed.
"""

from __future__ import annotations

from collections.abc import Sequence

from certmgr.errors import InputError
from certmgr.pki.types import Pkcs12Profile


def profile_order(profiles: Sequence[Pkcs12Profile], remembered: Pkcs12Profile | None) -> tuple[Pkcs12Profile, ...]:
    """``profiles`` rotated so that ``remembered`` (if listed) comes first; the others keep their order.

    Raises:
        InputError: if ``profiles`` is empty.
    """
    if not profiles:
        raise InputError("a policy needs at least one PKCS#12 profile")
    order = tuple(profiles)
    if remembered is None or remembered not in order:
        return order
    start = order.index(remembered)
    return order[start:] + order[:start]


def choose_profile(
    profiles: Sequence[Pkcs12Profile], remembered: Pkcs12Profile | None, profile_index: int
) -> Pkcs12Profile | None:
    """The profile for the attempt after ``profile_index`` rejections, or ``None`` once all were refused.

    Raises:
        InputError: if ``profiles`` is empty or ``profile_index`` is negative.
    """
    if profile_index < 0:
        raise InputError("profile_index must not be negative")
    order = profile_order(profiles, remembered)
    return order[profile_index] if profile_index < len(order) else None


def next_profile(
    profiles: Sequence[Pkcs12Profile], refused: Pkcs12Profile | None, rejections: int
) -> Pkcs12Profile | None:
    """The profile to try after ``refused`` was refused (``rejections`` refusals so far in this deployment), or
    ``None`` once every profile was refused.

    The next profile is the cyclic successor of the refused one in the policy's list. Unlike re-deriving the
    order from the remembered profile (:func:`choose_profile`), this stays right when the remembered profile
    changes between two attempts (another phone of the same model verified meanwhile with another profile):
    the rotation may then start elsewhere, but successive successors still visit every profile exactly once.

    Raises:
        InputError: if ``profiles`` is empty or ``rejections`` is below 1.
    """
    if rejections < 1:
        raise InputError("next_profile needs at least one rejection")
    order = profile_order(profiles, None)
    if rejections >= len(order):
        return None
    if refused is None or refused not in order:
        return order[rejections]
    return order[(order.index(refused) + 1) % len(order)]
