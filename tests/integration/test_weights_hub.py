"""Hub weights against a local stand-in for the Hugging Face hub (HF_ENDPOINT): one request, never a retry loop.

The stand-in records each request, so "fails fast" is asserted as "asked once", not in seconds.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from producers.errors import ConfigError
from tests.support.checkpoints import populate_hf_cache, seeded_state, write_snapshot
from worker.core import registry
from worker.inference.loader import load_detector, resolve_weights

MJ = registry.get("ffs-mj-5m")
assert MJ.hub_repo is not None
COMMIT = "c" * 40


@dataclass
class FakeHub:
    """``mode``: ``reset`` closes each connection unanswered; ``503`` answers every request with 503;
    ``serve`` answers HEAD and GET of ``files`` as the hub's ``resolve`` endpoint does. ``requests`` holds
    "METHOD PATH" of each request."""

    mode: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def asked_for(self, filename: str) -> int:
        """Requests for ``filename`` (the client's once-per-process side requests, such as its agent
        registry look-up, are not counted)."""
        return sum(1 for r in self.requests if r.endswith(f"/resolve/main/{filename}"))


@contextmanager
def fake_hub(mode: str, files: dict[str, bytes] | None = None) -> Iterator[FakeHub]:
    hub = FakeHub(mode, files or {})
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def handle(self) -> None:
            if hub.mode == "reset":
                line = self.rfile.readline(65537).decode("latin-1").strip()
                with lock:
                    hub.requests.append(line.rsplit(" ", 1)[0])
                return  # closed unanswered: the client sees a dropped connection
            super().handle()

        def _answer(self, with_body: bool) -> None:
            with lock:
                hub.requests.append(f"{self.command} {self.path}")
            body = hub.files.get(self.path.rsplit("/", 1)[-1]) if hub.mode == "serve" else None
            if body is None:
                self.send_response(503 if hub.mode == "503" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hub.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)


@pytest.mark.parametrize("mode", ["reset", "503"])
def test_unreachable_hub_is_a_config_error_after_one_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    with fake_hub(mode) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(ConfigError) as info:
            resolve_weights(MJ, None, hf_cache_dir=tmp_path / "empty-cache")
    assert hub.asked_for(MJ.weights_file) == 1  # no retry loop
    message = info.value.message
    assert f"repo {MJ.hub_repo}" in message and MJ.weights_file in message
    for way_out in ("--weights", "FAKESAKE_MODEL__WEIGHTS", "huggingface-cli download", f"hf download {MJ.hub_repo}"):
        assert way_out in message


def test_offline_mode_asks_nothing_of_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_hub("serve", {MJ.weights_file: b"never served"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
            resolve_weights(MJ, None, hf_cache_dir=tmp_path / "empty-cache")
    assert hub.asked_for(MJ.weights_file) == 0


def test_unreachable_hub_falls_back_to_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = write_snapshot(MJ, tmp_path / "snap", seeded_state(MJ))
    cache = tmp_path / "hf"
    assert MJ.hub_repo is not None
    populate_hf_cache(cache, MJ.hub_repo, {MJ.weights_file: weights})
    with fake_hub("reset") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        path = resolve_weights(MJ, None, hf_cache_dir=cache)
    assert path.read_bytes() == weights.read_bytes()
    assert hub.asked_for(MJ.weights_file) == 1


def test_reachable_hub_downloads_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = write_snapshot(MJ, tmp_path / "snap", seeded_state(MJ))
    with fake_hub("serve", {MJ.weights_file: weights.read_bytes()}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        detector = load_detector(MJ, None, device="cpu", hf_cache_dir=tmp_path / "hf")
    state = detector.module.state_dict()
    assert all((state[k] == v).all() for k, v in seeded_state(MJ).items())
    assert any(r.startswith("GET ") for r in hub.requests)
