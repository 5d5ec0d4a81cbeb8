"""HttpFetcher over TLS to a real local HTTPS server: the socket goes to the checked address while SNI,
the certificate check and the Host header use the host name."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from producers.errors import ErrorCode, PermanentError
from tests.support.servers import HttpServer, Route
from tests.support.tls import certificate as _cert
from worker.fetch.http import HttpFetcher
from worker.fetch.policy import FetchPolicy


@dataclass
class Tls:
    server: HttpServer
    client_context: ssl.SSLContext
    sni: list[str | None]

    def policy(self) -> FetchPolicy:
        return FetchPolicy(
            allowed_ports=frozenset({self.server.port}),
            allow_private=(ipaddress.ip_network("127.0.0.0/8"),),
            total_timeout_s=5.0,
        )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert, ca_key = _cert("fakesake test CA", ca_key, None, ca=True, names=[])
    leaf, leaf_key = _cert("localhost", ca_key, ca_cert.subject, ca=False, names=["localhost"])
    d: Path = tmp_path_factory.mktemp("tls")
    (d / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    sni: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(d / "leaf.pem", d / "leaf.key")
    server_context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    server = HttpServer()
    server.server.socket = server_context.wrap_socket(server.server.socket, server_side=True)
    server.start()
    client_context = ssl.create_default_context(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    try:
        yield Tls(server=server, client_context=client_context, sni=sni)
    finally:
        server.stop()


def _echo_host(h: BaseHTTPRequestHandler) -> None:
    body = str(h.headers.get("Host")).encode()
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def test_https_uses_the_name_for_sni_certificate_and_host(tls: Tls) -> None:
    tls.server.add("/host", Route(handler=_echo_host))
    tls.sni.clear()
    fetcher = HttpFetcher(tls.policy(), ssl_context=tls.client_context)
    fetched = fetcher.fetch(f"https://localhost:{tls.server.port}/host")
    assert fetched.data == f"localhost:{tls.server.port}".encode()
    assert fetched.meta["address"] == "127.0.0.1"
    assert tls.sni == ["localhost"]


def test_certificate_for_another_name_is_refused(tls: Tls) -> None:
    # Same server, same certificate (for "localhost"), reached by its address: the name does not match.
    tls.server.add("/host", Route(handler=_echo_host))
    with pytest.raises(PermanentError) as info:
        HttpFetcher(tls.policy(), ssl_context=tls.client_context).fetch(f"https://127.0.0.1:{tls.server.port}/host")
    assert info.value.code is ErrorCode.FETCH_FAILED
    assert "certificate" in info.value.message


def test_untrusted_certificate_is_refused_by_default(tls: Tls) -> None:
    tls.server.add("/host", Route(handler=_echo_host))
    with pytest.raises(PermanentError) as info:
        HttpFetcher(tls.policy()).fetch(f"https://localhost:{tls.server.port}/host")  # system CA store
    assert info.value.code is ErrorCode.FETCH_FAILED
