"""A test HTTP server on a loopback address of its own, plus *canary* listeners on forbidden addresses.

The worker under test may reach only the server's address (``FAKESAKE_FETCH__ALLOW_PRIVATE=<host>/32``);
each canary listens on the same port number at an address the SSRF policy forbids (127.0.0.1, which
``localhost`` resolves to, 127.0.0.2, ::1). A canary never calls ``accept()`` during the test: the kernel
completes handshakes into its backlog, so :meth:`Site.connections` sees any connection ever attempted.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.servers import HttpServer

SERVER_HOST = "127.0.0.9"
CANARY_HOSTS = ("127.0.0.1", "127.0.0.2", "::1")


@dataclass
class Site:
    """The test HTTP server and its canaries (same port number, forbidden addresses)."""

    server: HttpServer
    canaries: dict[str, socket.socket] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    def connections(self) -> dict[str, int]:
        """Connections each canary received since the last call (accepted and closed here)."""
        seen = {}
        for host, sock in self.canaries.items():
            count = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    conn, _ = sock.accept()
                    conn.close()
                    count += 1
            seen[host] = count
        return seen

    def close(self) -> None:
        for sock in self.canaries.values():
            sock.close()
        self.server.stop()


def _canary(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def site(host: str = SERVER_HOST, canary_hosts: tuple[str, ...] = CANARY_HOSTS) -> Iterator[Site]:
    """A started :class:`Site`; stops the server and closes the canaries on exit."""
    for _ in range(10):  # the kernel picks the server's port; a canary address may already use it
        result = Site(HttpServer(host))
        try:
            for canary_host in canary_hosts:
                result.canaries[canary_host] = _canary(canary_host, result.port)
        except OSError as exc:
            for sock in result.canaries.values():
                sock.close()
            result.server.server.server_close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        result.server.start()
        try:
            yield result
        finally:
            result.close()
        return
    raise RuntimeError("no port number free on every canary address")
