"""``certmgr token``: create, list and revoke API tokens (each audited)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

token_app = typer.Typer(help="API bearer tokens: create (shown once), list, revoke.", no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)
CLI_ACTOR = "cli"  # how the CLI appears in audit events and report evidence


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="viewer | operator | admin")],
    name: Annotated[str, typer.Option(help="Unique name; audit events show the caller as token:<name>.")],
) -> None:
    """Create a token. Its value is printed ONCE, alone on the last line; only its SHA-256 is stored."""
    from certmgr.audit.tokens import create_token, parse_role
    from certmgr.db.engine import session_scope
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    chosen = parse_role(role)
    runtime = open_runtime(load_settings())
    try:
        with session_scope(runtime.engine) as session:
            info, value = create_token(session, name=name, role=chosen, actor=CLI_ACTOR, now=runtime.clock.now())
    finally:
        runtime.close()
    typer.echo(f"created token {info.name!r} (id {info.id}, role {info.role.value}).", err=True)
    typer.echo("Store it now; it cannot be shown again:", err=True)
    typer.echo(value)


@token_app.command("list")
def token_list() -> None:
    """List tokens: name, role, created, last used, revoked (never a value)."""
    from certmgr.audit.tokens import list_tokens
    from certmgr.db.engine import session_scope
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    runtime = open_runtime(load_settings())
    try:
        with session_scope(runtime.engine) as session:
            tokens = list_tokens(session)
    finally:
        runtime.close()
    table = Table(title=f"{len(tokens)} API tokens")
    for column in ("id", "name", "role", "created", "last used", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(
            str(t.id),
            t.name,
            t.role.value,
            t.created_at.isoformat(timespec="seconds"),
            t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never",
            t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "",
        )
    _out.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Name of the token.")]) -> None:
    """Revoke a token; requests with it fail with 401 from now on."""
    from certmgr.audit.tokens import revoke_token
    from certmgr.db.engine import session_scope
    from certmgr.runtime import open_runtime
    from certmgr.settings import load_settings

    runtime = open_runtime(load_settings())
    try:
        with session_scope(runtime.engine) as session:
            info = revoke_token(session, name, actor=CLI_ACTOR, now=runtime.clock.now())
    finally:
        runtime.close()
    _out.print(f"revoked token {info.name!r} (id {info.id})", markup=False)
