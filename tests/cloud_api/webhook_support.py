"""Shared by the webhook-target tests: the fleet API served with config settings, any app
served over HTTP or TLS under a name of its own, a listener that counts every connection,
and a stand-in for DNS (the one fault these tests inject: a name whose answer changes)."""

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from agent.protocol.keys import generate_private_key, private_pem
from cloud.pki import CertificateAuthority, DevPki, cert_pem
from simulator.broker import free_port

from .conftest import within


@dataclass
class Dns:
    """A resolver whose answers the test sets (name -> addresses; absent: no such name)."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if not self.answers.get(host):
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: unknown")
        return list(self.answers[host])


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    port: int = 0
    connections: int = 0


@asynccontextmanager
async def listening() -> AsyncIterator[Listener]:
    """A Listener on a free port (each connection counted, then closed)."""
    listener = Listener()

    async def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    listener.port = int(server.sockets[0].getsockname()[1])
    async with server:
        yield listener


def server_tls(pki: DevPki, directory: Path, name: str) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for ``name`` from the test CA (its files), and a client context that
    trusts that CA."""
    ca = CertificateAuthority.load(pki.ca_cert, pki.ca_key)
    key = generate_private_key()
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert_pem(ca.issue(name, key.public_key(), server_names=(name,))))
    key_file.write_bytes(private_pem(key))
    return cert_file, key_file, ssl.create_default_context(cafile=pki.ca_cert)


@asynccontextmanager
async def serving_app(
    app: ASGIApp, *, tls_files: tuple[Path, Path] | None = None
) -> AsyncIterator[int]:
    """``app`` served by uvicorn on 127.0.0.1 (over TLS with ``tls_files``); its port."""
    port = free_port()
    certfile, keyfile = tls_files or (None, None)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="off",
            ssl_certfile=certfile, ssl_keyfile=keyfile,
        )
    )  # fmt: skip
    task = asyncio.create_task(server.serve(), name="test-app")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await within(task)
