"""A fault-injecting HTTP reverse proxy for tests: put it in front of the S3 server or the HTTP server.

A seeded random share of reads (GET and HEAD) fails the way real stores and CDNs fail:

* ``503``: ``503 Service Unavailable`` — for S3 with the ``SlowDown`` error document S3 sends under load;
* ``reset``: the connection is closed with an RST (``SO_LINGER`` 0) before any response byte;
* ``timeout``: nothing is sent for ``stall_s`` (set the client's read timeout below it), then the
  connection is dropped.

Every other request is forwarded unchanged (method, path, headers, body) and the upstream response is
relayed. Every request is logged as ``(method, path, outcome)`` so tests can count attempts per object.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("503", "reset", "timeout")
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    """Reverse proxy to ``upstream`` (``http://host:port``) failing ``rate`` of reads, seeded."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.2,
        seed: int = 0,
        faults: Sequence[str] = FAULTS,
        stall_s: float = 2.0,
        s3: bool = False,
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.rate = rate
        self.faults = tuple(faults)
        self.stall_s = stall_s
        self.s3 = s3
        self.log: list[tuple[str, str, str]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                outer._serve(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # type: ignore[method-assign]  # resets are the point
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- accounting -----------------------------------------------------------------------------------
    def counts(self) -> Counter[str]:
        """Requests per outcome (``ok`` or a fault name)."""
        with self._lock:
            return Counter(outcome for _, _, outcome in self.log)

    def per_path(self, path: str) -> list[str]:
        """Outcomes of the requests for ``path``, in order."""
        with self._lock:
            return [outcome for _, p, outcome in self.log if p == path]

    # -- serving --------------------------------------------------------------------------------------
    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            outcome = "ok"
            if method in ("GET", "HEAD") and self._rng.random() < self.rate:
                outcome = self._rng.choice(self.faults)
            self.log.append((method, path, outcome))
            return outcome

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        outcome = self._decide(request.command, path)
        if outcome == "503":
            payload = _SLOWDOWN if self.s3 else b"service unavailable"
            request.send_response(503)
            request.send_header("Content-Type", "application/xml" if self.s3 else "text/plain")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(payload)
            return
        if outcome in ("reset", "timeout"):
            if outcome == "timeout":
                time.sleep(self.stall_s)
            _reset(request.connection)
            request.close_connection = True
            return
        self._forward(request, body)

    def _forward(self, request: BaseHTTPRequestHandler, body: bytes | None) -> None:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(request.command, request.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        request.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                request.send_header(key, value)
        declared = resp.getheader("Content-Length")
        request.send_header("Content-Length", declared if request.command == "HEAD" and declared else str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _reset(sock: socket.socket) -> None:
    """Close with RST: the peer sees 'connection reset by peer', as from a crashed load balancer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def fault_proxy(upstream: str, **kw: object) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream, **kw)  # type: ignore[arg-type]
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
