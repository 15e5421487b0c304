"""SimPhone against the fake DLS over real loopback sockets: deployment, verification and every fault."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes

from certmgr.pki.types import Pkcs12Profile
from certmgr.simulator.faults import parse_fault_spec
from certmgr.simulator.phone import PhoneConfig, SimPhone, alternate_ip
from certmgr.wpi.certinfo import ExpectedCert, InfoVerdict, parse_certificate_info
from certmgr.wpi.certjudge import judge_certificate_info
from certmgr.wpi.contactme import CONTACT_ME_PATH, build_contact_me
from certmgr.wpi.messages import Action, DLSMessage, Fragment, Item, Reason, ReplyStatus, WorkpointMessage
from tests.integration.test_simulator_fakedls import (
    PASSWORD,
    FakeDLS,
    Job,
    Material,
    fresh_net,
    make_material,
    probe_sha256,
    run,
)

NONCE = re.compile(r"^[0-9A-F]{32}$")


@pytest.fixture(scope="module")
def material() -> Material:
    return make_material()


def _config(net: int, dls: FakeDLS, faults: str = "", host: int = 10, **kw: Any) -> PhoneConfig:
    defaults: dict[str, Any] = {
        "contact_gap": 0.0,
        "request_timeout": 5.0,
        "interaction_timeout": 20.0,
        "restart_delay": 0.05,
        "pkcs12_passwords": (PASSWORD,),
    }
    defaults.update(kw)
    return PhoneConfig(
        mac=f"00:1A:E8:{net:02X}:00:{host:02X}",
        ip=f"127.0.{net}.{host}",
        e164=f"4989{net:03d}{host:03d}",
        dls_url=dls.url,
        faults=parse_fault_spec(faults),
        **defaults,
    )


@asynccontextmanager
async def _setup(faults: str = "", **kw: Any) -> AsyncIterator[tuple[FakeDLS, SimPhone]]:
    net = fresh_net()
    async with FakeDLS(f"127.0.{net}.1") as dls:
        phone = SimPhone(_config(net, dls, faults, **kw))
        await phone.start()
        try:
            yield dls, phone
        finally:
            await phone.stop()
            assert phone.idle


async def _contact_me_until_closed(phone: SimPhone, dls: FakeDLS) -> int:
    """POST a contact-me to ``phone`` over a raw connection and read until the phone closes it; the status."""
    host, port = phone.contact_me_uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    body = build_contact_me(dls.host, dls.port)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    try:
        head = (
            f"POST {CONTACT_ME_PATH} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # until EOF: the phone has finished the request
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


def _events(dls: FakeDLS, mac: str) -> list[str]:
    return [e for m, e in dls.events if m == mac]


async def _deploy(dls: FakeDLS, phone: SimPhone, p12: bytes, until: Callable[[list[str]], bool] | None = None) -> None:
    mac = phone.config.mac
    await dls.wait_for(lambda: "start-up" in _events(dls, mac))
    dls.jobs[mac] = Job(p12)
    resp = await dls.contact_me(phone.contact_me_uri)
    assert resp.status_code == 204
    assert resp.headers["server"] == "DlsClient"
    done = until or (lambda ev: any(e in ev for e in ("info", "failed", "item-failed")))
    assert await dls.wait_for(lambda: done(_events(dls, mac)))
    assert await phone.wait_idle(10)


@pytest.mark.parametrize("profile", list(Pkcs12Profile))
def test_deploy_swaps_certificate_and_reports_info(material: Material, profile: Pkcs12Profile) -> None:
    async def body() -> None:
        async with _setup() as (dls, phone):
            factory = await probe_sha256(phone.ip)
            assert factory == phone.stats.current_cert_sha256
            assert phone.stats.factory_cert
            await _deploy(dls, phone, material.pkcs12(profile))
            mac = phone.config.mac
            assert _events(dls, mac) == ["start-up", "accepted", "info"]
            # the WBM serves the new leaf to new connections; the listener stayed up
            assert await probe_sha256(phone.ip) == material.sha256
            assert phone.stats.current_cert_sha256 == material.sha256
            assert not phone.stats.factory_cert
            assert phone.stats.writes_accepted == 1
            # the info identifies the deployed certificate (D6)
            info = parse_certificate_info(dls.infos[mac])
            assert judge_certificate_info(info, ExpectedCert.from_certificate(material.cert)) is InfoVerdict.VERIFIED
            # D10: the TCP peer the service sees is the phone's own address
            assert {s.peer for s in dls.seen} == {phone.ip}
            assert phone.stats.last_error is None

    run(body())


def test_messages_nonces_cookies_and_items(material: Material) -> None:
    async def body() -> None:
        async with _setup() as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))
            msgs = [s.msg for s in dls.seen]
            assert [m.reason for m in msgs] == [Reason.START_UP, Reason.SOLICITED, Reason.REPLY_TO, Reason.REPLY_TO]
            assert all(NONCE.match(m.nonce) for m in msgs)
            assert len({m.nonce for m in msgs}) == len(msgs)
            assert all(m.max_items == -1 for m in msgs)
            assert all(m.fragment is Fragment.FINAL for m in msgs if m.reason is Reason.REPLY_TO)
            first = msgs[0]
            assert first.value("contact-me-uri") == f"http://{phone.ip}:8085/contact_dls.html/ContactDLS"
            assert first.mac == phone.config.mac
            assert first.value("e164") == phone.config.e164
            assert first.value("device-type") == "OpenStage 60"
            assert first.value("software-version") == "V3 R5.21.0"
            assert first.value("configuration-changed-flag") == "false"
            write_reply = msgs[2]
            assert write_reply.reply_action is Action.WRITE_ITEMS
            assert write_reply.reply_status is ReplyStatus.ACCEPTED
            assert write_reply.items == ()
            # a new interaction starts without a cookie; within one, the phone returns the service's cookie
            cookies = [s.cookie for s in dls.seen]
            assert cookies[0] is None
            assert cookies[1] is None
            assert cookies[2] is not None
            assert cookies[2] == cookies[3]
            assert {s.path for s in dls.seen} == {"/DeploymentService/LoginService"}

    run(body())


def test_contact_me_get_and_callback_target(material: Material) -> None:
    """GET with a query string works (§3.3) and dls_ip_addr/port redirect the call-back."""

    async def body() -> None:
        net = fresh_net()
        async with FakeDLS(f"127.0.{net}.1") as home, FakeDLS(f"127.0.{net}.2", 18444) as other:
            phone = SimPhone(_config(net, home))
            await phone.start()
            try:
                assert await home.wait_for(lambda: len(home.seen) == 1)
                resp = await home.contact_me(phone.contact_me_uri, method="GET", dls=(other.host, other.port))
                assert resp.status_code == 204
                assert await other.wait_for(lambda: len(other.seen) == 1)
                assert other.seen[0].msg.reason is Reason.SOLICITED
                assert other.seen[0].peer == phone.ip
                assert len(home.seen) == 1
                # WBM variant of the trigger over HTTPS on port 443
                async with httpx.AsyncClient(verify=False, timeout=5) as client:  # noqa: S501 - phone's own cert
                    resp = await client.get(f"https://{phone.ip}/contact_dls.html/ContactDLS?ContactMe=true")
                assert resp.status_code == 204
                assert await home.wait_for(lambda: len(home.seen) == 2)
                # the WBM page itself
                async with httpx.AsyncClient(verify=False, timeout=5) as client:  # noqa: S501
                    page = await client.get(f"https://{phone.ip}/")
                assert page.status_code == 200
                assert "OpenStage 60" in page.text
            finally:
                await phone.stop()

    run(body())


def test_contact_gap_ignores_second_contact_me() -> None:
    async def body() -> None:
        async with _setup(contact_gap=30.0) as (dls, phone):
            assert await dls.wait_for(lambda: len(dls.seen) == 1)
            assert (await dls.contact_me(phone.contact_me_uri)).status_code == 204
            assert await dls.wait_for(lambda: len(dls.seen) == 2)
            # Inside the gap: answered 204 and ignored. The phone closes the connection only after it has
            # scheduled any call-back, so once the connection is closed and the phone is idle, no call is coming.
            assert await _contact_me_until_closed(phone, dls) == 204
            assert await phone.wait_idle(5)
            assert len(dls.seen) == 2
            assert phone.stats.contact_me_received == 2
            assert phone.stats.contact_me_ignored_gap == 1

    run(body())


def test_bad_contact_me_is_400() -> None:
    async def body() -> None:
        async with _setup() as (_dls, phone), httpx.AsyncClient(timeout=5) as client:
            resp = await client.post(phone.contact_me_uri, content=b"Nope=1")
            assert resp.status_code == 400
            resp = await client.get(f"http://{phone.ip}:8085/other")
            assert resp.status_code == 404

    run(body())


def test_password_delivered_in_write_items(material: Material) -> None:
    async def body() -> None:
        async with _setup(pkcs12_passwords=()) as (dls, phone):
            mac = phone.config.mac
            await dls.wait_for(lambda: len(dls.seen) == 1)
            dls.jobs[mac] = Job(
                material.pkcs12(Pkcs12Profile.MODERN), ("wbm-server-certificate-password", PASSWORD.decode())
            )
            await dls.contact_me(phone.contact_me_uri)
            assert await dls.wait_for(lambda: "info" in _events(dls, mac))
            assert await probe_sha256(phone.ip) == material.sha256

    run(body())


def test_unknown_password_fails_at_item_level(material: Material) -> None:
    async def body() -> None:
        async with _setup(pkcs12_passwords=(b"something-else",)) as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.LEGACY))
            reply = dls.seen[-1].msg
            assert reply.reply_status is ReplyStatus.ACCEPTED
            assert reply.items == (Item("wbm-server-certificate", status="failed"),)
            assert phone.stats.writes_rejected == 1
            assert phone.stats.factory_cert
            assert await probe_sha256(phone.ip) == phone.stats.current_cert_sha256
            assert "password" in (phone.stats.last_error or "")

    run(body())


def test_busy_first_write_then_solicited_callback(material: Material) -> None:
    async def body() -> None:
        async with _setup("busy-first-write") as (dls, phone):
            mac = phone.config.mac
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN), until=lambda ev: "info" in ev)
            assert _events(dls, mac) == ["start-up", "busy", "accepted", "info"]
            busy_reply = next(s for s in dls.seen if s.msg.reply_status is ReplyStatus.BUSY)
            assert busy_reply.msg.reply_action is Action.WRITE_ITEMS
            reasons = [s.msg.reason for s in dls.seen]
            assert reasons.count(Reason.SOLICITED) == 2
            assert phone.stats.busy_replies == 1
            assert phone.stats.writes_accepted == 1
            assert await probe_sha256(phone.ip) == material.sha256

    run(body())


def test_failed_write_is_message_level(material: Material) -> None:
    async def body() -> None:
        async with _setup("failed-write") as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))
            assert _events(dls, phone.config.mac)[-1] == "failed"
            assert dls.seen[-1].msg.reply_status is ReplyStatus.FAILED
            assert phone.stats.factory_cert
            assert phone.stats.writes_rejected == 1

    run(body())


def test_reject_legacy_only_refuses_pbes1(material: Material) -> None:
    async def body() -> None:
        async with _setup("reject-legacy") as (dls, phone):
            mac = phone.config.mac
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.LEGACY))
            assert _events(dls, mac)[-1] == "item-failed"
            assert dls.seen[-1].msg.items == (Item("wbm-server-certificate", status="failed"),)
            assert "legacy" in (phone.stats.last_error or "")
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.MODERN), until=lambda ev: "info" in ev)
            assert await probe_sha256(phone.ip) == material.sha256

    run(body())


def test_wrong_info_mismatches_but_probe_matches(material: Material) -> None:
    async def body() -> None:
        async with _setup("wrong-info") as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))
            info = parse_certificate_info(dls.infos[phone.config.mac])
            expected = ExpectedCert.from_certificate(material.cert)
            assert judge_certificate_info(info, expected) is InfoVerdict.MISMATCH
            assert await probe_sha256(phone.ip) == material.sha256

    run(body())


def test_unparseable_info_is_undecided(material: Material) -> None:
    async def body() -> None:
        async with _setup("unparseable-info") as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))
            info = parse_certificate_info(dls.infos[phone.config.mac])
            assert info.is_empty
            expected = ExpectedCert.from_certificate(material.cert)
            assert judge_certificate_info(info, expected) is InfoVerdict.UNDECIDED

    run(body())


def test_slow_delays_204_and_replies(material: Material) -> None:
    async def body() -> None:
        async with _setup("slow=0.3") as (dls, phone):
            await dls.wait_for(lambda: len(dls.seen) == 1)
            dls.jobs[phone.config.mac] = Job(material.pkcs12(Pkcs12Profile.PLAIN))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            resp = await dls.contact_me(phone.contact_me_uri)
            assert resp.status_code == 204
            assert loop.time() - t0 >= 0.3
            assert await dls.wait_for(lambda: "info" in _events(dls, phone.config.mac))
            # two reply-to messages, each delayed
            assert loop.time() - t0 >= 0.9

    run(body())


def test_fragments(material: Material) -> None:
    async def body() -> None:
        async with _setup("fragments") as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN), until=lambda ev: "info" in ev)
            replies = [s.msg for s in dls.seen if s.msg.reason is Reason.REPLY_TO]
            assert [r.fragment for r in replies] == [Fragment.NEXT, Fragment.FINAL] * 2
            assert Action.GET_NEXT_FRAGMENT in [m.action for m in dls.sent]
            info = parse_certificate_info(dls.infos[phone.config.mac])
            assert judge_certificate_info(info, ExpectedCert.from_certificate(material.cert)) is InfoVerdict.VERIFIED

    run(body())


def test_max_items_1() -> None:
    async def body() -> None:
        async with _setup("max-items-1") as (dls, phone):
            assert await dls.wait_for(lambda: len(dls.seen) == 1)
            assert dls.seen[0].msg.max_items == 1
            assert phone.stats.last_error is None

    run(body())


def test_ip_change_moves_and_reports(material: Material) -> None:
    async def body() -> None:
        async with _setup("ip-change") as (dls, phone):
            old_ip, old_uri = phone.ip, phone.contact_me_uri
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))
            assert await dls.wait_for(lambda: "local-changes" in _events(dls, phone.config.mac))
            new_ip = alternate_ip(old_ip)
            assert phone.ip == new_ip
            last = dls.seen[-1]
            assert last.peer == new_ip
            assert last.msg.reason is Reason.LOCAL_CHANGES
            assert last.msg.value("contact-me-uri") == f"http://{new_ip}:8085/contact_dls.html/ContactDLS"
            assert last.msg.value("configuration-changed-flag") == "true"
            assert await probe_sha256(new_ip) == material.sha256
            with pytest.raises(httpx.ConnectError):
                await dls.contact_me(old_uri)
            assert phone.stats.ip == new_ip

    run(body())


def test_factory_reset_after_first_certificate(material: Material) -> None:
    async def body() -> None:
        async with _setup("factory-reset") as (dls, phone):
            mac = phone.config.mac
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN), until=lambda ev: "info" in ev)
            assert await dls.wait_for(lambda: _events(dls, mac).count("start-up") == 2)
            assert await phone.wait_idle(5)
            assert phone.stats.factory_cert
            assert await probe_sha256(phone.ip) == phone.factory_certificate.fingerprint(hashes.SHA256()).hex()

    run(body())


def test_offline_phone_listens_nowhere() -> None:
    async def body() -> None:
        async with _setup("offline") as (dls, phone):
            assert phone.idle  # nothing running or scheduled: no start-up is on its way
            assert dls.seen == []
            with pytest.raises(httpx.ConnectError):
                await dls.contact_me(phone.contact_me_uri)
            with pytest.raises(ConnectionRefusedError):
                await probe_sha256(phone.ip, timeout=2)

    run(body())


def test_restart_and_factory_restart(material: Material) -> None:
    async def body() -> None:
        async with _setup() as (dls, phone):
            mac = phone.config.mac
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))
            assert not phone.stats.factory_cert

            def restart(items: tuple[Item, ...]) -> Callable[[WorkpointMessage, str], DLSMessage | None]:
                def hook(msg: WorkpointMessage, _mac: str) -> DLSMessage | None:
                    if msg.reason is Reason.SOLICITED:
                        return DLSMessage(nonce=msg.nonce, action=Action.RESTART, items=items)
                    return None

                return hook

            dls.hook = restart(())
            await dls.contact_me(phone.contact_me_uri)
            assert await dls.wait_for(lambda: _events(dls, mac).count("start-up") == 2)
            assert not phone.stats.factory_cert  # a plain restart keeps the certificate
            dls.hook = restart((Item("restart-type", "FactoryReset"), Item("restart-password", "124816")))
            await dls.contact_me(phone.contact_me_uri)
            assert await dls.wait_for(lambda: _events(dls, mac).count("start-up") == 3)
            assert await phone.wait_idle(5)
            assert phone.stats.factory_cert

    run(body())


def test_read_all_items_excludes_certificates(material: Material) -> None:
    async def body() -> None:
        async with _setup() as (dls, phone):
            await _deploy(dls, phone, material.pkcs12(Pkcs12Profile.PLAIN))

            def hook(msg: WorkpointMessage, _mac: str) -> DLSMessage | None:
                if msg.reason is Reason.SOLICITED:
                    return DLSMessage(nonce=msg.nonce, action=Action.READ_ALL_ITEMS)
                return None

            dls.hook = hook
            await dls.contact_me(phone.contact_me_uri)
            mac = phone.config.mac
            assert await dls.wait_for(lambda: mac in dls.read_all)
            names = {it.name for it in dls.read_all[mac]}
            assert {"mac-addr", "e164", "device-type", "contact-me-uri"} <= names
            assert not any("certificate" in n for n in names)

    run(body())


def test_invalid_xml_and_wrong_nonce_end_the_interaction() -> None:
    async def body() -> None:
        async with _setup() as (dls, phone):
            assert await dls.wait_for(lambda: len(dls.seen) == 1)

            def wrong_nonce(msg: WorkpointMessage, _mac: str) -> DLSMessage | None:
                if msg.reason is Reason.SOLICITED:
                    return DLSMessage(nonce="0" * 32, action=Action.READ_ALL_ITEMS)
                return None

            dls.hook = wrong_nonce
            await dls.contact_me(phone.contact_me_uri)
            assert await dls.wait_for(lambda: any(s.msg.reason is Reason.CLEAN_UP for s in dls.seen))
            assert await phone.wait_idle(5)
            assert "nonce" in (phone.stats.last_error or "")
            cleanup = next(s.msg for s in dls.seen if s.msg.reason is Reason.CLEAN_UP)
            assert cleanup.value("cleanup-reason") == "nonce mismatch"

    run(body())


def test_stop_closes_every_listener() -> None:
    async def body() -> None:
        before = asyncio.all_tasks()
        net = fresh_net()
        async with FakeDLS(f"127.0.{net}.1") as dls:
            phone = SimPhone(_config(net, dls))
            await phone.start(wait_startup=True)
            assert len(dls.seen) == 1
            await phone.stop()
            await phone.stop()  # idempotent
            assert phone.idle
            for port in (8085, 443):
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.wait_for(asyncio.open_connection(phone.ip, port), 2)
            # a second phone can take over the same address at once
            again = SimPhone(_config(net, dls))
            await again.start(send_startup=False)
            await again.stop()
        finishing = asyncio.all_tasks() - before
        if finishing:  # the fake DLS's connection handlers end on their own; a leaked task would not
            await asyncio.wait(finishing, timeout=5)
        assert asyncio.all_tasks() - before == set()

    run(body())


def test_dls_down_is_recorded_not_raised() -> None:
    async def body() -> None:
        net = fresh_net()
        cfg = PhoneConfig(
            mac="00:1A:E8:AA:00:01",
            ip=f"127.0.{net}.10",
            e164="1",
            dls_url=f"https://127.0.{net}.1:18443/DeploymentService/LoginService",
            request_timeout=2,
        )
        phone = SimPhone(cfg)
        await phone.start(wait_startup=True)
        try:
            assert phone.stats.interactions == 1
            assert "HTTP error" in (phone.stats.last_error or "")
        finally:
            await phone.stop()

    run(body())


def test_tls_handshake_garbage_does_not_break_wbm() -> None:
    async def body() -> None:
        async with _setup() as (_dls, phone):
            reader, writer = await asyncio.open_connection(phone.ip, 443)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on the TLS port
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert await probe_sha256(phone.ip) == phone.stats.current_cert_sha256

    run(body())
