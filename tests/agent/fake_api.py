"""A fake of the OTHER side: the cloud's enrollment API, served for real over HTTPS.

A small Starlette app that answers ``/v1/enroll`` and ``/v1/renew`` as docs/enrollment.md
says, with certificates made by ``cloud.pki.CertificateAuthority`` and a key set signed by
a root key made for the test; uvicorn serves it with TLS on a free port, in a thread, so
that both async tests and the synchronous CLI can reach it.
"""

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.protocol import envelope
from agent.protocol.envelope import Signer
from agent.protocol.keys import (
    PrivateKey,
    PublicKey,
    generate_private_key,
    kid_for,
    private_pem,
    public_pem,
)
from cloud.pki import CertificateAuthority, cert_pem, new_ca, new_vid, write_private

KEYSET_TOPIC = "ctpl/v1/keyset"
START_S = 10.0


def keyset_envelope(
    root: PrivateKey,
    keys: list[tuple[PublicKey, dt.datetime | None]],
    *,
    version: int = 1,
    issued_at: dt.datetime | None = None,
) -> str:
    """A key set envelope (text) over ``keys``, signed by ``root``."""
    body = {
        "type": "keyset",
        "version": version,
        "issued_at": (issued_at or dt.datetime.now(dt.UTC)).isoformat(),
        "keys": [
            {
                "kid": kid_for(k),
                "public_key_pem": public_pem(k).decode("ascii"),
                "not_after": None if cut is None else cut.isoformat(),
            }
            for k, cut in keys
        ],
    }
    data = json.dumps(body, separators=(",", ":")).encode()
    return Signer(root).seal(KEYSET_TOPIC, data).decode("ascii")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass
class FakeCloudApi:
    """The fake's state: CA, root and signing keys, claims, and what it has issued."""

    ca: CertificateAuthority
    root: PrivateKey
    signing: PrivateKey
    claims: set[str] = field(default_factory=set)
    keys: dict[str, PublicKey] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    cert_days: int = 90
    keyset_version: int = 1
    broker: tuple[str, int] = ("broker.example", 8883)
    tamper: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Changes each successful answer before it is sent (to test the agent's checks)."""
    refuse: tuple[int, str] | None = None
    """Answer every request with this error status and code."""

    @classmethod
    def make(cls) -> "FakeCloudApi":
        """A fake with a fresh CA, root key and signing key."""
        return cls(CertificateAuthority(*new_ca()), generate_private_key(), generate_private_key())

    def add_vehicle(
        self, key: PublicKey, *, days: int = 90, age_days: float = 0.0
    ) -> tuple[str, bytes]:
        """Register a vehicle as enrolled ``age_days`` ago: its vid and certificate PEM."""
        vid = new_vid()
        self.keys[vid] = key
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
        return vid, cert_pem(self.ca.issue(vid, key, days=days, not_before=start))

    def answer(self, vid: str, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
        """An Enrollment answer issuing a certificate for ``key``."""
        cert = self.ca.issue(vid, key, days=self.cert_days)
        answer = {
            "vid": vid,
            "certificate_pem": cert_pem(cert).decode("ascii"),
            "ca_chain_pem": cert_pem(self.ca.cert).decode("ascii"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "broker_host": self.broker[0],
            "broker_port": self.broker[1],
            "keyset": keyset_envelope(
                self.root, [(self.signing.public_key(), None)], version=self.keyset_version
            ),
        }
        return self.tamper(answer) if self.tamper else answer

    @staticmethod
    def _csr_key(csr_pem: str) -> ec.EllipticCurvePublicKey | JSONResponse:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            return _error(422, "csr_invalid", "not a PEM CSR")
        key = csr.public_key()
        if not csr.is_signature_valid:
            return _error(422, "csr_invalid", "CSR signature does not verify")
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            return _error(422, "csr_key_type", "not P-256")
        if len(csr.subject) != 0:
            return _error(422, "csr_subject_not_allowed", "the subject must be empty")
        return key

    async def enroll(self, request: Request) -> Response:
        """POST /v1/enroll."""
        body = await request.json()
        self.requests.append(body)
        if self.refuse:
            return _error(*self.refuse, "refused by the test")
        if body.get("claim_token") not in self.claims:
            return _error(404, "claim_unknown", "no such claim token")
        key = self._csr_key(body["csr_pem"])
        if isinstance(key, JSONResponse):
            return key
        self.claims.discard(body["claim_token"])
        vid = new_vid()
        self.keys[vid] = key
        return JSONResponse(self.answer(vid, key), status_code=201)

    async def renew(self, request: Request) -> Response:
        """POST /v1/renew."""
        outer = await request.json()
        self.requests.append(outer)
        if self.refuse:
            return _error(*self.refuse, "refused by the test")
        sealed = outer["envelope"].encode()
        claimed = json.loads(envelope.parse(sealed).body)
        vid = claimed["vid"]
        if vid not in self.keys:
            return _error(404, "vehicle_unknown", "no such vehicle")
        try:
            body = json.loads(
                envelope.open_with(
                    f"ctpl/v1/{vid}/renew", sealed, {kid_for(self.keys[vid]): self.keys[vid]}
                )
            )
        except Exception as exc:
            return _error(401, "bad_signature", str(exc))
        if body["type"] != "cert.renewal" or body["seq"] <= self.last_seq.get(vid, 0):
            return _error(409, "replay", "seq does not grow")
        key = self._csr_key(body["csr_pem"])
        if isinstance(key, JSONResponse):
            return key
        self.last_seq[vid] = body["seq"]
        self.keys[vid] = key
        return JSONResponse(self.answer(vid, key))

    def app(self) -> Starlette:
        """The Starlette app."""
        return Starlette(
            routes=[
                Route("/v1/enroll", self.enroll, methods=["POST"]),
                Route("/v1/renew", self.renew, methods=["POST"]),
            ]
        )


@dataclass(frozen=True)
class Served:
    """A running HTTPS server: its URL and the CA bundle that authenticates it."""

    url: str
    ca_file: Path
    port: int


@contextmanager
def serve_https(app: Any, ca: CertificateAuthority, workdir: Path) -> Iterator[Served]:
    """Serve ``app`` with TLS (a certificate from ``ca`` for 127.0.0.1) on a free port."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    write_private(workdir / "api.key", private_pem(key))
    (workdir / "api.crt").write_bytes(
        cert_pem(ca.issue("ctpl-api", key.public_key(), server_names=("127.0.0.1", "localhost")))
    )
    (workdir / "api-ca.crt").write_bytes(cert_pem(ca.cert))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        ssl_certfile=str(workdir / "api.crt"),
        ssl_keyfile=str(workdir / "api.key"),
        log_level="warning",
        lifespan="off",
        ws="none",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the HTTPS server did not start"
        time.sleep(0.01)
    try:
        yield Served(f"https://127.0.0.1:{port}", workdir / "api-ca.crt", port)
    finally:
        server.should_exit = True
        thread.join(START_S)
        sock.close()
