"""The API listener's TLS: plain HTTP only on a loopback address, ``api_tls = auto`` issues its certificate from
certmgr's CA through the code path the WPI listener uses (one function), ``files`` takes the configured pair."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certmgr.clock import ManualClock
from certmgr.errors import ConfigError
from certmgr.phones.tls import ensure_wpi_tls
from certmgr.runtime import Runtime, open_runtime
from certmgr.serve import API_TLS_DIR, api_tls_files, build_listeners, is_loopback
from certmgr.serve import Role as ServeRole
from certmgr.settings import Settings
from certmgr.simulator.ports import port_free_on_all
from tests.conftest import T0


@pytest.fixture
def runtime_of(settings: Settings) -> Iterator[Callable[..., Runtime]]:
    opened: list[Runtime] = []

    def make(**changes: object) -> Runtime:
        runtime = open_runtime(settings.model_copy(update=changes), ManualClock(T0), create_ca=True)
        opened.append(runtime)
        return runtime

    yield make
    for runtime in opened:
        runtime.close()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("10.1.2.3", False), ("::", False), ("api.example.net", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_http_is_refused_on_a_non_loopback_address(runtime_of: Callable[..., Runtime]) -> None:
    runtime = runtime_of(api_host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"not a loopback address.*CERTMGR_API_TLS=auto"):
        api_tls_files(runtime)
    with pytest.raises(ConfigError):
        build_listeners(runtime, ServeRole.API)


def test_plain_http_stays_the_default_on_loopback(runtime_of: Callable[..., Runtime]) -> None:
    runtime = runtime_of()
    assert api_tls_files(runtime) is None
    listeners, _ = build_listeners(runtime, ServeRole.API)
    assert listeners[0].url.startswith("http://127.0.0.1:")


def test_auto_issues_from_certmgrs_ca_like_the_wpi_listener(runtime_of: Callable[..., Runtime]) -> None:
    runtime = runtime_of(api_tls="auto", api_host="0.0.0.0", api_public_name="certmgr.example.net")
    cert_file, key_file = api_tls_files(runtime) or (Path(), Path())
    assert cert_file.parent == runtime.settings.data_dir / API_TLS_DIR
    assert key_file.stat().st_mode & 0o777 == 0o600
    leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert leaf.issuer == runtime.issuer().cert.subject
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "certmgr.example.net" in names.get_values_for_type(x509.DNSName)
    assert api_tls_files(runtime) == (cert_file, key_file)  # kept until shortly before it expires
    wpi_cert, _ = ensure_wpi_tls(runtime)  # the same function issued the WPI listener's
    assert x509.load_pem_x509_certificate(wpi_cert.read_bytes()).issuer == leaf.issuer
    listeners, _ = build_listeners(runtime, ServeRole.API)
    assert listeners[0].url.startswith("https://")


def test_files_need_both_and_auto_refuses_them(runtime_of: Callable[..., Runtime], tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="both"):
        api_tls_files(runtime_of(api_tls="files", api_tls_cert=cert))
    with pytest.raises(ConfigError, match="api_tls is off"):
        api_tls_files(runtime_of(api_tls_cert=cert))
    with pytest.raises(ConfigError, match="does not exist"):
        api_tls_files(runtime_of(api_tls="files", api_tls_cert=cert, api_tls_key=tmp_path / "missing"))


def test_the_api_listener_serves_https_with_the_issued_certificate(runtime_of: Callable[..., Runtime]) -> None:
    """A real uvicorn over TLS: the client trusts certmgr's chain and reaches /healthz and the console."""
    import asyncio

    from certmgr.serve import run_forever

    port = port_free_on_all(["127.0.0.1"])
    runtime = runtime_of(api_tls="auto", api_port=port)
    listeners, _ = build_listeners(runtime, ServeRole.API)
    stop = asyncio.Event()
    started = threading.Event()
    loop = asyncio.new_event_loop()

    def serve() -> None:
        loop.run_until_complete(run_forever(listeners, announce=lambda _line: started.set(), stop=stop))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        info = runtime.ca_info()
        chain = runtime.settings.data_dir / "trust.pem"
        chain.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in (*info.chain, info.root_cert) if c))
        context = ssl.create_default_context(cafile=str(chain))
        with httpx.Client(verify=context, timeout=10) as client:
            assert client.get(f"https://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
            page = client.get(f"https://127.0.0.1:{port}/ui/login")
            assert page.status_code == 200
            assert "__Host-certmgr_login=" in page.headers["set-cookie"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
