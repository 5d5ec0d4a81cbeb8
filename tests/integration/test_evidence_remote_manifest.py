"""A file that keeps its C2PA manifest at a URL is never fetched: a listening socket at that URL sees no
connection (and the same file read with the library's defaults does connect, so the socket would see one)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support import evidence as ev
from worker.evidence.reader import EvidenceReader

c2pa = pytest.importorskip("c2pa")


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(200))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join(2)
    server.close()


def test_remote_manifest_is_never_fetched(listener: tuple[int, list[bytes]]) -> None:
    port, seen = listener
    data = ev.c2pa_signed(ev.image("JPEG"), remote_url=f"http://127.0.0.1:{port}/manifest.c2pa")
    entries = EvidenceReader()(data)
    assert [(e["kind"], e.get("error")) for e in entries] == [("c2pa", "remote-manifest")]
    assert seen == []
    # The control: the library's default settings do fetch it, so the socket above would have seen that.
    with pytest.raises(c2pa.C2paError):
        c2pa.Reader("image/jpeg", io.BytesIO(data), None, c2pa.Context())
    assert len(seen) == 1 and seen[0].startswith(b"GET /manifest.c2pa")
