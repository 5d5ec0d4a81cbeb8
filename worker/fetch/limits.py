"""Byte caps and deadlines shared by the fetchers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from producers.errors import ErrorCode, PermanentError, TransientError
from worker.fetch.ssrf import redact_url

CHUNK_BYTES = 64 * 1024


def read_capped(
    read: Callable[[int], bytes],
    max_bytes: int,
    what: str,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    on_chunk: Callable[[], None] | None = None,
) -> bytes:
    """Call ``read(chunk_bytes)`` until it returns nothing; more than ``max_bytes`` -> ``too-large``.

    Whatever a header or ``stat`` said, memory stays bounded by ``max_bytes + chunk_bytes``.
    ``on_chunk`` runs after every chunk (a deadline check, for example).
    """
    buf = bytearray()
    while chunk := read(chunk_bytes):
        buf += chunk
        if len(buf) > max_bytes:
            raise PermanentError(ErrorCode.TOO_LARGE, f"{what} exceeds {max_bytes} bytes")
        if on_chunk is not None:
            on_chunk()
    return bytes(buf)


class Deadline:
    """The total deadline of one fetch.

    While ``guard(sock)`` is open, a timer shuts the watched socket down when the deadline passes, which
    wakes a read blocked anywhere (status line, headers, body, TLS); ``watch()`` swaps in the TLS socket
    after the handshake. ``expired`` then tells the caller that the failure it saw is the deadline.
    """

    def __init__(self, total_s: float) -> None:
        self.at = time.monotonic() + total_s
        self.total_s = total_s
        self.expired = False
        self._sock: socket.socket | None = None

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self, url: str) -> None:
        """Raise ``timeout`` if the deadline has passed."""
        if self.expired or self.remaining() <= 0:
            raise self.error(url)

    def error(self, url: str) -> TransientError:
        return TransientError(ErrorCode.TIMEOUT, f"fetch took longer than {self.total_s:g}s: {redact_url(url)}")

    def watch(self, sock: socket.socket) -> None:
        self._sock = sock

    @contextmanager
    def guard(self, sock: socket.socket) -> Iterator[None]:
        self._sock = sock
        timer = threading.Timer(max(self.remaining(), 0.0), self._fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            self._sock = None

    def _fire(self) -> None:
        self.expired = True
        sock = self._sock
        if sock is None:
            return
        # The base-class shutdown acts on the raw socket even when it is wrapped in TLS, and wakes a
        # read blocked in another thread (close() would not).
        with suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
