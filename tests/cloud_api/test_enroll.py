"""POST /v1/enroll and GET /v1/keyset: the happy path, and every refusal storing nothing."""

import base64
import datetime as dt
import json
import textwrap
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.protocol.keys import generate_private_key, kid_for, load_public_key, public_pem
from agent.protocol.topics import VID_RE
from cloud.keyset import open_keyset

from .conftest import Api, cn, csr_pem, p384_key, within


def _verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    assert cert.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    ca_key.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    cert.verify_directly_issued_by(ca)


async def test_enroll_returns_a_certificate_for_a_fresh_vid(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    key = generate_private_key()
    r = await api.enroll(claim, key, vin="LSGCAR00000000001", fleet_id=fleet_id)
    assert r.status_code == 201, r.text
    got = r.json()
    assert set(got) == {
        "vid",
        "certificate_pem",
        "ca_chain_pem",
        "not_after",
        "broker_host",
        "broker_port",
        "keyset",
    }
    vid = got["vid"]
    assert VID_RE.fullmatch(vid) and len(vid) == 17
    assert "LSGCAR" not in vid.upper()

    cert = x509.load_pem_x509_certificate(got["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(got["ca_chain_pem"].encode())
    assert ca == x509.load_pem_x509_certificate(api.pki.ca_cert.read_bytes())
    _verify_issued_by(cert, ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == vid
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    life = cert.not_valid_after_utc - api.clock.now()
    assert dt.timedelta(days=89) < life <= dt.timedelta(days=90)
    assert dt.datetime.fromisoformat(got["not_after"]) == cert.not_valid_after_utc
    assert (got["broker_host"], got["broker_port"]) == api.config.advertised_broker

    vehicle = await within(api.store.vehicle(vid))
    assert vehicle is not None and vehicle.fleet_id == fleet_id and vehicle.revoked_at is None
    keys = await within(api.store.vehicle_keys(vid, api.clock.now()))
    assert keys == {kid_for(key.public_key()): key.public_key()}
    assert api.events.registered == [(vid, key.public_key())]
    assert api.counters["enrolled"] == 1


async def test_the_key_set_verifies_against_the_root_key(api: Api) -> None:
    vid, _ = await api.enrolled()
    r = await api.client.get("/v1/keyset")
    assert r.status_code == 200
    root = load_public_key(api.pki.root_pub.read_bytes())
    body = open_keyset(r.json()["keyset"].encode(), root)
    signing = load_public_key(api.pki.signing_pub.read_bytes())
    assert body.version == 1
    assert [(k.kid, k.public_key_pem, k.not_after) for k in body.keys] == [
        (kid_for(signing), public_pem(signing).decode(), None)
    ]
    # The same key set is handed out at enrollment.
    fleet_id, token = await api.fleet()
    r2 = await api.enroll((await api.claims(fleet_id, token))[0], generate_private_key())
    assert r2.json()["keyset"] == r.json()["keyset"]
    assert vid != r2.json()["vid"]


async def test_the_key_set_body_is_compact_json_in_a_fixed_order(api: Api) -> None:
    r = await api.client.get("/v1/keyset")
    body_b64 = json.loads(r.json()["keyset"])["body"]
    body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
    assert body.startswith(b'{"type":"keyset","version":1,"issued_at":"')
    assert b'"keys":[{"kid":"' in body and b", " not in body and b'"not_after":null}]}' in body


async def test_a_claim_is_one_time(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    assert (await api.enroll(claim, generate_private_key())).status_code == 201
    before = await api.vehicles()
    r = await api.enroll(claim, generate_private_key())
    assert (r.status_code, r.json()["error"]["code"]) == (409, "claim_used")
    assert await api.vehicles() == before


async def test_an_expired_claim_is_refused(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token, expires_in_s=60)
    api.clock.advance(60)
    r = await api.enroll(claim, generate_private_key())
    assert (r.status_code, r.json()["error"]["code"]) == (410, "claim_expired")
    assert await api.vehicles() == 0
    assert api.events.registered == []


async def test_a_claim_just_before_expiry_still_enrolls(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token, expires_in_s=60)
    api.clock.advance(59)
    assert (await api.enroll(claim, generate_private_key())).status_code == 201


async def test_an_unknown_claim_is_refused(api: Api) -> None:
    for claim in ("cl_" + "A" * 43, "op_nothing", "x"):
        r = await api.enroll(claim, generate_private_key())
        assert (r.status_code, r.json()["error"]["code"]) == (404, "claim_unknown")
    assert await api.vehicles() == 0


async def test_an_operator_token_is_not_a_claim(api: Api) -> None:
    _, token = await api.fleet()
    r = await api.enroll(token, generate_private_key())
    assert (r.status_code, r.json()["error"]["code"]) == (404, "claim_unknown")


async def test_a_claim_of_another_fleet_is_refused_and_stays_usable(api: Api) -> None:
    a_id, _ = await api.fleet("a")
    b_id, b_token = await api.fleet("b")
    [claim] = await api.claims(b_id, b_token)
    r = await api.enroll(claim, generate_private_key(), fleet_id=a_id)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "claim_wrong_fleet")
    assert await api.vehicles() == 0
    assert (await api.enroll(claim, generate_private_key(), fleet_id=b_id)).status_code == 201


def _rsa_csr() -> str:
    return csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _bad_signature_csr() -> str:
    pem = csr_pem(generate_private_key()).encode()
    csr = x509.load_pem_x509_csr(pem)
    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # inside the signature's s
    b64 = "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"


def _ed25519_csr() -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return (
        builder.sign(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(Encoding.PEM).decode()
    )


BAD_CSRS: list[tuple[str, Callable[[], str], str]] = [
    ("garbage", lambda: "garbage", "csr_invalid"),
    (
        "bad-der",
        lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "csr_invalid",
    ),
    ("bad-signature", _bad_signature_csr, "csr_invalid"),
    ("rsa", _rsa_csr, "csr_key_type"),
    ("p384", lambda: csr_pem(p384_key()), "csr_key_type"),
    ("ed25519", _ed25519_csr, "csr_key_type"),
    (
        "cn-vid",
        lambda: csr_pem(generate_private_key(), cn("vsomeoneelse00001")),
        "csr_subject_not_allowed",
    ),
    (
        "cn-cloud",
        lambda: csr_pem(generate_private_key(), cn("ctpl-cloud")),
        "csr_subject_not_allowed",
    ),
]


async def test_a_bad_csr_is_refused_and_the_claim_stays_usable(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    for name, make_csr, code in BAD_CSRS:
        r = await api.client.post("/v1/enroll", json={"claim_token": claim, "csr_pem": make_csr()})
        assert (r.status_code, r.json()["error"]["code"]) == (422, code), name
    assert await api.vehicles() == 0
    assert api.events.registered == []
    assert api.counters["rejected.csr_invalid"] == 3
    assert api.counters["rejected.csr_key_type"] == 3
    assert api.counters["rejected.csr_subject_not_allowed"] == 2
    assert (await api.enroll(claim, generate_private_key())).status_code == 201


async def test_a_bad_vin_is_refused_after_the_claim_and_csr(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    for vin in ("LSGCAR0000000001", "LSGCAR000000000001", "LSGCAR0000000000I", "lsgcar00000000001"):
        r = await api.enroll(claim, generate_private_key(), vin=vin)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "vin_invalid"), vin
        assert vin not in r.text
        # The order of the checks: an unknown claim and a bad CSR are told before the VIN.
        r = await api.enroll("cl_unknown", generate_private_key(), vin=vin)
        assert r.json()["error"]["code"] == "claim_unknown"
        r = await api.enroll(claim, p384_key(), vin=vin)
        assert r.json()["error"]["code"] == "csr_key_type"
    assert await api.vehicles() == 0


async def test_an_oversize_body_is_refused(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    body = {"claim_token": claim, "csr_pem": csr_pem(generate_private_key()) + " " * 17000}
    r = await api.client.post("/v1/enroll", json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    assert await api.vehicles() == 0
    assert (await api.enroll(claim, generate_private_key())).status_code == 201


async def test_a_malformed_enroll_body_is_bad_request(api: Api) -> None:
    for body in (
        b"not json",
        b"[]",
        b"",
        b'{"claim_token": "x"}',
        b'{"claim_token": 1, "csr_pem": "x"}',
        b'{"claim_token": "x", "csr_pem": "x", "extra": 1}',
        b'{"claim_token": "x", "csr_pem": "x", "vin": 17}',
    ):
        r = await api.client.post(
            "/v1/enroll", content=body, headers={"Content-Type": "application/json"}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request"), body
        assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
