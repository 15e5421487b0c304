"""Benchmark: certificates issued per second (issue + PKCS#12 + store) against a floor measured in the same run.

Floor: bare `cryptography` — generate the key, build and sign a certificate with the same extensions, serialise
a PKCS#12 — with no policy rendering, no key sealing and no database. Ours: certmgr's issuance path — policy
templates, key + leaf, PKCS#12 (plain), key sealed with the vault, certificate row + audit event stored in the
database. Ratio = ours / floor (1.0 = no overhead). Then the same on all cores with a process pool.

    .venv/bin/python bench/issue.py [--count N] [--batch B] [--procs P]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import stop_cleanly_on_signals
from certmgr.clock import SystemClock
from certmgr.db.engine import session_scope
from certmgr.db.models import IssueReason
from certmgr.identity import DeviceIdentity
from certmgr.issuance.service import BuiltCertificate, build_certificate, record_certificates
from certmgr.pki.store import Issuer
from certmgr.pki.types import KeyType, Pkcs12Profile
from certmgr.policy import Policy
from certmgr.runtime import Runtime, open_runtime
from certmgr.settings import Settings

REPO = Path(__file__).resolve().parent.parent
KEY_TYPES = (KeyType.RSA_2048, KeyType.EC_P256)


def _identity(n: int) -> DeviceIdentity:
    return DeviceIdentity.create(
        mac=f"00:1A:E8:{(n >> 16) & 0xFF:02X}:{(n >> 8) & 0xFF:02X}:{n & 0xFF:02X}",
        ips=[str(IPv4Address(0x0A000000 + n))],
    )


# --- floor ------------------------------------------------------------------------------------------------------
def floor_one(key_type: KeyType, issuer: Issuer, n: int) -> int:
    """Bare cryptography: keygen + sign a leaf with the same extensions + PKCS#12 (plain). Returns its size."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type is KeyType.RSA_2048:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        usage = dict(digital_signature=True, key_encipherment=True)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = dict(digital_signature=True, key_encipherment=False)
    now = datetime.now(UTC)
    ip = IPv4Address(0x0A000000 + n)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(ip))]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip)]), critical=False)
        .add_extension(
            x509.KeyUsage(
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )
    p12 = pkcs12.serialize_key_and_certificates(b"wbm", key, cert, list(issuer.chain), serialization.NoEncryption())
    return len(p12)


# --- ours -------------------------------------------------------------------------------------------------------
def ours_build(policy: Policy, issuer: Issuer, n: int) -> tuple[BuiltCertificate, bytes]:
    built = build_certificate(_identity(n), policy, issuer, datetime.now(UTC))
    return built, built.pkcs12(Pkcs12Profile.PLAIN, None)


def ours_store(runtime: Runtime, built: list[BuiltCertificate]) -> None:
    now = runtime.clock.now()
    with session_scope(runtime.engine) as session:
        record_certificates(session, built, runtime.vault, now=now, reason=IssueReason.ENROLLMENT, actor="bench")


# --- process-pool workers ---------------------------------------------------------------------------------------
_W: dict[str, object] = {}


def _worker_init(data_dir: str, key_type: str) -> None:
    settings = _settings(Path(data_dir))
    rt = open_runtime(settings, migrate=False)
    _W["issuer"] = rt.issuer()
    _W["policy"] = rt.policies.get("default").model_copy(update={"key_type": KeyType(key_type)})
    rt.close()


def _worker_floor(args: tuple[str, int]) -> int:
    issuer = _W["issuer"]
    assert isinstance(issuer, Issuer)
    return floor_one(KeyType(args[0]), issuer, args[1])


def _worker_ours(n: int) -> tuple[int, bytes, bytes]:
    """Build in the worker; keys and certificates do not pickle, so they travel as DER (process memory only)."""
    issuer, policy = _W["issuer"], _W["policy"]
    assert isinstance(issuer, Issuer)
    assert isinstance(policy, Policy)
    built, _ = ours_build(policy, issuer, n)
    key_der = built.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return n, built.cert.public_bytes(serialization.Encoding.DER), key_der


def _rebuild(policy: Policy, issuer: Issuer, item: tuple[int, bytes, bytes]) -> BuiltCertificate:
    n, cert_der, key_der = item
    key = serialization.load_der_private_key(key_der, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return BuiltCertificate(
        _identity(n), policy, key, x509.load_der_x509_certificate(cert_der), issuer.chain, issuer.root
    )


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        policy_dir=REPO / "policies",
        ca_config_dir=REPO / "ca",
        ca_passphrase="bench-passphrase",
        master_key="bench-master-key-0123456789abcdef0123456789",
    )


@dataclass
class Result:
    label: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def timed(label: str, count: int, fn: Callable[[], None]) -> Result:
    t0 = time.perf_counter()
    fn()
    return Result(label, count, time.perf_counter() - t0)


def main() -> None:
    stop_cleanly_on_signals()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="certificates per key type and mode")
    parser.add_argument("--batch", type=int, default=50, help="certificates stored per transaction")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certmgr-bench-") as tmp:
        settings = _settings(Path(tmp) / "var")
        runtime = open_runtime(settings, SystemClock(), create_ca=True)
        issuer = runtime.issuer()
        base_policy = runtime.policies.get("default")
        print(
            f"certmgr issuance benchmark: {args.count} certificates per row, batch {args.batch}, "
            f"database {settings.effective_database_url.split('///')[0]}, {os.cpu_count()} cores"
        )
        print(f"{'key type':10} {'mode':8} {'floor/s':>9} {'ours/s':>9} {'ratio':>7}")
        serial_base = 0
        for key_type in KEY_TYPES:
            policy = base_policy.model_copy(update={"key_type": key_type})
            # warm-up
            floor_one(key_type, issuer, 0)
            ours_build(policy, issuer, 0)

            def run_floor(kt: KeyType = key_type) -> None:
                for i in range(args.count):
                    floor_one(kt, issuer, i)

            floor = timed("floor", args.count, run_floor)

            def run_ours(kt: KeyType = key_type, base: int = serial_base, pol: Policy = policy) -> None:
                pending: list[BuiltCertificate] = []
                for i in range(args.count):
                    built, _ = ours_build(pol, issuer, base + i)
                    pending.append(built)
                    if len(pending) >= args.batch:
                        ours_store(runtime, pending)
                        pending = []
                if pending:
                    ours_store(runtime, pending)

            ours = timed("ours", args.count, run_ours)
            serial_base += args.count
            print(f"{key_type.value:10} {'1 core':8} {floor.rate:9.1f} {ours.rate:9.1f} {ours.rate / floor.rate:7.3f}")

            with ProcessPoolExecutor(
                args.procs, initializer=_worker_init, initargs=(str(settings.data_dir), key_type.value)
            ) as pool:
                list(pool.map(_worker_floor, [(key_type.value, i) for i in range(args.procs * 2)]))  # warm-up

                def run_pool_floor(kt: KeyType = key_type) -> None:
                    list(pool.map(_worker_floor, [(kt.value, i) for i in range(args.count)], chunksize=8))

                pfloor = timed("floor-pool", args.count, run_pool_floor)

                def run_pool(base: int = serial_base, pol: Policy = policy) -> None:
                    pending: list[BuiltCertificate] = []
                    for item in pool.map(_worker_ours, range(base, base + args.count), chunksize=8):
                        pending.append(_rebuild(pol, issuer, item))
                        if len(pending) >= args.batch:
                            ours_store(runtime, pending)
                            pending = []
                    if pending:
                        ours_store(runtime, pending)

                pours = timed("ours-pool", args.count, run_pool)
                serial_base += args.count
            print(
                f"{key_type.value:10} {f'{args.procs} procs':8} {pfloor.rate:9.1f} {pours.rate:9.1f} "
                f"{pours.rate / pfloor.rate:7.3f}"
            )
        runtime.close()


if __name__ == "__main__":
    main()
