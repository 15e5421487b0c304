"""``certmgr notify``: notification channels."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from certmgr.errors import DeploymentError

notify_app = typer.Typer(help="Notifications (webhooks, e-mail).", no_args_is_help=True)
_out = Console(highlight=False, soft_wrap=True)


@notify_app.command("test")
def notify_test() -> None:
    """Send a test notification over every configured channel; one line per target.

    Exit 0 if every target accepted it; otherwise the error's exit code (3 for configuration, 11 when a
    target did not accept the message).

    Raises:
        ConfigError: no channel configured or invalid notification settings.
        DeploymentError: a channel did not deliver.
    """
    from certmgr.clock import SystemClock
    from certmgr.notify.notifier import send_test
    from certmgr.settings import load_settings

    results = asyncio.run(send_test(load_settings(), clock=SystemClock()))
    for r in results:
        state = "delivered" if r.delivered else f"FAILED: {r.error or 'unknown error'}"
        _out.print(f"{r.channel} {r.target}: {state} (attempts {r.attempts})", markup=False)
    failed = [r for r in results if not r.delivered]
    if failed:
        raise DeploymentError(f"{len(failed)} of {len(results)} notification target(s) did not accept the message")
