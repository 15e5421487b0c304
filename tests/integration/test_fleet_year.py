"""The correctness part of ``bench/fleet_year.py`` at a small size: certmgr's real renewal reconcile, dispatcher
steps, hub sequence and probe sweep on a real database, driven by a ManualClock, with model phones and the bench's
fault mix. A year of a small fleet, a mass enrollment and a CA rotation: no certificate expires before a verified
successor, every phone is renewed, the stress cases converge, and the hourly limit and the maintenance windows the
bench relies on hold (the hourly limit is scaled down with the fleet so that the stress cases need several nights,
as 100,000 phones do at the default limit)."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import create_engine, make_url, text

from bench import fleet_year
from bench.fleet_year import (
    START,
    Faults,
    Floor,
    Options,
    Results,
    StatementCensus,
    floor_issuance,
    ip_of,
    open_bench_runtime,
    run_case,
)
from certmgr.clock import ManualClock
from certmgr.pki.pkcs12 import open_pkcs12
from tests.pg import PostgresServer

#: A fleet small enough for ``make test``, an hourly limit scaled down with it (default: 2,000/h for 100,000).
PHONES = 100
PER_HOUR = 8
#: The fault mix at shares that give a small fleet some of each fault (the bench: 2 %, 1 %, 0.5 %, 0.1 %).
FAULTS = Faults(offline=0.05, busy=0.05, move=0.03, reset=0.02)


def _options(phones: int = PHONES) -> Options:
    return Options(
        phones=phones,
        days=400,
        seed=7,
        renewal_every=timedelta(hours=3),
        faults=FAULTS,
        quiet=True,
        stress_days=30,
        settings={
            "renewal_max_per_hour": PER_HOUR,
            "probe_sweep_interval_seconds": 86400.0,
            "probe_sweep_concurrency": 2,
            "probe_sweep_batch": 20,
            # The reconciler's walk over the fleet one phone a tick: what it finds, the hub marked (not the walk).
            "reconcile_scan_batch": 1,
        },
    )


def _assert_kept_valid(r: Results) -> None:
    assert r.expired == [], f"certificates expired before a verified successor: {r.expired[:5]}"
    assert r.db_expired == 0, "the database records a successor verified after its predecessor expired"
    assert r.db_current_expired == 0, "a phone's current certificate expired"
    assert r.contacts_outside_window == 0, "contact-me sent while the maintenance window was shut"
    assert 0 < r.max_limited_per_hour <= PER_HOUR, f"{r.max_limited_per_hour} scheduled issuances in one hour"
    assert r.margins.count, "nothing was renewed"
    assert r.margins.min_h > 0


def _assert_converged(r: Results, opts: Options) -> None:
    assert r.renewed == r.phones, f"{r.phones - r.renewed} phones without a verified successor"
    assert r.done_at is not None
    assert r.done_at < START + timedelta(days=opts.stress_days), "the stress case did not converge"
    active = [k for k, n in sorted(r.nights.items()) if n.scheduled]
    capacity = max(n.capacity for n in r.nights.values())
    # The hourly limit holds the wave back: it takes at least as many nights as the windows' capacity dictates.
    assert (active[-1] - active[0]).days + 1 >= math.ceil(r.phones / capacity)


def test_a_year_of_a_small_fleet_keeps_every_certificate_valid(tmp_path: Path) -> None:
    opts = replace(_options(), statements=True)
    r = run_case("year", tmp_path, None, opts, floor=False).results
    _assert_kept_valid(r)
    # The statement census (--statements) counts under certmgr's own sections, each of which writes.
    for section in ("renewal", "dispatch", "hub.admit", "hub.effects", "hub.verify"):
        assert r.statements.get(section, 0) > r.commits.get(section, 0) > 0, (section, r.statements, r.commits)
    assert r.statements.get("other", 0) < r.statements["renewal"]
    assert r.renewed == r.phones, f"{r.phones - r.renewed} phones never renewed in 400 days"
    assert r.expired_offline == []
    assert r.reasons.get("renewal", 0) >= PHONES
    assert r.moves.get("moved", 0) > 0, "no phone changed address: the fault mix did not run"
    # A moved phone gets its certificate for the new address from the dispatcher's reconciler, as in the service
    # (the hub's on_device_seen marks it; the reconciler's own walk covers one phone a tick here, see _options).
    assert r.reconciled_reasons.get("ip-change", 0) == r.moves["moved"], (r.reconciled_reasons, r.reasons)
    assert r.resets_detected_h, "no factory reset was detected and repaired"
    assert sum(n.busy for n in r.nights.values()) > 0
    assert sum(n.contact_failures for n in r.nights.values()) > 0, "no phone was ever offline"


@pytest.mark.parametrize("case", ["mass", "rotation"])
def test_a_stress_case_converges_within_the_limits_and_nothing_expires(tmp_path: Path, case: str) -> None:
    opts = _options()
    r = run_case(case, tmp_path, None, opts, floor=False).results
    _assert_kept_valid(r)
    _assert_converged(r, opts)
    if case == "rotation":
        assert r.reasons.get("ca-rotation", 0) >= PHONES - r.reasons.get("ip-change", 0) - r.reasons.get("drift", 0)


@pytest.mark.postgres
def test_a_ca_rotation_converges_on_postgresql(tmp_path: Path, pg_server: PostgresServer) -> None:
    opts = _options(phones=60)
    url = pg_server.create_database()
    try:
        r = run_case("rotation", tmp_path, url, opts, floor=False).results
    finally:
        name = make_url(url).database
        assert name is not None
        pg_server.drop_database(name)
    _assert_kept_valid(r)
    _assert_converged(r, opts)


@pytest.mark.parametrize(("key_name", "ca_key", "kind"), [("ec-p256", "ec-p256", ec.EllipticCurvePrivateKey),
                                                     ("rsa-2048", None, rsa.RSAPrivateKey)])  # fmt: skip
def test_the_floors_issuance_is_what_a_phone_takes(
    tmp_path: Path, key_name: str, ca_key: str | None, kind: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cryptographic floor does the work a renewal cannot skip — a fresh key of the policy's type, a certificate
    for the phone's IP signed by certmgr's issuing CA, a PKCS#12 the phone opens — and the floor counts it, so the
    ratio to it means something."""
    clock = ManualClock(START - timedelta(days=400))
    rt = open_bench_runtime(tmp_path, None, clock, key=key_name, ca_key=ca_key)
    try:
        clock.set(START)
        issuer = rt.issuer()
        key_type = rt.policies.get("default").key_type
        first = floor_issuance(issuer, key_type, 5, START)
        key, cert, chain = open_pkcs12(first, None)
        assert isinstance(key, kind)
        cert.verify_directly_issued_by(issuer.cert)
        assert chain == [issuer.cert]
        assert key.public_key() == cert.public_key()
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [ip_of(6)]
        assert cert.not_valid_before_utc <= START < cert.not_valid_after_utc
        second_key, _cert, _chain = open_pkcs12(floor_issuance(issuer, key_type, 5, START), None)
        assert second_key.public_key() != key.public_key(), "every renewal's floor generates its own key"
        made: list[int] = []
        real = fleet_year.floor_issuance

        def counted(*args: Any) -> bytes:
            made.append(args[2])
            return real(*args)

        monkeypatch.setattr(fleet_year, "floor_issuance", counted)
        assert fleet_year.floor_crypto(rt, 3, START) > 0
        assert made == [0, 1, 2]
    finally:
        rt.close()


def test_the_floor_adds_the_cryptography_to_every_renewal() -> None:
    floor = Floor(scan_s=1.0, rows_s=2.0, sample=10, crypto_s=3.0)
    assert floor.total(runs=2, renewals=5) == 2 * 1.0 + 5 * (2.0 + 3.0)
    assert floor.storage(runs=2, renewals=5) == 2 * 1.0 + 5 * 2.0


def test_the_statement_census_counts_under_the_running_section_and_stops_when_closed() -> None:
    engine = create_engine("sqlite://")
    census = StatementCensus(engine)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            census.sections.append("work")
            conn.execute(text("INSERT INTO t VALUES (:x)"), [{"x": 1}, {"x": 2}, {"x": 3}])  # executemany: once
            conn.execute(text("SELECT count(*) FROM t")).scalar_one()
            census.sections.pop()
        census.sections.append("work")
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        census.sections.pop()
        assert census.statements == {"other": 1, "work": 3}
        assert census.commits == {"other": 1, "work": 1}
        census.close()
        with engine.begin() as conn:
            conn.execute(text("SELECT 2"))
        assert census.statements == {"other": 1, "work": 3}, "still counting after close()"
    finally:
        engine.dispose()
