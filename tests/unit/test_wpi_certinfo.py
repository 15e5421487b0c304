"""Lenient parsing of wbm-server-certificate-info and the D6 verdict."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.errors import InputError
from certmgr.wpi.certinfo import CertInfo, ExpectedCert, InfoVerdict, TimeAccuracy, parse_certificate_info
from certmgr.wpi.certjudge import dn_components, format_certificate_info, judge_certificate_info

SERIAL = 0x3AF1_0C22_9D4E_77A1_5B60_0F13_2C44_9E01
SERIAL_HEX = f"{SERIAL:X}"
SERIAL_COLON = ":".join(SERIAL_HEX[i : i + 2] for i in range(0, len(SERIAL_HEX), 2))
SHA256 = hashlib.sha256(b"cert").hexdigest()
SHA1 = hashlib.sha1(b"cert").hexdigest()  # noqa: S324 - a fingerprint, not security
SHA256_COLON = ":".join(SHA256[i : i + 2] for i in range(0, 64, 2)).upper()
SHA1_COLON = ":".join(SHA1[i : i + 2] for i in range(0, 40, 2)).upper()
SUBJECT = "CN=phone-001ae8123456,O=Example AG,C=DE"
ISSUER = "CN=Example Phone CA,O=Example AG,C=DE"
NOT_BEFORE = datetime(2026, 1, 2, 15, 4, 5, tzinfo=UTC)
NOT_AFTER = datetime(2027, 1, 2, 15, 4, 5, tzinfo=UTC)
EXPECTED = ExpectedCert(serial=SERIAL, sha256=SHA256, sha1=SHA1, subject=SUBJECT, not_after=NOT_AFTER)


def _fmt() -> str:
    return format_certificate_info(
        serial=SERIAL,
        subject=SUBJECT,
        issuer=ISSUER,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        sha1=SHA1,
        sha256=SHA256,
    )


def test_simulator_format_exact_text() -> None:
    assert _fmt() == (
        f"Serial Number: {SERIAL_COLON}\n"
        f"Subject: {SUBJECT}\n"
        f"Issuer: {ISSUER}\n"
        "Valid From: Jan  2 15:04:05 2026 GMT\n"
        "Valid To: Jan  2 15:04:05 2027 GMT\n"
        f"SHA-1 Fingerprint: {SHA1_COLON}\n"
        f"SHA-256 Fingerprint: {SHA256_COLON}"
    )


def test_simulator_format_parses_completely() -> None:
    info = parse_certificate_info(_fmt())
    assert info == CertInfo(
        serials=(SERIAL,),
        sha1=SHA1,
        sha256=SHA256,
        subject=SUBJECT,
        issuer=ISSUER,
        not_before=NOT_BEFORE,
        not_before_accuracy=TimeAccuracy.EXACT,
        not_after=NOT_AFTER,
        not_after_accuracy=TimeAccuracy.EXACT,
    )
    assert info.serial == SERIAL
    assert judge_certificate_info(info, EXPECTED) is InfoVerdict.VERIFIED


# --- many plausible formats ------------------------------------------------------------------------------
FORMATS: dict[str, str] = {
    "openssl -text excerpt": f"""Certificate:
    Data:
        Version: 3 (0x2)
        Serial Number:
            {SERIAL_COLON.lower()}
        Signature Algorithm: sha256WithRSAEncryption
        Issuer: C = DE, O = Example AG, CN = Example Phone CA
        Validity
            Not Before: Jan  2 15:04:05 2026 GMT
            Not After : Jan  2 15:04:05 2027 GMT
        Subject: C = DE, O = Example AG, CN = phone-001ae8123456
        Subject Public Key Info:
            Public Key Algorithm: rsaEncryption
""",
    "openssl x509 -noout -serial -subject -dates -fingerprint": f"""serial={SERIAL_HEX}
subject=/C=DE/O=Example AG/CN=phone-001ae8123456
issuer=/C=DE/O=Example AG/CN=Example Phone CA
notBefore=Jan  2 15:04:05 2026 GMT
notAfter=Jan  2 15:04:05 2027 GMT
SHA256 Fingerprint={SHA256_COLON}""",
    "semicolon separated one line": (
        f"subject=CN=phone-001ae8123456, O=Example AG, C=DE; issuer=CN=Example Phone CA, O=Example AG, C=DE; "
        f"serial={SERIAL_COLON}; notAfter=2027-01-02T15:04:05Z"
    ),
    "comma separated, order shuffled": (
        f"SHA-1: {SHA1}, Valid until: 2027-01-02 15:04:05, Issued to: CN=phone-001ae8123456, Serial: 0x{SERIAL_HEX}"
    ),
    "keytool -list -v": f"""Alias name: wbm
Owner: CN=phone-001ae8123456, O=Example AG, C=DE
Issuer: CN=Example Phone CA, O=Example AG, C=DE
Serial number: {SERIAL_HEX.lower()}
Valid from: Fri Jan 02 15:04:05 UTC 2026 until: Sat Jan 02 15:04:05 UTC 2027
Certificate fingerprints:
\t SHA1: {SHA1_COLON}
\t SHA256: {SHA256_COLON}
Signature algorithm name: SHA256withRSA""",
    "json-like": (
        f'{{"serialNumber": "{SERIAL_HEX}", "subject": "CN=phone-001ae8123456,O=Example AG,C=DE", '
        f'"notAfter": "2027-01-02T15:04:05+00:00", "sha256": "{SHA256}"}}'
    ),
    "pipe separated, German dates": (
        f"Seriennummer ignored | Serial No.: {SERIAL_COLON} | Valid From: 02.01.2026 | Valid To: 02.01.2027"
    ),
    "fingerprint only (generic label)": f"Fingerprint: {SHA256_COLON}",
    "thumbprint in parentheses": f"Fingerprint (SHA-1) = {SHA1.upper()}",
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_formats_verify(name: str) -> None:
    info = parse_certificate_info(FORMATS[name])
    assert judge_certificate_info(info, EXPECTED) is InfoVerdict.VERIFIED, info


def test_openssl_text_fields() -> None:
    info = parse_certificate_info(FORMATS["openssl -text excerpt"])
    assert info.serials == (SERIAL,)
    assert info.subject == "C = DE, O = Example AG, CN = phone-001ae8123456"
    assert info.issuer == "C = DE, O = Example AG, CN = Example Phone CA"
    assert info.not_before == NOT_BEFORE
    assert info.not_after == NOT_AFTER


def test_keytool_fields() -> None:
    info = parse_certificate_info(FORMATS["keytool -list -v"])
    assert info.subject == "CN=phone-001ae8123456, O=Example AG, C=DE"
    assert info.not_before == NOT_BEFORE
    assert info.not_after == NOT_AFTER
    assert info.sha1 == SHA1
    assert info.sha256 == SHA256


def test_semicolon_line_keeps_commas_in_dn() -> None:
    info = parse_certificate_info(FORMATS["semicolon separated one line"])
    assert info.subject == "CN=phone-001ae8123456, O=Example AG, C=DE"
    assert info.issuer == "CN=Example Phone CA, O=Example AG, C=DE"
    assert info.serials == (SERIAL,)


def test_german_dates_are_day_accuracy() -> None:
    info = parse_certificate_info(FORMATS["pipe separated, German dates"])
    assert info.not_after == datetime(2027, 1, 2, tzinfo=UTC)
    assert info.not_after_accuracy is TimeAccuracy.DATE


def test_serial_number_attribute_inside_dn_is_not_the_serial() -> None:
    info = parse_certificate_info("Subject: CN=phone, serialNumber=12345, O=X; Serial: 3A:F1")
    assert info.serials == (0x3AF1,)
    assert info.subject == "CN=phone, serialNumber=12345, O=X"


@pytest.mark.parametrize(
    ("text", "serials"),
    [
        ("Serial Number: 3A:F1:0C", (0x3AF10C,)),
        ("serial=3af10c", (0x3AF10C,)),
        ("Serial: 0x3AF10C", (0x3AF10C,)),
        ("Serial Number: 4096 (0x1000)", (0x1000,)),
        ("serial: 4096", (4096, 0x4096)),
        ("serial: 3A F1 0C 22", (0x3AF10C22,)),
        ("serial: 3a-f1-0c", (0x3AF10C,)),
        ("Serial: n/a", ()),
    ],
)
def test_serial_readings(text: str, serials: tuple[int, ...]) -> None:
    assert parse_certificate_info(text).serials == serials


@pytest.mark.parametrize(
    ("text", "expected", "accuracy"),
    [
        ("notAfter=2027-01-02T15:04:05Z", NOT_AFTER, TimeAccuracy.EXACT),
        ("notAfter=2027-01-02T16:04:05+01:00", NOT_AFTER, TimeAccuracy.EXACT),
        ("notAfter=2027-01-02T15:04:05.123Z", NOT_AFTER, TimeAccuracy.EXACT),
        ("Valid To: 2027-01-02 15:04:05 UTC", NOT_AFTER, TimeAccuracy.EXACT),
        ("Valid To: 2027-01-02 15:04:05", NOT_AFTER, TimeAccuracy.NO_ZONE),
        ("Not After : Jan  2 15:04:05 2027 GMT", NOT_AFTER, TimeAccuracy.EXACT),
        ("expires: Sat Jan 02 15:04:05 UTC 2027", NOT_AFTER, TimeAccuracy.EXACT),
        ("expires: Sat Jan 02 16:04:05 CET 2027", NOT_AFTER + timedelta(hours=1), TimeAccuracy.NO_ZONE),
        ("Valid To: 02.01.2027", datetime(2027, 1, 2, tzinfo=UTC), TimeAccuracy.DATE),
        ("Valid To: 02.01.2027 15:04:05", NOT_AFTER, TimeAccuracy.NO_ZONE),
        ("Valid To: 2 Jan 2027 15:04:05 GMT", NOT_AFTER, TimeAccuracy.EXACT),
        ("Valid To: January 2, 2027", datetime(2027, 1, 2, tzinfo=UTC), TimeAccuracy.DATE),
        ("Valid To: Jan 2, 2027 3:04:05 PM", NOT_AFTER, TimeAccuracy.NO_ZONE),
        ("notAfter: 20270102150405Z", NOT_AFTER, TimeAccuracy.EXACT),
        ("notAfter: 270102150405Z", NOT_AFTER, TimeAccuracy.EXACT),
        ("Valid To: 2027-01-02", datetime(2027, 1, 2, tzinfo=UTC), TimeAccuracy.DATE),
    ],
)
def test_time_formats(text: str, expected: datetime, accuracy: TimeAccuracy) -> None:
    info = parse_certificate_info(text)
    assert info.not_after == expected
    assert info.not_after_accuracy is accuracy


@pytest.mark.parametrize("text", ["", "   ", "garbage without keys", "Subject:", "notAfter=soon", "Serial: -"])
def test_nothing_identifying_is_undecided(text: str) -> None:
    info = parse_certificate_info(text)
    assert judge_certificate_info(info, EXPECTED) is InfoVerdict.UNDECIDED


def test_parse_never_fails_on_weird_input() -> None:
    for text in ["\x00\x01", "::::====", "Serial:" * 1000, "notAfter=2027-13-45T99:99:99Z", "sha1: zz"]:
        parse_certificate_info(text)
    with pytest.raises(InputError):
        parse_certificate_info(b"x")  # type: ignore[arg-type]


# --- the verdict -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (f"SHA-256 Fingerprint: {SHA256}", InfoVerdict.VERIFIED),
        (f"SHA-1 Fingerprint: {SHA1}", InfoVerdict.VERIFIED),
        (f"SHA-256 Fingerprint: {'00' * 32}", InfoVerdict.MISMATCH),
        # A fingerprint outranks the serial: same serial, different certificate.
        (f"Serial: {SERIAL_COLON}\nSHA-256 Fingerprint: {'00' * 32}", InfoVerdict.MISMATCH),
        (f"Serial: {SERIAL_COLON}", InfoVerdict.VERIFIED),
        ("Serial: 01", InfoVerdict.MISMATCH),
        (f"Subject: {SUBJECT}\nValid To: Jan  2 15:04:05 2027 GMT", InfoVerdict.VERIFIED),
        ("Subject: CN=phone-001ae8123456\nnotAfter=2027-01-02T15:04:05Z", InfoVerdict.VERIFIED),
        ("Subject: CN=phone-001ae8123456\nnotAfter=2027-01-02", InfoVerdict.VERIFIED),
        ("Subject: CN=phone-001ae8123456\nnotAfter=2027-01-02 16:04:05", InfoVerdict.VERIFIED),  # local time
        ("Subject: CN=phone-001ae8123456\nnotAfter=2027-01-02 16:04:06", InfoVerdict.MISMATCH),
        ("Subject: CN=phone-001ae8123456\nnotAfter=2026-06-02T15:04:05Z", InfoVerdict.MISMATCH),
        (f"Subject: {SUBJECT}", InfoVerdict.UNDECIDED),
        ("Subject: CN=OpenStage, O=Unify", InfoVerdict.MISMATCH),  # the vendor default certificate
        ("notAfter=2027-01-02T15:04:05Z", InfoVerdict.UNDECIDED),
        ("notAfter=2030-01-02T15:04:05Z", InfoVerdict.MISMATCH),
        (f"SHA-1: {SHA256}", InfoVerdict.UNDECIDED),  # mislabelled: not guessed
    ],
)
def test_verdicts(text: str, verdict: InfoVerdict) -> None:
    assert judge_certificate_info(parse_certificate_info(text), EXPECTED) is verdict


@pytest.mark.parametrize(
    "dn",
    [
        "CN=phone-001ae8123456,O=Example AG,C=DE",
        "C=DE, O=Example AG, CN=phone-001ae8123456",
        "/C=DE/O=Example AG/CN=phone-001ae8123456",
        "C = DE, O = Example AG, CN = phone-001ae8123456",
        "commonName=PHONE-001AE8123456, organizationName=example  ag, countryName=DE",
        "2.5.4.3=phone-001ae8123456,2.5.4.10=Example AG,2.5.4.6=DE",
    ],
)
def test_dn_notations_are_equal(dn: str) -> None:
    assert dn_components(dn) == dn_components(SUBJECT)


def test_dn_escapes_and_bare_cn() -> None:
    assert dn_components(r"CN=a\, b,O=x") == {("CN", "a, b"), ("O", "x")}
    assert dn_components("O=Example, Inc.,CN=y") == {("O", "example, inc."), ("CN", "y")}
    assert dn_components("phone-1") == {("CN", "phone-1")}


def test_expected_cert_validation() -> None:
    e = ExpectedCert(SERIAL, SHA256_COLON, SHA1_COLON, SUBJECT, NOT_AFTER.astimezone(timezone(timedelta(hours=2))))
    assert e.sha256 == SHA256
    assert e.sha1 == SHA1
    assert e.not_after.tzinfo is UTC
    with pytest.raises(InputError):
        ExpectedCert(SERIAL, SHA1, SHA1, SUBJECT, NOT_AFTER)
    with pytest.raises(InputError):
        ExpectedCert(SERIAL, SHA256, SHA1, SUBJECT, NOT_AFTER.replace(tzinfo=None))


def test_expected_cert_from_certificate() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phone-001ae8123456")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(SERIAL)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .sign(key, hashes.SHA256())
    )
    expected = ExpectedCert.from_certificate(cert)
    text = format_certificate_info(
        serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha1=expected.sha1,
        sha256=expected.sha256,
    )
    assert judge_certificate_info(parse_certificate_info(text), expected) is InfoVerdict.VERIFIED


def test_format_validates() -> None:
    kw = {
        "serial": 1,
        "subject": "CN=a",
        "issuer": "CN=b",
        "not_before": NOT_BEFORE,
        "not_after": NOT_AFTER,
        "sha1": SHA1,
        "sha256": SHA256,
    }
    format_certificate_info(**kw)  # type: ignore[arg-type]
    for bad in ({"serial": -1}, {"subject": "CN=a\nx"}, {"sha1": "abc"}, {"not_after": datetime(2027, 1, 1)}):  # noqa: DTZ001
        with pytest.raises(InputError):
            format_certificate_info(**{**kw, **bad})  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------------------
_dn_value = (
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .-_"), min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)
_dn = st.lists(st.tuples(st.sampled_from(["CN", "O", "OU", "C", "L", "ST"]), _dn_value), min_size=1, max_size=4).map(
    lambda parts: ",".join(f"{k}={v}" for k, v in parts)
)
_moment = st.datetimes(
    min_value=datetime(1950, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(9999, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=0))
_hex = st.binary(min_size=20, max_size=20).map(bytes.hex)
_hex256 = st.binary(min_size=32, max_size=32).map(bytes.hex)


@settings(max_examples=300)
@given(
    serial=st.integers(0, 2**160),
    subject=_dn,
    issuer=_dn,
    not_before=_moment,
    not_after=_moment,
    sha1=_hex,
    sha256=_hex256,
)
def test_format_parse_round_trip(
    serial: int, subject: str, issuer: str, not_before: datetime, not_after: datetime, sha1: str, sha256: str
) -> None:
    text = format_certificate_info(
        serial=serial,
        subject=subject,
        issuer=issuer,
        not_before=not_before,
        not_after=not_after,
        sha1=sha1,
        sha256=sha256,
    )
    info = parse_certificate_info(text)
    assert info.serials == (serial,)
    assert info.subject == subject
    assert info.issuer == issuer
    assert info.not_before == not_before
    assert info.not_after == not_after
    assert info.sha1 == sha1
    assert info.sha256 == sha256
    expected = ExpectedCert(serial, sha256, sha1, subject, not_after)
    assert judge_certificate_info(info, expected) is InfoVerdict.VERIFIED
    flip = {"0": "1"}
    other = ExpectedCert(
        serial + 1,
        flip.get(sha256[0], "0") + sha256[1:],
        flip.get(sha1[0], "0") + sha1[1:],
        subject,
        not_after,
    )
    assert judge_certificate_info(info, other) is InfoVerdict.MISMATCH


@settings(max_examples=200)
@given(
    serial=st.integers(1, 2**128),
    sha256=_hex256,
    order=st.permutations(range(3)),
    sep=st.sampled_from(["\n", "; ", ", ", " | ", "\r\n"]),
    kv=st.sampled_from([": ", "=", " = ", " : "]),
)
def test_any_order_and_separator(serial: int, sha256: str, order: list[int], sep: str, kv: str) -> None:
    pairs = [f"Serial Number{kv}{serial:x}", f"SHA-256 Fingerprint{kv}{sha256}", f"Subject{kv}CN=x"]
    info = parse_certificate_info(sep.join(pairs[i] for i in order))
    assert serial in info.serials
    assert info.sha256 == sha256


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_parse_total(text: str) -> None:
    info = parse_certificate_info(text)
    assert isinstance(judge_certificate_info(info, EXPECTED), InfoVerdict)
