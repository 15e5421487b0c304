"""The operator use cases, once: register, approve and decommission phones; revoke and renew certificates; retry
and cancel deployments. The API, the CLI and the web console all call these functions; none of them repeats a
rule that lives here."""

from certmgr.operations.certificates import (
    RenewResult,
    RevokeResult,
    renew_certificate,
    renew_mac,
    revoke_certificate,
)
from certmgr.operations.deployments import RetryResult, cancel_deployment, retry_deployment
from certmgr.operations.devices import (
    DecommissionResult,
    approve,
    approve_mac,
    decommission_device,
    decommission_mac,
    register_device,
)

__all__ = [
    "DecommissionResult",
    "RenewResult",
    "RetryResult",
    "RevokeResult",
    "approve",
    "approve_mac",
    "cancel_deployment",
    "decommission_device",
    "decommission_mac",
    "register_device",
    "renew_certificate",
    "renew_mac",
    "retry_deployment",
    "revoke_certificate",
]
