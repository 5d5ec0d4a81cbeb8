"""Test-side HTTP handlers for local servers: a plain reply, a webhook receiver, and a bounded wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from producers.webhook import SIGNATURE_HEADER


def eventually(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Wait for ``check`` (a bound on waiting for something asynchronous, not an assertion about time)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s}s")
        time.sleep(0.05)


def reply(req: BaseHTTPRequestHandler, status: int, body: bytes = b"", content_type: str = "image/jpeg") -> None:
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)


@dataclass
class Receiver:
    """A webhook receiver: records each POST (signature header, raw body) and answers ``statuses`` in turn
    (the last one from then on)."""

    statuses: list[int]
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length", "0")))
        with self.lock:
            self.calls.append((req.headers.get(SIGNATURE_HEADER, ""), body))
            status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        reply(req, status, b"", "text/plain")

    def count(self) -> int:
        with self.lock:
            return len(self.calls)
