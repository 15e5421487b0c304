"""The operator use cases on the command line: ``device register | approve | decommission | renew``,
``certificate revoke | renew`` and ``deployment retry | cancel``.

Each command is a thin wrapper over :mod:`certmgr.operations` (the functions the API and the console call): it
opens the runtime, calls the use case with the actor ``cli`` (who appears in the audit events the use case
writes) and prints what happened. Phones are named by MAC, certificates and deployments by the ids the API, the
console and ``certmgr report deployments`` show. Refusals are :class:`~certmgr.errors.CertmgrError` and leave
through the one exit-code mapping of :mod:`certmgr.cli.exitcodes` (8 unknown, 9 wrong state, 4 bad input).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from certmgr.cli.token import CLI_ACTOR
from certmgr.pki.crl import RevocationReason

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

certificate_app = typer.Typer(help="Certificates: revoke (with a reason), renew now.", no_args_is_help=True)
deployment_app = typer.Typer(help="Deployments: retry now, cancel.", no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)

Mac = Annotated[str, typer.Argument(help="The phone's MAC address (any common spelling).")]
CertificateId = Annotated[int, typer.Argument(help="The certificate's id (as in the API and the console).")]
DeploymentId = Annotated[int, typer.Argument(help="The deployment's id (as in the API, the console and reports).")]


@contextlib.contextmanager
def _runtime() -> Iterator[Runtime]:
    """The runtime of the configured service (``CERTMGR_*``, ``CERTMGR_CONFIG``) for one command, closed after it."""
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    runtime = open_runtime(load_settings())
    try:
        yield runtime
    finally:
        runtime.close()


def _say(line: str) -> None:
    _out.print(line, markup=False)


def _ids(ids: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in ids) if ids else "none"


# --- device ---------------------------------------------------------------------------------------------------
def device_register(
    mac: Mac,
    ip: Annotated[str, typer.Option(help="The phone's IP address.")],
    e164: Annotated[str | None, typer.Option(help="The phone's number.")] = None,
    model: Annotated[str | None, typer.Option(help="Device type, e.g. 'OpenStage 60'.")] = None,
    dns: Annotated[list[str] | None, typer.Option(help="Extra DNS name (repeatable).")] = None,
    hostname: Annotated[str | None, typer.Option(help="The phone's host name (template variable {hostname}).")] = None,
) -> None:
    """Pre-register a phone before it first reports: approved at once if its policy's enrollment is auto, else
    pending approval. Its certificate is issued and deployed once it is approved."""
    from certmgr.operations import register_device

    with _runtime() as runtime:
        device = register_device(
            runtime,
            mac=mac,
            ip=ip,
            e164=e164,
            model=model,
            dns_names=dns or [],
            actor=CLI_ACTOR,
            hostname=hostname,
        )
    _say(
        f"registered {device.mac} (id {device.id}, ip {device.ip}, policy {device.policy_name or '-'}, "
        f"enrollment {device.enrollment.value})"
    )


def device_approve(
    mac: Mac,
    move_to: Annotated[
        str | None,
        typer.Option("--move-to", help="Approve the phone's held address move to this address (see certmgr status)."),
    ] = None,
) -> None:
    """Approve a pending phone (policy enrollment = approve) so that certmgr deploys to it, or its address move
    held for want of proof (--move-to names the held address)."""
    from certmgr.operations import approve_mac

    with _runtime() as runtime:
        device = approve_mac(runtime, mac, actor=CLI_ACTOR, move_to=move_to)
    _say(f"approved {device.mac} at {device.ip or '-'} (policy {device.policy_name or '-'})")


def device_decommission(
    mac: Mac,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Take a phone out of service: its unfinished deployments are cancelled, its unexpired certificates revoked
    (cessationOfOperation) and the CRL re-signed. Asks first unless --yes."""
    from certmgr.operations import decommission_mac

    if not yes:
        typer.confirm(f"Decommission {mac} and revoke its certificates?", abort=True)
    with _runtime() as runtime:
        result = decommission_mac(runtime, mac, actor=CLI_ACTOR)
    crl = f"CRL number {result.crl_number}" if result.crl_number is not None else "CRL unchanged"
    _say(
        f"decommissioned {result.device.mac}: cancelled deployments {_ids(result.cancelled_deployments)}; "
        f"revoked certificates {_ids(result.revoked_certificates)}; {crl}"
    )


def device_renew(mac: Mac) -> None:
    """Issue a new certificate for the phone now (replacing its current one) and queue its deployment."""
    from certmgr.operations import renew_mac

    with _runtime() as runtime:
        result = renew_mac(runtime, mac, actor=CLI_ACTOR)
    _say(f"certificate {result.serial} (id {result.certificate_id}) queued as deployment {result.deployment_id}")


# --- certificate ----------------------------------------------------------------------------------------------
@certificate_app.command("revoke")
def certificate_revoke(
    certificate_id: CertificateId,
    reason: Annotated[RevocationReason, typer.Option(help="The RFC 5280 reason.", show_choices=True)],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Revoke a certificate with a reason; the CRL is re-signed and a phone still in service gets a replacement
    queued for deployment. Asks first unless --yes (a revocation cannot be undone)."""
    from certmgr.operations import revoke_certificate

    if not yes:
        typer.confirm(f"Revoke certificate {certificate_id} ({reason.value})? This cannot be undone.", abort=True)
    with _runtime() as runtime:
        result = revoke_certificate(runtime, certificate_id, reason, actor=CLI_ACTOR)
    cert = result.certificate
    _say(f"revoked certificate {cert.serial} (id {cert.id}, reason {reason.value})")
    if result.replacement_certificate_id is not None:
        _say(
            f"replacement certificate {result.replacement_certificate_id} queued as deployment "
            f"{result.replacement_deployment_id}"
        )
    if result.crl_number is not None:
        _say(f"CRL number {result.crl_number}")


@certificate_app.command("renew")
def certificate_renew(certificate_id: CertificateId) -> None:
    """Issue a new certificate for this (current) certificate's phone now and queue its deployment."""
    from certmgr.operations import renew_certificate

    with _runtime() as runtime:
        result = renew_certificate(runtime, certificate_id, actor=CLI_ACTOR)
    _say(f"certificate {result.serial} (id {result.certificate_id}) queued as deployment {result.deployment_id}")


# --- deployment -----------------------------------------------------------------------------------------------
@deployment_app.command("retry")
def deployment_retry(deployment_id: DeploymentId) -> None:
    """Make a queued, failed or cancelled deployment due now (a failed or cancelled one is continued by a new
    deployment of the same certificate)."""
    from certmgr.operations import retry_deployment

    with _runtime() as runtime:
        result = retry_deployment(runtime, deployment_id, actor=CLI_ACTOR)
    continued = f" (continues deployment {result.retried_from})" if result.retried_from is not None else ""
    _say(f"deployment {result.deployment.id} is due now{continued}")


@deployment_app.command("cancel")
def deployment_cancel(deployment_id: DeploymentId) -> None:
    """Cancel an unfinished deployment."""
    from certmgr.operations import cancel_deployment

    with _runtime() as runtime:
        dep = cancel_deployment(runtime, deployment_id, actor=CLI_ACTOR)
    _say(f"cancelled deployment {dep.id}")


__all__ = [
    "certificate_app",
    "deployment_app",
    "device_approve",
    "device_decommission",
    "device_register",
    "device_renew",
]
