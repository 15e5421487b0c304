"""``certmgr simulate``: run a fleet of simulated phones in the foreground until ``--duration`` or Ctrl-C.

Mount it in the main CLI with either of::

    app.add_typer(simulate_app, name="simulate")      # simulate_app runs its callback directly
    app.command("simulate")(simulate_command)

Programmatic use: :func:`run_simulate` (blocking, owns its event loop) or :func:`simulate` (a coroutine).
PKCS#12 passwords the phones know out of band come from ``--password-file`` (one per line) or the environment
variable ``CERTMGR_SIMULATOR_PKCS12_PASSWORDS`` (comma-separated) — never from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from certmgr.errors import InputError
from certmgr.fsutil import atomic_write
from certmgr.simulator.fleet import DEFAULT_BASE_IP, FaultPlan, Fleet
from certmgr.simulator.phone import DEFAULT_DLS_URL

PASSWORDS_ENV = "CERTMGR_SIMULATOR_PKCS12_PASSWORDS"
#: "Until Ctrl-C" still ends some day: 30 days.
MAX_DURATION = 30 * 24 * 3600.0


async def simulate(
    count: int,
    dls_url: str = DEFAULT_DLS_URL,
    *,
    base_ip: str = DEFAULT_BASE_IP,
    faults: Sequence[str] = (),
    fault_every: Sequence[str] = (),
    contact_gap: float = 300.0,
    wbm_port: int = 443,
    contact_port: int = 8085,
    duration: float | None = None,
    stats_out: Path | None = None,
    pkcs12_passwords: Sequence[bytes] = (),
    boot_concurrency: int = 32,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start a :class:`~certmgr.simulator.fleet.Fleet`, run it for ``duration`` seconds (``None``: until
    cancelled, at most :data:`MAX_DURATION`), stop it and return its summary; the summary is also written to
    ``stats_out`` when given — on cancellation too.

    Raises:
        InputError: for invalid options (count, addresses, fault specs, duration).
        SimulatorError: if a phone cannot bind its address.
    """
    if duration is not None and not 0 <= duration <= MAX_DURATION:
        raise InputError(f"duration must be between 0 and {MAX_DURATION:g} seconds")
    plan = FaultPlan.from_specs(faults, fault_every)
    fleet = Fleet(
        count,
        base_ip=base_ip,
        dls_url=dls_url,
        plan=plan,
        contact_gap=contact_gap,
        wbm_port=wbm_port,
        contact_port=contact_port,
        pkcs12_passwords=pkcs12_passwords,
        boot_concurrency=boot_concurrency,
    )
    say = announce or (lambda _line: None)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    sigterm = False
    if main is not None:
        try:  # SIGTERM ends the run like Ctrl-C: stop the fleet, write the stats
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
            sigterm = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            pass
    try:
        await fleet.start()
        first, last = fleet.phones[0].ip, fleet.phones[-1].ip
        say(f"simulating {count} phone(s) on {first} … {last}, service {dls_url}")
        await asyncio.sleep(MAX_DURATION if duration is None else duration)
    finally:
        if sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
        await asyncio.shield(fleet.stop())
        summary = fleet.summary()
        if stats_out is not None:
            atomic_write(stats_out, (json.dumps(summary, indent=2) + "\n").encode("utf-8"), mode=0o644)
    return summary


def run_simulate(
    count: int,
    dls_url: str = DEFAULT_DLS_URL,
    *,
    base_ip: str = DEFAULT_BASE_IP,
    faults: Sequence[str] = (),
    fault_every: Sequence[str] = (),
    contact_gap: float = 300.0,
    wbm_port: int = 443,
    contact_port: int = 8085,
    duration: float | None = None,
    stats_out: Path | None = None,
    pkcs12_passwords: Sequence[bytes] = (),
    boot_concurrency: int = 32,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Blocking wrapper around :func:`simulate` with its own event loop. Ctrl-C or SIGTERM end the run normally
    (the stats file is still written); the summary is returned, or ``None`` after Ctrl-C/SIGTERM.

    Raises:
        InputError: for invalid options.
        SimulatorError: if a phone cannot bind its address.
    """
    coro = simulate(
        count,
        dls_url,
        base_ip=base_ip,
        faults=faults,
        fault_every=fault_every,
        contact_gap=contact_gap,
        wbm_port=wbm_port,
        contact_port=contact_port,
        duration=duration,
        stats_out=stats_out,
        pkcs12_passwords=pkcs12_passwords,
        boot_concurrency=boot_concurrency,
        announce=announce,
    )
    try:
        return asyncio.run(coro)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return None


def _passwords(password_file: Path | None) -> list[bytes]:
    out: list[bytes] = []
    if password_file is not None:
        try:
            lines = password_file.read_bytes().splitlines()
        except OSError as exc:
            raise InputError(f"cannot read password file {password_file}: {exc.strerror or exc}") from None
        out += [line.rstrip(b"\r") for line in lines if line.strip()]
    env = os.environ.get(PASSWORDS_ENV, "")
    out += [p.strip().encode("utf-8") for p in env.split(",") if p.strip()]
    return out


def simulate_command(
    count: Annotated[int, typer.Option("--count", "-n", help="Number of phones.", min=1)] = 1,
    dls: Annotated[str, typer.Option("--dls", help="Service URL the phones call.")] = DEFAULT_DLS_URL,
    base_ip: Annotated[str, typer.Option("--base-ip", help="First phone address (127.0.0.0/8).")] = DEFAULT_BASE_IP,
    faults: Annotated[
        list[str] | None, typer.Option("--faults", help="Fault spec for every phone, e.g. busy-first-write,slow=2.")
    ] = None,
    fault_every: Annotated[
        list[str] | None, typer.Option("--fault-every", help="N:SPEC — every N-th phone also gets SPEC.")
    ] = None,
    contact_gap: Annotated[float, typer.Option("--contact-gap", help="Contact gap in seconds.", min=0)] = 300.0,
    wbm_port: Annotated[int, typer.Option("--wbm-port", help="WBM HTTPS port.")] = 443,
    contact_port: Annotated[int, typer.Option("--contact-port", help="contact-me HTTP port.")] = 8085,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Seconds to run (default: until Ctrl-C).", min=0)
    ] = None,
    stats_out: Annotated[Path | None, typer.Option("--stats-out", help="Write per-phone stats JSON here.")] = None,
    password_file: Annotated[
        Path | None, typer.Option("--password-file", help="PKCS#12 passwords the phones know, one per line.")
    ] = None,
    boot_concurrency: Annotated[int, typer.Option("--boot-concurrency", help="Phones booting at once.", min=1)] = 32,
) -> None:
    """Run simulated OpenStage phones on loopback addresses (contact-me :8085, WBM :443, WPI client).

    Raises:
        InputError: for invalid options.
        SimulatorError: if a phone cannot bind its address.
    """
    summary = run_simulate(
        count,
        dls,
        base_ip=base_ip,
        faults=faults or (),
        fault_every=fault_every or (),
        contact_gap=contact_gap,
        wbm_port=wbm_port,
        contact_port=contact_port,
        duration=duration,
        stats_out=stats_out,
        pkcs12_passwords=_passwords(password_file),
        boot_concurrency=boot_concurrency,
        announce=typer.echo,
    )
    if summary is not None:
        with contextlib.suppress(KeyError):
            typer.echo(json.dumps(summary["totals"], sort_keys=True))


simulate_app = typer.Typer(
    help="Run simulated OpenStage phones (contact-me, WBM, WPI client) on loopback addresses.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
simulate_app.callback(invoke_without_command=True)(simulate_command)
