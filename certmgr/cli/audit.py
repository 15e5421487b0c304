"""``certmgr audit``: verify the chain and its signed checkpoints, make a checkpoint, show the public key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)
AUDIT_BROKEN = 1


@audit_app.command("verify")
def audit_verify(
    public_key: Annotated[
        Path | None,
        typer.Option(help="Pinned audit public key (PEM); default: the one in the data dir."),
    ] = None,
) -> None:
    """Verify every event link, the recorded head and every checkpoint signature.

    Exit 0 only if all is intact; otherwise exit 1 naming the first bad event.
    """
    from sqlmodel import Session

    from certmgr.audit.checkpoint import load_verifier, verify_audit
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    settings = load_settings()
    runtime = open_runtime(settings, migrate=False)
    try:
        with Session(runtime.engine) as session:
            verdict = verify_audit(session, load_verifier(settings.data_dir, public_key))
    finally:
        runtime.close()
    if not verdict.ok:
        _err.print(
            f"certmgr: audit log BROKEN at event {verdict.first_bad_seq}: {verdict.reason} "
            f"({verdict.checked} events verified before it, {verdict.checkpoints} checkpoints)",
            markup=False,
        )
        raise typer.Exit(AUDIT_BROKEN)
    _out.print(f"audit log intact: {verdict.checked} events, {verdict.checkpoints} signed checkpoints", markup=False)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the current chain head with the audit key (created on first use)."""
    from certmgr.audit.checkpoint import create_checkpoint, runtime_signer
    from certmgr.db.engine import session_scope
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    runtime = open_runtime(load_settings())
    try:
        signer = runtime_signer(runtime)
        with session_scope(runtime.engine) as session:
            checkpoint = create_checkpoint(session, signer, runtime.clock.now())
    finally:
        runtime.close()
    if checkpoint is None:
        _out.print("nothing to do: the log is empty or its head is already checkpointed")
    else:
        _out.print(f"checkpoint {checkpoint.id} signs event hash {checkpoint.event_hash}", markup=False)


@audit_app.command("public-key")
def audit_public_key() -> None:
    """Print the audit public key (PEM) and its SHA-256 fingerprint (to pin elsewhere)."""
    from certmgr.audit.checkpoint import runtime_signer
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    runtime = open_runtime(load_settings())
    try:
        signer = runtime_signer(runtime)
    finally:
        runtime.close()
    typer.echo(signer.public_pem.decode("ascii"), nl=False)
    _err.print(f"sha256 of the DER public key: {signer.fingerprint}", markup=False)
