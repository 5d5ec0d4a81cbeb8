"""HttpFetcher against a real local HTTP server: SSRF refusals (literal, DNS name, redirect), caps,
deadlines (measured), status mapping, redaction, and TLS with SNI to a pinned address."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from producers.errors import ErrorCode, PermanentError, TransientError
from tests.support.servers import HttpServer, Route, drip, free_port, http_server, raw, redirect
from worker.fetch.http import HttpFetcher, make_poster
from worker.fetch.policy import FetchPolicy

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
def _module_http_srv() -> Iterator[HttpServer]:
    with http_server() as server:
        yield server


@pytest.fixture()
def http_srv(_module_http_srv: HttpServer) -> HttpServer:
    """The shared real HTTP server, started once per module (its shutdown polls for 0.5 s) and reset for
    each test."""
    with _module_http_srv._lock:
        _module_http_srv.routes.clear()
        _module_http_srv.hits.clear()
    return _module_http_srv


def policy_for(srv: HttpServer, *, private: bool = True, **overrides: object) -> FetchPolicy:
    values: dict[str, object] = {
        "allowed_ports": frozenset({80, 443, srv.port}),
        "allow_private": LOOPBACK if private else (),
        "connect_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "total_timeout_s": 5.0,
    }
    values.update(overrides)
    return FetchPolicy(**values)  # type: ignore[arg-type]


def test_fetches_bytes_with_pinned_address_and_host_header(http_srv: HttpServer) -> None:
    seen: dict[str, str | None] = {}

    def handle(h: BaseHTTPRequestHandler) -> None:
        seen["host"] = h.headers.get("Host")
        seen["ua"] = h.headers.get("User-Agent")
        body = b"\x89PNG fake"
        h.send_response(200)
        h.send_header("Content-Type", "text/html")  # advisory only: the bytes are returned as they are
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    url = http_srv.add("/img.png", Route(handler=handle))
    fetched = HttpFetcher(policy_for(http_srv)).fetch(url + "?sig=s3cr3t")
    assert fetched.data == b"\x89PNG fake"
    assert fetched.content_type == "text/html"
    assert fetched.meta["address"] == "127.0.0.1"
    assert fetched.meta["final_url"] == f"{url}?<redacted>"
    assert seen == {"host": f"127.0.0.1:{http_srv.port}", "ua": "fakesake/0.1"}


def test_loopback_is_refused_without_allow_private(http_srv: HttpServer) -> None:
    url = http_srv.add("/img.png", Route(body=b"x"))
    with pytest.raises(PermanentError) as info:
        HttpFetcher(policy_for(http_srv, private=False)).fetch(url)
    assert info.value.code is ErrorCode.FORBIDDEN_ADDRESS
    assert http_srv.hits.get("/img.png") is None  # refused before connecting


def test_dns_name_resolving_to_loopback_is_refused(http_srv: HttpServer) -> None:
    http_srv.add("/img.png", Route(body=b"x"))
    with pytest.raises(PermanentError) as info:
        HttpFetcher(policy_for(http_srv, private=False)).fetch(f"http://localhost:{http_srv.port}/img.png")
    assert info.value.code is ErrorCode.FORBIDDEN_ADDRESS
    assert "localhost resolves to" in info.value.message
    assert http_srv.hits.get("/img.png") is None


def test_name_is_resolved_once_and_the_checked_address_is_used(
    http_srv: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: a second lookup would get a different answer; there must be no second lookup."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def rebinding(host: str, *args: object, **kwargs: object) -> object:
        calls.append(host)
        answer = "127.0.0.1" if len(calls) == 1 else "169.254.169.254"
        return real(answer, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    seen: list[str | None] = []

    def handle(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Host"))
        h.send_response(200)
        h.send_header("Content-Length", "2")
        h.end_headers()
        h.wfile.write(b"ok")

    http_srv.add("/img", Route(handler=handle))
    fetched = HttpFetcher(policy_for(http_srv)).fetch(f"http://images.example:{http_srv.port}/img")
    assert fetched.data == b"ok"
    assert calls == ["images.example"]
    assert seen == [f"images.example:{http_srv.port}"]


def test_redirects_are_followed_and_counted(http_srv: HttpServer) -> None:
    http_srv.add("/a", redirect("/b", 301))
    http_srv.add("/b", redirect(http_srv.url("/img"), 307))
    http_srv.add("/img", Route(body=b"image"))
    fetched = HttpFetcher(policy_for(http_srv)).fetch(http_srv.url("/a"))
    assert (fetched.data, fetched.meta["redirects"]) == (b"image", 2)


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", ErrorCode.FORBIDDEN_ADDRESS),
        ("http://[::1]:{port}/img", ErrorCode.FORBIDDEN_ADDRESS),
        ("http://10.0.0.1/img", ErrorCode.FORBIDDEN_ADDRESS),
        ("http://0x7f.0.0.2:{port}/img", ErrorCode.FORBIDDEN_ADDRESS),  # 127.0.0.2, outside the /32
        ("http://example.com:6379/", ErrorCode.FORBIDDEN_ADDRESS),
        ("file:///etc/passwd", ErrorCode.INVALID_SOURCE),
        ("gopher://127.0.0.1:6379/_FLUSHALL", ErrorCode.INVALID_SOURCE),
        ("http://user:pw@example.com/", ErrorCode.INVALID_SOURCE),
    ],
)
def test_redirect_into_a_forbidden_place_is_refused(http_srv: HttpServer, location: str, code: ErrorCode) -> None:
    # The test server itself (127.0.0.1/32) is allowed; the hop it redirects to must be checked anew.
    policy = policy_for(http_srv, allow_private=(ipaddress.ip_network("127.0.0.1/32"),))
    http_srv.add("/start", redirect(location.format(port=http_srv.port)))
    http_srv.add("/img", Route(body=b"must not be fetched"))
    with pytest.raises(PermanentError) as info:
        HttpFetcher(policy).fetch(http_srv.url("/start"))
    assert info.value.code is code
    assert http_srv.hits == {"/start": 1}


def test_redirect_loop_stops_at_max_redirects(http_srv: HttpServer) -> None:
    http_srv.add("/loop", redirect("/loop"))
    with pytest.raises(PermanentError) as info:
        HttpFetcher(policy_for(http_srv, max_redirects=4)).fetch(http_srv.url("/loop"))
    assert info.value.code is ErrorCode.INVALID_SOURCE
    assert http_srv.hits["/loop"] == 5


def test_slow_drip_body_times_out_at_the_total_deadline(http_srv: HttpServer) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    url = http_srv.add("/drip", Route(handler=drip(head, b"x" * 1000, 0.05)))
    policy = policy_for(http_srv, read_timeout_s=0.5, total_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        HttpFetcher(policy).fetch(url)
    # A byte every 0.05 s never trips the read timeout and the body would take 50 s: the total deadline ended
    # it, and the message says so. A lower bound only: a busy machine can make the fetch late, never early.
    assert info.value.code is ErrorCode.TIMEOUT
    assert "took longer than 1s" in info.value.message
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize(
    "head",
    ids=["headers", "chunked", "until-close"],
    argvalues=[
        b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 500,  # headers that never end
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n",  # chunked body
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # read-until-close body
    ],
)
def test_slow_drip_anywhere_times_out(http_srv: HttpServer, head: bytes) -> None:
    url = http_srv.add("/drip", Route(handler=drip(head[:20], head[20:] + b"x" * 1000, 0.05)))
    policy = policy_for(http_srv, read_timeout_s=0.5, total_timeout_s=0.8)
    with pytest.raises(TransientError) as info:
        HttpFetcher(policy).fetch(url)
    # The drip outlasts any read timeout (a byte per 0.05 s) for 50 s: only the total deadline ends it.
    assert info.value.code is ErrorCode.TIMEOUT
    assert "took longer than 0.8s" in info.value.message


def test_silent_server_hits_the_read_timeout(http_srv: HttpServer) -> None:
    url = http_srv.add("/silent", Route(handler=lambda h: time.sleep(10)))
    with pytest.raises(TransientError) as info:
        HttpFetcher(policy_for(http_srv, read_timeout_s=0.3, total_timeout_s=60.0)).fetch(url)
    # The read timeout, not the total deadline, ended it.
    assert info.value.code is ErrorCode.TIMEOUT
    assert "no data for 0.3s" in info.value.message


@pytest.mark.parametrize(
    ("response", "code", "transient"),
    ids=[
        "more-than-announced",
        "announced-over-cap",
        "until-close-over-cap",
        "chunked-over-cap",
        "short",
        "not-http",
    ],
    argvalues=[
        # More bytes than announced.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 100_000, ErrorCode.TOO_LARGE, False),
        # Announced over the cap: refused before reading the body.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\nxx", ErrorCode.TOO_LARGE, False),
        # No length, read until close, over the cap.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 5000, ErrorCode.TOO_LARGE, False),
        # Chunked, over the cap.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n" + b"x" * 5000 + b"\r\n0\r\n\r\n",
            ErrorCode.TOO_LARGE,
            False,
        ),
        # Fewer bytes than announced, then close.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nshort", ErrorCode.FETCH_FAILED, True),
        # Not HTTP at all.
        (b"SSH-2.0-OpenSSH_9.6\r\n", ErrorCode.FETCH_FAILED, True),
    ],
)
def test_lying_servers(http_srv: HttpServer, response: bytes, code: ErrorCode, transient: bool) -> None:
    url = http_srv.add("/lie", Route(handler=raw(response)))
    with pytest.raises((PermanentError, TransientError)) as info:
        HttpFetcher(policy_for(http_srv, max_bytes=4096)).fetch(url)
    assert info.value.code is code
    assert info.value.retryable is transient


@pytest.mark.parametrize(
    "response",
    ids=["content-length", "until-close", "chunked"],
    argvalues=[
        b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"y" * 4096,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 4096,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
        + b"y" * 2048
        + b"\r\n800\r\n"
        + b"y" * 2048
        + b"\r\n0\r\n\r\n",
    ],
)
def test_body_exactly_at_the_cap_is_accepted(http_srv: HttpServer, response: bytes) -> None:
    url = http_srv.add("/ok", Route(handler=raw(response)))
    assert HttpFetcher(policy_for(http_srv, max_bytes=4096)).fetch(url).data == b"y" * 4096


def test_large_body_streams_intact(http_srv: HttpServer) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, many socket reads
    url = http_srv.add("/big", Route(body=body))
    assert HttpFetcher(policy_for(http_srv)).fetch(url).data == body


@pytest.mark.parametrize(
    ("status", "headers", "code", "transient", "retry_after"),
    [
        (404, {}, ErrorCode.NOT_FOUND, False, None),
        (410, {}, ErrorCode.NOT_FOUND, False, None),
        (401, {}, ErrorCode.FORBIDDEN, False, None),
        (403, {}, ErrorCode.FORBIDDEN, False, None),
        (429, {"Retry-After": "7"}, ErrorCode.FETCH_FAILED, True, 7.0),
        (503, {"Retry-After": "120"}, ErrorCode.FETCH_FAILED, True, 120.0),
        (500, {}, ErrorCode.FETCH_FAILED, True, None),
        (502, {"Retry-After": "soon"}, ErrorCode.FETCH_FAILED, True, None),
        (418, {}, ErrorCode.FETCH_FAILED, False, None),
    ],
)
def test_status_mapping(
    http_srv: HttpServer,
    status: int,
    headers: dict[str, str],
    code: ErrorCode,
    transient: bool,
    retry_after: float | None,
) -> None:
    url = http_srv.add("/s", Route(status=status, headers=headers, body=b"nope"))
    with pytest.raises((PermanentError, TransientError)) as info:
        HttpFetcher(policy_for(http_srv)).fetch(url + "?X-Amz-Signature=topsecret")
    assert (info.value.code, info.value.retryable) == (code, transient)
    assert getattr(info.value, "retry_after_s", None) == retry_after
    assert "topsecret" not in str(info.value)


def test_connection_refused_is_transient(http_srv: HttpServer) -> None:
    port = free_port()  # nothing listens there
    policy = policy_for(http_srv, allowed_ports=frozenset({port}))
    with pytest.raises(TransientError) as info:
        HttpFetcher(policy).fetch(f"http://127.0.0.1:{port}/x")
    assert info.value.code is ErrorCode.FETCH_FAILED


def test_connection_reset_is_transient(http_srv: HttpServer) -> None:
    def reset(h: BaseHTTPRequestHandler) -> None:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        h.connection.close()
        h.close_connection = True

    url = http_srv.add("/reset", Route(handler=reset))
    with pytest.raises(TransientError) as info:
        HttpFetcher(policy_for(http_srv)).fetch(url)
    assert info.value.code is ErrorCode.FETCH_FAILED


def test_poster_sends_through_the_policy(http_srv: HttpServer) -> None:
    received: list[bytes] = []

    def handle(h: BaseHTTPRequestHandler) -> None:
        received.append(h.rfile.read(int(h.headers["Content-Length"])))
        h.send_response(204)
        h.end_headers()

    url = http_srv.add("/hook", Route(handler=handle))
    assert make_poster(policy_for(http_srv))(url, b'{"ok": true}', {"Content-Type": "application/json"}) == 204
    assert received == [b'{"ok": true}']
    with pytest.raises(PermanentError) as info:
        make_poster(policy_for(http_srv, private=False))(url, b"{}", {})
    assert info.value.code is ErrorCode.FORBIDDEN_ADDRESS
    assert len(received) == 1
