"""The ``certmgr`` command line. Errors become one line on stderr and an exit code from ``exitcodes``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from certmgr.cli.actions import (
    certificate_app,
    deployment_app,
    device_approve,
    device_decommission,
    device_register,
    device_renew,
)
from certmgr.cli.audit import audit_app
from certmgr.cli.exitcodes import USAGE, exit_code_for
from certmgr.cli.notify import notify_app
from certmgr.cli.report import report_app
from certmgr.cli.status import status_command
from certmgr.cli.token import CLI_ACTOR, token_app
from certmgr.errors import CertmgrError, InputError
from certmgr.settings import Settings, load_settings
from certmgr.simulator.cli import simulate_command

app = typer.Typer(
    name="certmgr",
    help="Keeps the WBM HTTPS certificates of OpenStage / OpenScape Desk Phones valid, trusted and verified.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ca_app = typer.Typer(help="The certificate authority: create, import, show.", no_args_is_help=True)
policy_app = typer.Typer(help="Certificate policies (policies/*.toml).", no_args_is_help=True)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
device_app = typer.Typer(help="Phones: inventory; register, approve, decommission, renew now.", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
app.add_typer(policy_app, name="policy")
app.add_typer(db_app, name="db")
app.add_typer(device_app, name="device")
app.add_typer(certificate_app, name="certificate")
app.add_typer(deployment_app, name="deployment")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.add_typer(report_app, name="report")
app.add_typer(notify_app, name="notify")
app.command("status")(status_command)
app.command("simulate")(simulate_command)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _settings() -> Settings:
    return load_settings()


def _read_secret_file(path: Path | None, env: str) -> bytes | None:
    """A password from a file or an environment variable — never from argv."""
    if path is not None:
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise InputError(f"cannot read password file {path}: {exc.strerror or exc}") from exc
    value = os.environ.get(env)
    return value.encode() if value else None


def _print_notices(notices: list[str]) -> None:
    """What start-up did on its own (generated secrets, a new CA): said on stderr, never silently."""
    for note in notices:
        err.print(note, markup=False)


def _read_input(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


# --- ca -------------------------------------------------------------------------------------------------------
@ca_app.command("init")
def ca_init(
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA (its keys are lost).")] = False,
) -> None:
    """Create the root CA and the issuing CA from ca/ca.toml (keys encrypted in the data dir). With --force it
    replaces the active CA: running services pick the new one up without a restart."""
    from certmgr.operations.ca import initialise_ca
    from certmgr.pki.ca import load_ca_definition
    from certmgr.runtime import CA_DEFINITION_FILE, open_runtime
    from certmgr.settings import ca_passphrase

    settings = _settings()
    definition = load_ca_definition(settings.ca_config_dir / CA_DEFINITION_FILE)
    runtime = open_runtime(settings)
    try:
        _print_notices(runtime.notices)
        passphrase, note = ca_passphrase(settings, generate=True)
        if note:
            err.print(note)
        info = initialise_ca(runtime, definition, passphrase.get_secret_value().encode(), actor=CLI_ACTOR, force=force)
        out.print(f"created CA in {runtime.ca_store.ca_dir}")
        _print_ca(info, now=runtime.clock.now())
    finally:
        runtime.close()


@ca_app.command("show")
def ca_show() -> None:
    """Show the active CA's chain: subjects, SHA-256 fingerprints, validity, days left."""
    from certmgr.runtime import open_runtime

    runtime = open_runtime(_settings())
    try:
        _print_ca(runtime.ca_info(), now=runtime.clock.now())
    finally:
        runtime.close()


@ca_app.command("import")
def ca_import(
    p12: Annotated[Path | None, typer.Option(help="PKCS#12 with the issuing CA key and chain.")] = None,
    key: Annotated[Path | None, typer.Option(help="PEM private key of the issuing CA.")] = None,
    chain: Annotated[Path | None, typer.Option(help="PEM chain: issuing CA first, root last (optional).")] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(help="File with the PKCS#12 / key password (or env CERTMGR_IMPORT_PASSWORD)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA.")] = False,
) -> None:
    """Use an existing enterprise issuing CA instead of certmgr's own. With --force it replaces the active CA:
    running services pick the new one up without a restart."""
    from certmgr.operations.ca import import_ca
    from certmgr.runtime import open_runtime
    from certmgr.settings import ca_passphrase

    if (p12 is None) == (key is None or chain is None):
        raise InputError("give either --p12 FILE, or both --key FILE and --chain FILE")
    password = _read_secret_file(password_file, "CERTMGR_IMPORT_PASSWORD")
    settings = _settings()
    runtime = open_runtime(settings)
    try:
        _print_notices(runtime.notices)
        passphrase, note = ca_passphrase(settings, generate=True)
        if note:
            err.print(note)
        pp = passphrase.get_secret_value().encode()
        if p12 is not None:
            info = import_ca(
                runtime, pp, actor=CLI_ACTOR, p12=_read_input(p12, "PKCS#12"), password=password, force=force
            )
        else:
            assert key is not None
            assert chain is not None
            key_pem, chain_pem = _read_input(key, "key"), _read_input(chain, "chain")
            info = import_ca(runtime, pp, actor=CLI_ACTOR, key=key_pem, chain=chain_pem, password=password, force=force)
        out.print(f"imported CA into {runtime.ca_store.ca_dir}")
        _print_ca(info, now=runtime.clock.now())
    finally:
        runtime.close()


def _print_ca(info: object, now: object | None = None) -> None:
    """One block per certificate. Not a table: a table squeezed to the terminal width cuts the fingerprints."""
    from datetime import datetime

    from certmgr.pki.keys import fingerprint_sha256
    from certmgr.pki.store import CAInfo

    assert isinstance(info, CAInfo)
    rows = [("issuing", info.issuing_cert)]
    rows += [("intermediate", c) for c in info.chain[1:]]
    if info.root_cert is not None:
        rows.append(("root", info.root_cert))
    for role, cert in rows:
        out.print(f"{role}: {cert.subject.rfc4514_string()}", markup=False)
        out.print(f"  SHA-256 fingerprint: {fingerprint_sha256(cert)}", markup=False)
        out.print(f"  not before: {cert.not_valid_before_utc.isoformat()}", markup=False)
        out.print(f"  not after:  {cert.not_valid_after_utc.isoformat()}", markup=False)
        if isinstance(now, datetime):
            out.print(f"  days left:  {(cert.not_valid_after_utc - now).days}", markup=False)
    out.print(f"root key present in data dir: {'yes' if info.root_key_present else 'no (kept offline)'}")


# --- policy ---------------------------------------------------------------------------------------------------
@policy_app.command("check")
def policy_check(
    directory: Annotated[Path | None, typer.Argument(help="Policy folder (default: CERTMGR_POLICY_DIR).")] = None,
) -> None:
    """Validate every policy file; list the policies in selection order."""
    from certmgr.policy import load_policies
    from certmgr.policy.duration import format_duration

    settings = _settings()
    policies = load_policies(directory or settings.policy_dir, known_secrets=set(settings.pkcs12_passwords))
    table = Table(title=f"{len(policies)} valid policies (first match wins)")
    for col in ("#", "name", "file", "key", "validity", "profiles", "enrollment", "windows"):
        table.add_column(col)
    for n, p in enumerate(policies, 1):
        table.add_row(
            str(n),
            p.name,
            p.source,
            p.key_type.value,
            format_duration(p.validity),
            ",".join(x.value for x in p.pkcs12.profiles),
            p.enrollment,
            str(len(p.windows)) if p.windows else "any time",
        )
    out.print(table)


# --- db -------------------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest revision (Alembic)."""
    from certmgr.db.engine import redact_url
    from certmgr.db.migrate import check_schema, current_revision, upgrade
    from certmgr.errors import SchemaOutdatedError
    from certmgr.fsutil import ensure_private_dir

    settings = _settings()
    ensure_private_dir(settings.data_dir)
    url = settings.effective_database_url
    try:
        check_schema(url)
    except SchemaOutdatedError:
        upgrade(url)
    out.print(f"database {redact_url(url)} at revision {current_revision(url)}")


# --- device ---------------------------------------------------------------------------------------------------
@device_app.command("list")
def device_list(
    limit: Annotated[int, typer.Option(help="Show at most this many phones.")] = 1000,
) -> None:
    """List known phones: MAC, model, IP, policy, enrollment, status, last seen."""
    from certmgr.db.engine import session_scope
    from certmgr.inventory.enrollment import list_devices
    from certmgr.runtime import open_runtime

    runtime = open_runtime(_settings())
    try:
        with session_scope(runtime.engine) as session:
            devices = list_devices(session, limit=limit)
    finally:
        runtime.close()
    table = Table(title=f"{len(devices)} phones")
    for col in ("MAC", "model", "firmware", "IP", "policy", "enrollment", "status", "drift", "last seen"):
        table.add_column(col)
    for d in devices:
        table.add_row(
            d.mac,
            d.device_type or "",
            d.software_version or "",
            d.ip or "",
            d.policy_name or "",
            d.enrollment.value,
            d.status.value,
            "yes" if d.drift else "",
            d.last_seen_at.isoformat(timespec="seconds") if d.last_seen_at else "",
        )
    out.print(table)


# The operator use cases on phones live in certmgr/cli/actions.py (thin wrappers over certmgr.operations).
device_app.command("register")(device_register)
device_app.command("approve")(device_approve)
device_app.command("decommission")(device_decommission)
device_app.command("renew")(device_renew)


# --- crl ------------------------------------------------------------------------------------------------------
@app.command("crl")
def crl_cmd(
    out_file: Annotated[Path, typer.Option("--out", help="File to write the CRL to (DER; PEM with --pem).")],
    pem: Annotated[bool, typer.Option("--pem", help="Write PEM instead of DER.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Sign a new CRL even if the current one is fresh.")] = False,
) -> None:
    """Write the issuing CA's CRL (re-signed first if stale or out of date with the revocations)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from certmgr.fsutil import atomic_write
    from certmgr.issuance.revocation import refresh_crl
    from certmgr.runtime import open_runtime

    runtime = open_runtime(_settings())
    try:
        stored = refresh_crl(runtime, force=force)
    finally:
        runtime.close()
    data = x509.load_der_x509_crl(stored.der).public_bytes(Encoding.PEM) if pem else stored.der
    atomic_write(out_file, data, mode=0o644)
    meta = stored.meta
    out.print(
        f"wrote {out_file}: CRL number {meta.number}, {meta.entries} revoked, "
        f"next update {meta.next_update.isoformat()}",
        markup=False,
    )


# --- issue ----------------------------------------------------------------------------------------------------
@app.command("issue")
def issue(
    mac: Annotated[str, typer.Option(help="The phone's MAC address.")],
    ip: Annotated[list[str], typer.Option(help="The phone's IP address (repeatable).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for <mac>.pem, <mac>.p12 and chain.pem.")],
    dns: Annotated[list[str] | None, typer.Option(help="Extra DNS name (repeatable).")] = None,
    policy: Annotated[str | None, typer.Option(help="Policy name (default: first matching policy).")] = None,
    e164: Annotated[str | None, typer.Option(help="The phone's number.")] = None,
    model: Annotated[str | None, typer.Option(help="Device type, e.g. 'OpenStage 60'.")] = None,
    hostname: Annotated[str | None, typer.Option(help="The phone's host name (template variable {hostname}).")] = None,
) -> None:
    """Issue a certificate for one phone and write it as PEM + PKCS#12 (first profile of its policy)."""
    from certmgr.issuance.service import issue_to_files
    from certmgr.runtime import open_runtime

    settings = _settings()
    runtime = open_runtime(settings)
    try:
        _print_notices(runtime.notices)
        result = issue_to_files(
            runtime,
            mac=mac,
            ips=ip,
            dns_names=dns or [],
            e164=e164,
            model=model,
            hostname=hostname,
            policy_name=policy,
            out_dir=out_dir,
            actor=CLI_ACTOR,
        )
    finally:
        runtime.close()
    for path in result.files:
        out.print(f"wrote {path}")
    out.print(f"serial {result.serial}  not after {result.not_after.isoformat()}  policy {result.policy}")


# --- serve ----------------------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    role: Annotated[str, typer.Option(help="all | api | wpi | scheduler")] = "all",
) -> None:
    """Start the service in the foreground (first start: migrate the database, create the CA)."""
    import logging

    from certmgr.logs import configure_logging
    from certmgr.runtime import open_runtime
    from certmgr.serve import Role, serve

    try:
        chosen = Role(role)
    except ValueError:
        raise InputError(f"unknown role {role!r}: use all, api, wpi or scheduler") from None
    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    runtime = open_runtime(settings, create_ca=True, node=True)
    try:
        _print_notices(runtime.notices)
        serve(runtime, chosen, announce=lambda line: out.print(line))
    finally:
        runtime.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning certmgr errors into one line and an exit code."""
    os.umask(0o077)  # every file certmgr creates (database, keys, exports) is private to its user
    try:
        rv = app(args=argv, standalone_mode=False)
    except CertmgrError as exc:
        err.print(f"certmgr: error: {exc.message}", markup=False)
        sys.exit(exit_code_for(exc))
    except (click.exceptions.UsageError, typer.TyperException) as exc:
        # typer >= 0.2x raises the exceptions of its vendored click, which are not click's own classes.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"certmgr: error: {exc}", markup=False)
        sys.exit(USAGE if isinstance(exc, click.exceptions.UsageError) else getattr(exc, "exit_code", USAGE))
    except (click.exceptions.Abort, typer.Abort):
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
