"""The contact-me client (D4): POST ``ContactMe=true&dls_ip_addr=…&dls_ip_port=…`` to a phone (httpx)."""

from __future__ import annotations

import ipaddress
import socket

import httpx

from certmgr.errors import DeploymentError, ProtocolError
from certmgr.wpi.contactme import CONTACT_ME_CONTENT_TYPE, ContactMeTarget, build_contact_me


def local_address_for(host: str, port: int) -> str:
    """The local address this host uses to reach ``host`` (a UDP ``connect()`` sends no packet).

    Raises:
        DeploymentError: if no route exists or the result is unspecified (0.0.0.0 / ::).
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            addr = str(s.getsockname()[0])
    except OSError as exc:
        raise DeploymentError(f"no route to {host}: {exc.strerror or exc}") from exc
    if ipaddress.ip_address(addr).is_unspecified:
        raise DeploymentError(f"no usable local address towards {host}")
    return addr


async def send_contact_me(
    client: httpx.AsyncClient, target: ContactMeTarget, dls_ip_addr: str | None, dls_ip_port: int
) -> tuple[int, str]:
    """POST contact-me to ``target`` — already validated by
    :func:`certmgr.inventory.addresses.contact_me_target` (the phone's own address or a trusted proxy, the
    contact-me path); returns ``(HTTP status, dls_ip_addr used)``.

    ``dls_ip_addr`` ``None`` means: the local address towards the phone. Any 2xx counts as success (D4).
    Redirects are not followed.

    Raises:
        DeploymentError: for a network error or a non-2xx answer.
    """
    addr = dls_ip_addr or local_address_for(target.host, target.port)
    try:
        body = build_contact_me(addr, dls_ip_port)
    except ProtocolError as exc:
        raise DeploymentError(f"cannot build contact-me: {exc.message}") from exc
    try:
        response = await client.post(
            target.url, content=body, headers={"Content-Type": CONTACT_ME_CONTENT_TYPE}, follow_redirects=False
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # Nothing answered on the phone's contact-me port: the phone is off, unplugged or filtered.
        raise DeploymentError(f"contact-me to {target.host} failed: phone unreachable ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise DeploymentError(f"contact-me to {target.host} failed: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise DeploymentError(f"contact-me to {target.host} answered {response.status_code}")
    return response.status_code, addr
