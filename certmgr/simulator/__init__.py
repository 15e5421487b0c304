"""The phone simulator: OpenStage / OpenScape Desk Phones over real loopback sockets, for tests and load.

* :mod:`certmgr.simulator.phone` — :class:`SimPhone` (contact-me server, WBM HTTPS server, WPI client);
* :mod:`certmgr.simulator.faults` — the fault catalogue and the spec syntax (``busy-first-write,slow=2.0``);
* :mod:`certmgr.simulator.fleet` — :class:`Fleet`, N phones on N loopback addresses;
* :mod:`certmgr.simulator.cli` — ``certmgr simulate`` (:func:`run_simulate`, ``simulate_app``).
"""

from certmgr.simulator.faults import Fault, FaultSet, parse_fault_spec, pkcs12_algorithm_oids, uses_legacy_pbe
from certmgr.simulator.fleet import FaultPlan, FaultRule, Fleet, fleet_addresses, fleet_mac, parse_fault_every
from certmgr.simulator.phone import (
    InteractionRecord,
    PhoneConfig,
    PhoneStats,
    SimPhone,
    SimulatorError,
    alternate_ip,
    certificate_info_text,
)

__all__ = [
    "Fault",
    "FaultPlan",
    "FaultRule",
    "FaultSet",
    "Fleet",
    "InteractionRecord",
    "PhoneConfig",
    "PhoneStats",
    "SimPhone",
    "SimulatorError",
    "alternate_ip",
    "certificate_info_text",
    "fleet_addresses",
    "fleet_mac",
    "parse_fault_every",
    "parse_fault_spec",
    "pkcs12_algorithm_oids",
    "uses_legacy_pbe",
]
