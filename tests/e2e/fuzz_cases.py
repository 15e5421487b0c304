"""Hostile requests for the fuzz test of both ports (:mod:`tests.e2e.test_fuzz_ports`); holds no tests.

Every generator is deterministic (a fixed seed) and bounded: the same cases, in the same order, on every run.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from certmgr.wpi.codec import encode_workpoint
from certmgr.wpi.messages import Action, Fragment, Item, Reason, ReplyStatus, WorkpointMessage

SEED = 20260909
NS = "http://www.siemens.com/DLS"
XML = "text/xml"
#: Random byte-level mutations of valid messages sent to the WPI port.
MUTATIONS = 1000


@dataclass(frozen=True)
class Req:
    """One request: where it goes and what it carries. ``chunks`` sends the body chunked (no Content-Length);
    header values go out as Latin-1 bytes (so a test can send bytes no client library would)."""

    kind: str
    method: str = "POST"
    path: str = "/DeploymentService/LoginService"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": XML})
    chunks: int = 0
    raw: bool = False  # send the headers verbatim over a plain socket (a Content-Length that lies, say)


def valid_messages(mac: str) -> list[bytes]:
    """Well-formed messages of every reason the phone sends, for a MAC no phone of the test has."""
    items = (
        Item("mac-addr", mac),
        Item("e164", "4989700999"),
        Item("device-type", "OpenStage 60"),
        Item("software-version", "V3 R5.21.0"),
        Item("contact-me-uri", "http://127.9.9.9:8085/contact_dls.html/ContactDLS"),
    )
    msgs = [
        WorkpointMessage("A1B2C3D4E5F60718293A4B5C6D7E8F90", Reason.START_UP, items, max_items=-1),
        WorkpointMessage("1F2E3D4C5B6A79880716253443526170", Reason.SOLICITED, items, max_items=-1),
        WorkpointMessage("00FF", Reason.LOCAL_CHANGES, items),
        WorkpointMessage("00FE", Reason.INVENTORY_CHANGES, items),
        WorkpointMessage(
            "00FD",
            Reason.REPLY_TO,
            (),
            fragment=Fragment.FINAL,
            reply_action=Action.WRITE_ITEMS,
            reply_status=ReplyStatus.ACCEPTED,
        ),
        WorkpointMessage("00FC", Reason.REPLY_TO, items, fragment=Fragment.NEXT, reply_action=Action.READ_ALL_ITEMS),
        WorkpointMessage("00FB", Reason.CLEAN_UP, (Item("cleanup-reason", "password retries exceeded"),)),
        WorkpointMessage("00FA", Reason.STATUS, (Item("file-deployment-status", "ok"),)),
    ]
    return [encode_workpoint(m) for m in msgs]


def _wp(inner: str, decl: str = "", root_attrs: str = f'xmlns="{NS}"') -> bytes:
    return f"{decl}<WorkpointMessage {root_attrs}>{inner}</WorkpointMessage>".encode()


_SOLICITED = '<Message nonce="n"><ReasonForContact>solicited</ReasonForContact></Message>'
ENCODINGS = [
    "x-no-such-codec", "rot13", "rot_13", "base64", "zip", "zlib", "hex", "bz2", "uu", "quopri", "mbcs",
    "utf-16", "UTF-16LE", "utf-16-be", "utf-32", "utf-7", "punycode", "idna", "undefined", "unicode_escape",
    "raw_unicode_escape", "cp037", "utf-8-sig", "ISO-8859-1", "us-ascii", "", " ", "utf-8 ", "UTF8", "x" * 200,
]  # fmt: skip


def phone_cases(mac: str) -> Iterator[Req]:
    """Malformed and hostile input for the WPI port (the phone's ``POST`` of a ``WorkpointMessage``)."""
    rng = random.Random(SEED)
    valid = valid_messages(mac)
    # unknown, non-text and mismatched encodings (issue 9, item 8)
    for enc in ENCODINGS:
        yield Req("encoding", body=_wp(_SOLICITED, f'<?xml version="1.0" encoding="{enc}"?>'))
        yield Req("encoding", body=f'<?xml version="1.0" encoding="{enc}"?>'.encode())
    yield Req("encoding", body=valid[0].decode().encode("utf-16"))  # declares UTF-8, is UTF-16
    yield Req("encoding", body=valid[0].decode().encode("utf-16-le"))
    yield Req("encoding", body=valid[0].decode().encode("utf-32"))
    yield Req("encoding", body=b"\xef\xbb\xbf" + valid[1].decode().encode("utf-16"))  # UTF-8 BOM, UTF-16 body
    yield Req("encoding", body=b"\xff\xfe" + valid[1])  # UTF-16 BOM, UTF-8 body
    yield Req("encoding", body=valid[0], headers={"Content-Type": "text/xml; charset=rot13"})
    yield Req("encoding", body=valid[0], headers={"Content-Type": "text/xml; charset=x-no-such-codec"})
    # DTDs and entities
    lol = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    for text in (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "lol">{lol}]>'
        + _wp(_SOLICITED.replace('"n"', '"&l9;"')).decode(),
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + _wp(_SOLICITED.replace('"n"', '"&x;"')).decode(),
        '<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:1/x">]>' + _wp(_SOLICITED.replace('"n"', '"&x;"')).decode(),
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]>' + _wp(_SOLICITED).decode(),
        '<!DOCTYPE WorkpointMessage SYSTEM "http://127.0.0.1:1/x.dtd">' + _wp(_SOLICITED).decode(),
        "<!DOCTYPE WorkpointMessage [<!ELEMENT WorkpointMessage ANY>]>" + _wp(_SOLICITED).decode(),
        '<!DOCTYPE r [<!ATTLIST Message nonce CDATA "default">]>' + _wp(_SOLICITED).decode(),
        _wp(_SOLICITED.replace('"n"', '"&undefined;"')).decode(),
        _wp(_SOLICITED.replace('"n"', '"&#0;"')).decode(),
        _wp(_SOLICITED.replace('"n"', '"&#xD800;"')).decode(),
        _wp(
            '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>'
            + _SOLICITED
        ).decode(),
        '<?xml-stylesheet href="http://127.0.0.1:1/x.xsl"?>' + _wp(_SOLICITED).decode(),
        _wp(_SOLICITED.replace("solicited", "<![CDATA[solicited]]>")).decode(),
    ):
        yield Req("dtd-entities", body=text.encode())
    # deep nesting and huge attributes / many nodes (all within and around the 64 KiB cap)
    for depth in (100, 1000, 10_000, 30_000):
        yield Req("deep", body=_wp("<Message>" * depth + "</Message>" * depth))
        yield Req("deep", body=_wp('<Message nonce="n"><ItemList>' + "<Item>" * depth + "</Item>" * depth))
    yield Req("deep", body=b"<a>" * 20_000)
    for size in (1000, 30_000, 60_000, 70_000):
        yield Req("huge-attr", body=_wp(_SOLICITED.replace('"n"', '"' + "N" * size + '"')))
        yield Req("huge-attr", body=_wp(_SOLICITED, root_attrs=f'xmlns="{NS}" x="{"y" * size}"'))
    attrs = " ".join(f'a{i}="{i}"' for i in range(5000))
    yield Req(
        "huge-attr", body=_wp(f'<Message nonce="n" {attrs}><ReasonForContact>solicited</ReasonForContact></Message>')
    )
    many = "".join(f'<Item name="i{i}">v</Item>' for i in range(2500))
    yield Req(
        "huge-attr",
        body=_wp(
            f'<Message nonce="n"><ReasonForContact>start-up</ReasonForContact><ItemList>{many}</ItemList></Message>'
        ),
    )
    # invalid UTF-8 in every position
    for bad in (
        b"\xff",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf8\x88\x80\x80\x80",
        b"\xe2\x82",
        b"\x80",
        b"\xf4\x90\x80\x80",
    ):
        yield Req("utf8", body=valid[0].replace(b"OpenStage 60", b"Open" + bad + b"Stage"))
        yield Req("utf8", body=valid[0].replace(b"<Message", b"<Mess" + bad + b"age", 1))
        yield Req("utf8", body=valid[0].replace(b'nonce="', b'nonce="' + bad, 1))
        yield Req("utf8", body=bad + valid[1])
    # truncated documents
    for doc in valid[:3]:
        for cut in sorted({1, 5, 20, 38, 39, 60, len(doc) // 3, len(doc) // 2, len(doc) - 30, len(doc) - 2}):
            yield Req("truncated", body=doc[:cut])
    # wrong namespaces and roots
    for doc in (
        _wp(_SOLICITED, root_attrs=""),
        _wp(_SOLICITED, root_attrs='xmlns="http://mydomain/provisioning"'),
        _wp(_SOLICITED, root_attrs='xmlns:x="http://www.siemens.com/DLS"'),
        _wp(_SOLICITED.replace("<Message", '<Message xmlns="urn:other"')),
        valid[0].replace(b"WorkpointMessage", b"DLSMessage"),
        valid[0].replace(b"WorkpointMessage", b"x:WorkpointMessage"),
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>',
        b"<html><body>hello</body></html>",
    ):
        yield Req("namespace", body=doc)
    # binary garbage
    for n in (1, 2, 3, 16, 100, 1000, 4096, 60_000):
        yield Req("binary", body=bytes(rng.getrandbits(8) for _ in range(n)))
    yield Req("binary", body=gzip.compress(valid[0]), headers={"Content-Type": XML, "Content-Encoding": "gzip"})
    yield Req("binary", body=b"\x00" * 512)
    yield Req("binary", body=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100))  # a TLS hello inside TLS
    # empty bodies
    for body in (b"", b" ", b"\r\n\r\n", b"\xef\xbb\xbf", b'<?xml version="1.0"?>', b"<!-- only a comment -->"):
        yield Req("empty", body=body)
    # wrong content types (and none)
    for ctype in ("application/json", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                  "text/plain", "application/octet-stream", "*/*", "text/xml; charset=utf-16", "\x7f"):  # fmt: skip
        yield Req("content-type", body=valid[rng.randrange(len(valid))], headers={"Content-Type": ctype})
    yield Req("content-type", body=valid[0], headers={})
    yield Req("content-type", body=b'{"WorkpointMessage": {}}', headers={"Content-Type": "application/json"})
    # XML fragments and WPI fragments
    for doc in (
        _wp(_SOLICITED) + _wp(_SOLICITED),
        _SOLICITED.encode(),
        b"solicited",
        b"<Item name='mac-addr'>00:1A:E8:00:00:01</Item>",
        _wp(_SOLICITED.replace("<ReasonForContact>", '<ReasonForContact fragment="next">')),
        _wp(_SOLICITED.replace("<ReasonForContact>", '<ReasonForContact fragment="nxt">')),
        _wp(_SOLICITED.replace('nonce="n"', 'nonce="n" fragment="next" maxItems="0"')),
        _wp(_SOLICITED.replace('nonce="n"', 'nonce="n" maxItems="99999999999999999999"')),
        valid[5],
        valid[5],  # a second "next" fragment with no interaction behind it
    ):
        yield Req("fragment", body=doc)
    # messages the state machine must answer without an interaction; other methods and paths
    for doc in valid:
        yield Req("unsolicited", body=doc, headers={"Content-Type": XML, "Cookie": "JSESSIONID=" + "ab" * 16})
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        yield Req("method", method=method, body=valid[0] if method in ("PUT", "PATCH") else b"")
    for path in (
        "/",
        "/x/../../etc/passwd",
        "/%00",
        "/%ff%fe",
        "/" + "a" * 4000,
        "/DeploymentService/LoginService?x=%ed%a0%80",
    ):
        yield Req("path", path=path, body=valid[1])
    # oversized: declared Content-Length and chunked (no Content-Length)
    yield Req("oversize", body=valid[0] + b" " * (70 * 1024))
    yield Req("oversize", body=b"<" * (200 * 1024), chunks=50)
    for length in ("99999999999", "-1", "1e3", "0x10", " 12", "18446744073709551617"):
        yield Req("oversize", body=valid[0], headers={"Content-Type": XML, "Content-Length": length}, raw=True)
    # random byte-level mutations of valid messages
    for _ in range(MUTATIONS):
        mutated = bytearray(valid[rng.randrange(len(valid))])
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(mutated))
            op = rng.randrange(4)
            if op == 0:
                mutated[pos] = rng.getrandbits(8)
            elif op == 1:
                del mutated[pos]
            elif op == 2:
                mutated[pos:pos] = rng.choice(
                    [b"<", b">", b"&", b'"', b"</Item>", b"<Item name='x'>", b"\x00", b"]]>", b"&#"]
                )
            else:
                start = rng.randrange(len(mutated))
                mutated[pos:pos] = mutated[start : start + rng.randint(1, 200)]
        yield Req("mutation", body=bytes(mutated))


def poll_cases() -> Iterator[Req]:
    """Hostile polls for the DCMP port (``GET /dcmp/contact-me?device-id=…``)."""
    for query in (
        "", "device-id=", "device-id=nonsense", "device-id=" + "A" * 10_000, "device-id=%ED%A0%80",
        "device-id=%00%00", "device-id=00:1A:E8:00:00:01&device-id=00:1A:E8:00:00:02", "device-id=%ff%fe%fd",
        "device-id=00-1a-e8-00-00-01", "device-id=001AE8000001", "device-id=00:1A:E8:00:00:01%0d%0aX-Injected:1",
        "device-id[]=1", "%=%", "device-id=00:1A:E8:00:00:01;" + "x" * 100,
    ):  # fmt: skip
        yield Req("poll", method="GET", path=f"/dcmp/contact-me?{query}" if query else "/dcmp/contact-me", headers={})
    for method in ("POST", "PUT", "DELETE"):
        yield Req("poll", method=method, path="/dcmp/contact-me?device-id=00:1A:E8:00:00:01", body=b"x", headers={})
    for path in ("/", "/dcmp", "/dcmp/contact-me/../../x", "/" + "b" * 4000):
        yield Req("poll", method="GET", path=path, headers={})


def api_cases(ids: dict[str, int]) -> Iterator[Req]:
    """The API cases of issue 9 item 8 and their relatives, beside what schemathesis generates."""
    json_ct = {"Content-Type": "application/json"}
    toml_ct = {"Content-Type": "application/toml"}
    cert, dev, dep = ids["certificate"], ids["device"], ids["deployment"]
    for body in (b'{"mac": "\\ud800", "ip": "10.9.9.9"}', b'{"mac": "00:1A:E8:09:09:09", "ip": "\\udfff"}'):
        yield Req("surrogate", path="/api/v1/devices", body=body, headers=json_ct)
    yield Req("surrogate", path=f"/api/v1/certificates/{cert}/revoke", body=b'{"reason": "\\ud800"}', headers=json_ct)
    yield Req("surrogate", path=f"/api/v1/devices/{dev}/approve", body=b'{"x": "\\ud800"}', headers=json_ct)
    for doc in (b"a = " + b"[" * 3000 + b"]" * 3000, b"a = " + b"{b = " * 3000 + b"}" * 3000, b"[" * 3000):
        yield Req("nested", path="/api/v1/policies/validate", body=doc, headers=toml_ct)
    for depth in (1000, 100_000):
        yield Req("nested", path="/api/v1/devices", body=b"[" * depth + b"]" * depth, headers=json_ct)
        yield Req("nested", path="/api/v1/devices", body=b'{"a":' * depth + b"1" + b"}" * depth, headers=json_ct)
    for ctype in ("text/plain", "application/octet-stream", "application/x-www-form-urlencoded"):
        yield Req("undecodable", path="/api/v1/devices", body=b"\xff\xfe\xed\xa0\x80", headers={"Content-Type": ctype})
    yield Req("undecodable", path="/api/v1/devices", body=b'{"mac": "\xff\xfe"}', headers=json_ct)
    yield Req("undecodable", path="/api/v1/policies/validate", body=b"name = '\xed\xa0\x80'", headers=toml_ct)
    yield Req("oversize", path="/api/v1/devices", body=b'{"mac": "' + b"x" * (2 * 1024 * 1024) + b'"}', headers=json_ct)
    yield Req("oversize", path="/api/v1/devices", body=b"[" + b"1," * 600_000 + b"1]", headers=json_ct, chunks=40)
    yield Req("oversize", path="/api/v1/policies/validate", body=b"#" * (1024 * 1024), headers=toml_ct)
    for path in (
        f"/api/v1/devices/{2**63}", "/api/v1/devices/-1", "/api/v1/devices/%ED%A0%80", "/api/v1/devices?limit=1e309",
        "/api/v1/devices?cursor=%00", "/api/v1/audit/events?since=%ED%A0%80", f"/api/v1/deployments/{dep}?x=%ff",
        "/api/v1/reports/%00", "/api/v1/reports/inventory?format=%ED%A0%80",
        "/api/v1/certificates/1/pem?" + "a=1&" * 2000,
    ):  # fmt: skip
        yield Req("query", method="GET", path=path, headers={})
    for auth in ("Bearer \xff\xfe", "Bearer " + "A" * 10_000,
                 "Basic Zm9vOmJhcg==", "Bearer", "bearer cmt_" + "x" * 43, "Bearer cmt_\x7f"):  # fmt: skip
        yield Req("auth", method="GET", path="/api/v1/devices", headers={"Authorization": auth})
