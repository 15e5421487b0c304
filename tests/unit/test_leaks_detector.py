"""The shared leak detector (:mod:`tests.leaks`) finds key material in every form a bug could emit it, and does
not cry wolf on the public PKI objects an API response legitimately carries. (A detector that cannot fail would
make every key-leak test a test that cannot fail.)"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import zipfile
import zlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.leaks import classify_der, leaked_secrets

T0 = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def material() -> dict[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "10.0.0.1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(T0)
        .not_valid_after(T0 + dt.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    enc = serialization.Encoding
    fmt = serialization.PrivateFormat
    return {
        "p12": pkcs12.serialize_key_and_certificates(b"x", rsa_key, None, None, serialization.NoEncryption()),
        "p12_pw": pkcs12.serialize_key_and_certificates(
            b"x", key, cert, None, serialization.BestAvailableEncryption(b"pw-123")
        ),
        "key_der": rsa_key.private_bytes(enc.DER, fmt.PKCS8, serialization.NoEncryption()),
        "key_pem": rsa_key.private_bytes(enc.PEM, fmt.TraditionalOpenSSL, serialization.NoEncryption()),
        "ec_pem": key.private_bytes(enc.PEM, fmt.PKCS8, serialization.NoEncryption()),
        "enc_pem": key.private_bytes(enc.PEM, fmt.PKCS8, serialization.BestAvailableEncryption(b"pw")),
        "cert_pem": cert.public_bytes(enc.PEM),
        "cert_der": cert.public_bytes(enc.DER),
        "pub_pem": key.public_key().public_bytes(enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }


def test_classifies_der(material: dict[str, bytes]) -> None:
    assert classify_der(material["p12"]) == "PKCS#12"
    assert classify_der(material["p12_pw"], [b"pw-123"]) == "PKCS#12"
    assert classify_der(material["key_der"]) == "private key"
    assert classify_der(material["cert_der"]) == "certificate"


@pytest.mark.parametrize(
    ("form", "expect"),
    [
        ("p12 base64 one line", "PKCS#12"),
        ("p12 base64 in JSON", "PKCS#12"),
        ("p12 base64url", "PKCS#12"),
        ("p12 password", "PKCS#12"),
        ("key DER base64 wrapped", "private key"),
        ("key DER hex", "private key"),
        ("key DER escaped bytes", "escaped DER"),
        ("RSA PEM", "PEM block (RSA PRIVATE KEY"),
        ("EC PEM in JSON", "PEM block (PRIVATE KEY"),
        ("encrypted PEM", "PEM block (ENCRYPTED PRIVATE KEY"),
        ("PEM header only", "PEM block (PRIVATE KEY: undecodable"),
        ("zip member", "PKCS#12"),
        ("PDF stream", "private key"),
        ("raw DER body", "private key"),
        ("password", "a password"),
    ],
)
def test_finds_key_material_in_every_form(material: dict[str, bytes], form: str, expect: str) -> None:
    p12, key_der = material["p12"], material["key_der"]
    b64 = base64.b64encode(p12).decode()
    wrapped = "\n".join(base64.b64encode(key_der).decode()[i : i + 64] for i in range(0, 2000, 64))
    texts: dict[str, str | bytes] = {
        "p12 base64 one line": f"item wbm-server-certificate={b64} end",
        "p12 base64 in JSON": json.dumps({"transcript": [{"value": b64}]}),
        "p12 base64url": base64.urlsafe_b64encode(p12).decode().rstrip("="),
        "p12 password": base64.b64encode(material["p12_pw"]).decode(),
        "key DER base64 wrapped": "blob:\n" + wrapped + "\n",
        "key DER hex": f"key {key_der.hex()}",
        "key DER escaped bytes": repr(key_der),
        "RSA PEM": material["key_pem"].decode(),
        "EC PEM in JSON": json.dumps({"detail": material["ec_pem"].decode()}),
        "encrypted PEM": material["enc_pem"].decode(),
        "PEM header only": "-----BEGIN PRIVATE KEY-----",
        "zip member": _zip({"report.csv": b"a,b\n", "x.json": json.dumps({"p": b64}).encode()}),
        "PDF stream": b"%PDF-1.4\n1 0 obj << >>\nstream\n" + zlib.compress(wrapped.encode()) + b"\nendstream\n",
        "raw DER body": key_der,
        "password": "the password is pw-123 here",
    }
    found = leaked_secrets(texts[form], passwords=["pw-123"], public_pki=True)
    assert any(expect in f for f in found), found


def test_public_pki_objects_are_allowed_where_expected(material: dict[str, bytes]) -> None:
    body = json.dumps({"pem": material["cert_pem"].decode(), "public_key": material["pub_pem"].decode()})
    assert leaked_secrets(body, public_pki=True) == []
    assert leaked_secrets(material["cert_der"], public_pki=True) == []
    # ... and not where no PEM belongs (a log)
    assert leaked_secrets(material["cert_pem"].decode()) != []
    # a private key stays a finding next to allowed certificates
    mixed = material["cert_pem"].decode() + material["ec_pem"].decode()
    assert len(leaked_secrets(mixed, public_pki=True)) == 1


def test_ordinary_text_is_clean() -> None:
    text = json.dumps(
        {
            "fingerprint_sha256": "ab" * 32,
            "serial": "7f" * 20,
            "token": "cmt_weiV185cougjmoctAO18s58dYFay_Yhr8gWipsvIXwg",
            "path": "/api/v1/certificates/12/revoke",
            "uri": "http://10.0.0.1:8085/contact_dls.html/ContactDLS",
            "signature": base64.b64encode(b"\x30\x45" + bytes(69)).decode(),
        }
    )
    assert leaked_secrets(text, public_pki=True) == []
    assert leaked_secrets("2026-11-26 09:00:00 INFO deployment 3 verified\n" * 50) == []


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return out.getvalue()
