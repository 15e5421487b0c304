"""A fleet of simulated phones on one event loop, each on its own loopback address.

Addresses count up from ``base_ip`` (default ``127.0.10.1``) and skip host parts ``.0`` and ``.255``; MACs are
``00:1A:E8`` (a Siemens/Unify OUI, §7) plus a 24-bit counter; E.164 numbers count up from ``e164_start``. Faults
come from a :class:`FaultPlan`: a set for every phone plus rules "every N-th phone also gets …". Phones boot with
bounded concurrency (bind, factory certificate, ``start-up``), and :meth:`Fleet.stats` collects each phone's
counters as JSON-ready dicts (never a key or a password).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from certmgr.clock import Clock
from certmgr.errors import InputError
from certmgr.simulator.faults import NO_FAULTS, FaultSet, parse_fault_spec
from certmgr.simulator.phone import DEFAULT_DLS_URL, PhoneConfig, SimPhone, SimulatorError, alternate_ip

#: The OUI of the simulated phones (Siemens Enterprise Communications; GS3 treats it as a Siemens phone, §7).
OUI = "00:1A:E8"
#: Largest fleet: far more than one host's ephemeral ports would carry anyway.
MAX_FLEET = 60_000
DEFAULT_BASE_IP = "127.0.10.1"
DEFAULT_E164_START = 49_897_220_000


def fleet_addresses(base_ip: str, count: int) -> list[str]:
    """``count`` IPv4 loopback addresses from ``base_ip`` upwards, skipping host parts ``.0`` and ``.255``.

    Raises:
        InputError: if ``base_ip`` is not in 127.0.0.0/8, ``count`` is outside 1..:data:`MAX_FLEET`, or the
            range would leave 127.0.0.0/8.
    """
    if not 1 <= count <= MAX_FLEET:
        raise InputError(f"count must be in 1..{MAX_FLEET}")
    try:
        addr = ipaddress.IPv4Address(base_ip.strip())
    except ValueError:
        raise InputError(f"base ip {base_ip[:40]!r} is not an IPv4 address") from None
    if not addr.is_loopback:
        raise InputError("base ip must be in 127.0.0.0/8")
    out: list[str] = []
    value = int(addr)
    last = int(ipaddress.IPv4Address("127.255.255.254"))
    for _ in range(count * 2 + 4):  # at most two skips per 256 addresses
        if len(out) == count:
            break
        if value > last:
            raise InputError("the address range runs past 127.255.255.254")
        if value & 0xFF not in (0, 255):
            out.append(str(ipaddress.IPv4Address(value)))
        value += 1
    return out


def fleet_mac(number: int) -> str:
    """The MAC of phone ``number`` (1-based): ``00:1A:E8`` + the number as 24 bits.

    Raises:
        InputError: if ``number`` is outside 1..0xFFFFFF.
    """
    if not 1 <= number <= 0xFFFFFF:
        raise InputError("phone number out of the 24-bit MAC range")
    tail = f"{number:06X}"
    return f"{OUI}:{tail[0:2]}:{tail[2:4]}:{tail[4:6]}"


@dataclass(frozen=True)
class FaultRule:
    """Every ``every``-th phone (phones ``every``, ``2*every`` …, 1-based) also gets ``faults``.

    Raises:
        InputError: (on construction) if ``every`` is below 1.
    """

    every: int
    faults: FaultSet

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InputError("fault rule: every must be at least 1")


def parse_fault_every(text: str) -> FaultRule:
    """Parse ``N:SPEC`` (e.g. ``10:busy-first-write,slow=1``) into a :class:`FaultRule`.

    Raises:
        InputError: if the text is not ``N:SPEC`` or the spec is invalid.
    """
    m = re.fullmatch(r"\s*(\d{1,6})\s*:(.*)", text)
    if m is None:
        raise InputError(f"fault rule {text[:40]!r} is not N:SPEC (e.g. 10:busy-first-write)")
    return FaultRule(every=int(m.group(1)), faults=parse_fault_spec(m.group(2)))


@dataclass(frozen=True)
class FaultPlan:
    """Which faults which phone gets: ``base`` for all, plus every matching rule (merged)."""

    base: FaultSet = NO_FAULTS
    rules: tuple[FaultRule, ...] = ()

    def for_phone(self, number: int) -> FaultSet:
        """The faults of phone ``number`` (1-based)."""
        faults = self.base
        for rule in self.rules:
            if number % rule.every == 0:
                faults = faults.merge(rule.faults)
        return faults

    @classmethod
    def from_specs(cls, specs: Sequence[str] = (), every: Sequence[str] = ()) -> FaultPlan:
        """A plan from CLI-style strings: ``specs`` apply to every phone, ``every`` are ``N:SPEC`` rules.

        Raises:
            InputError: for an invalid spec or rule.
        """
        base = NO_FAULTS
        for spec in specs:
            base = base.merge(parse_fault_spec(spec))
        return cls(base=base, rules=tuple(parse_fault_every(r) for r in every))


class Fleet:
    """``count`` phones, phone *i* (1-based) on the *i*-th address of :func:`fleet_addresses`.

    Raises:
        InputError: (on construction) for an invalid count, base address, port, URL or password list, or if
            the ``ip-change`` target addresses would collide with the fleet's own addresses.
    """

    def __init__(
        self,
        count: int,
        *,
        base_ip: str = DEFAULT_BASE_IP,
        dls_url: str = DEFAULT_DLS_URL,
        plan: FaultPlan | None = None,
        contact_gap: float = 300.0,
        wbm_port: int = 443,
        contact_port: int = 8085,
        pkcs12_passwords: Sequence[bytes] = (),
        mac_start: int = 1,
        e164_start: int = DEFAULT_E164_START,
        boot_concurrency: int = 32,
        request_timeout: float = 10.0,
        interaction_timeout: float = 120.0,
        device_type: str = "OpenStage 60",
        software_version: str = "V3 R5.21.0",
        clock: Clock | None = None,
    ) -> None:
        if not 1 <= boot_concurrency <= 1024:
            raise InputError("boot_concurrency must be in 1..1024")
        self.plan = plan or FaultPlan()
        self.boot_concurrency = boot_concurrency
        addresses = fleet_addresses(base_ip, count)
        own = set(addresses)
        self.phones: list[SimPhone] = []
        for number, ip in enumerate(addresses, start=1):
            faults = self.plan.for_phone(number)
            alt = alternate_ip(ip)
            if faults.ip_change and alt in own:
                raise InputError(f"ip-change target {alt} collides with a fleet address; pick another base ip")
            config = PhoneConfig(
                mac=fleet_mac(mac_start + number - 1),
                ip=ip,
                e164=str(e164_start + number - 1),
                device_type=device_type,
                software_version=software_version,
                contact_port=contact_port,
                wbm_port=wbm_port,
                dls_url=dls_url,
                faults=faults,
                pkcs12_passwords=tuple(pkcs12_passwords),
                contact_gap=contact_gap,
                request_timeout=request_timeout,
                interaction_timeout=interaction_timeout,
                alt_ip=alt,
            )
            self.phones.append(SimPhone(config, clock=clock))

    async def start(self, *, send_startup: bool = True) -> None:
        """Start every phone, at most ``boot_concurrency`` at a time; each start-up interaction is awaited
        within its slot, so the service sees at most that many boots at once.

        Raises:
            SimulatorError: if a phone cannot bind its addresses; the phones already started are stopped.
        """
        semaphore = asyncio.Semaphore(self.boot_concurrency)

        async def boot(phone: SimPhone) -> None:
            async with semaphore:
                await phone.start(send_startup=send_startup, wait_startup=True)

        results = await asyncio.gather(*(boot(p) for p in self.phones), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            first = errors[0]
            if isinstance(first, SimulatorError):
                raise first
            raise SimulatorError(f"a phone failed to start: {type(first).__name__}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every phone (in parallel, bounded by ``timeout``).

        Raises:
            SimulatorError: never (kept for the ``Raises:`` convention).
        """
        await asyncio.gather(*(p.stop(timeout) for p in self.phones), return_exceptions=True)

    def stats(self) -> list[dict[str, Any]]:
        """Per-phone counters (see :class:`~certmgr.simulator.phone.PhoneStats`)."""
        return [p.stats.as_dict() for p in self.phones]

    def summary(self) -> dict[str, Any]:
        """Fleet totals plus the per-phone list: what ``certmgr simulate --stats-out`` writes."""
        per_phone = self.stats()
        keys = (
            "contact_me_received",
            "contact_me_ignored_gap",
            "interactions",
            "writes_accepted",
            "writes_rejected",
            "busy_replies",
        )
        totals: dict[str, int] = {k: sum(int(s[k]) for s in per_phone) for k in keys}
        totals["phones"] = len(per_phone)
        totals["factory_cert"] = sum(1 for s in per_phone if s["factory_cert"])
        totals["with_error"] = sum(1 for s in per_phone if s["last_error"])
        return {"totals": totals, "phones": per_phone}

    def stats_json(self) -> str:
        """:meth:`summary` as indented JSON."""
        return json.dumps(self.summary(), indent=2, sort_keys=False)
