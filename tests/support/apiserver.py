"""A real ``fakesake api`` process (uvicorn) on a free loopback port, and a small HTTP client for it.

The server runs ``python -m worker.service.cli api`` (the same entry point as ``fakesake api``) with settings
passed by environment, and is ready once ``/healthz`` answers 200.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import _stop, free_port
from tests.support.workers import REPO_ROOT


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str | None:
        """The ``error.code`` of an error body (None for other bodies)."""
        try:
            body = json.loads(self.raw)
        except ValueError:
            return None
        return body.get("error", {}).get("code") if isinstance(body, dict) else None


@dataclass
class ApiServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Answer:
        """One request on a fresh connection; ``body`` is sent as JSON, ``raw`` as it is."""
        sent = dict(headers or {})
        if key is not None:
            sent.setdefault("Authorization", f"Bearer {key}")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def api_env(redis_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")},
        "PYTHONUNBUFFERED": "1",
        "FAKESAKE_REDIS__URL": redis_url,
        **(extra or {}),
    }


@contextlib.contextmanager
def api_server(redis_url: str, extra: Mapping[str, str] | None = None) -> Iterator[ApiServer]:
    """Start ``fakesake api``; stop exactly that process on exit."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="fakesake-api-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "worker.service.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=api_env(redis_url, extra), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    server = ApiServer(port, proc, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fakesake api exited with {proc.returncode}:\n{server.log()}")
            with contextlib.suppress(OSError):
                if server.call("GET", "/healthz").status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"fakesake api not ready after 60 s:\n{server.log()}")
            time.sleep(0.05)
        yield server
    finally:
        _stop(proc)
