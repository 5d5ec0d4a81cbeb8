"""Real fakesake worker processes for integration and fault tests.

A :class:`WorkerProcess` runs ``python -m worker.service.cli worker`` (the same entry point as ``fakesake worker``)
with settings passed by environment, waits until its ``/readyz`` answers 200 (model loaded, Redis reachable),
and stops exactly the process it started: SIGTERM (Celery warm shutdown), or SIGKILL for crash tests.

By default each test worker gets a free health port and its own heartbeat file; with ``health_port=None`` the
worker's own settings decide (worker slots), and the port it bound is read from its start log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import S3_ENV, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The line a worker logs once it has taken its slot (worker.service.telemetry).
SLOT_LINE = re.compile(r"worker slot (\d+): metrics port (\w+), health port (\w+), heartbeat file (\S+)")


def worker_env(
    redis_url: str,
    weights: Path,
    *,
    s3_endpoint: str | None = None,
    http_ports: tuple[int, ...] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a test worker: fast retries, short visibility timeout, loopback sources allowed."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")},
        **S3_ENV,
        "PYTHONUNBUFFERED": "1",
        "FAKESAKE_REDIS__URL": redis_url,
        "FAKESAKE_MODEL__WEIGHTS": str(weights),
        "FAKESAKE_MODEL__DEVICE": "cpu",
        "FAKESAKE_MODEL__THREADS": "1",
        "FAKESAKE_BATCH__MAX_SIZE": "16",
        "FAKESAKE_BATCH__MAX_WAIT_MS": "20",
        "FAKESAKE_FETCH__ALLOW_PRIVATE": "127.0.0.0/8",
        "FAKESAKE_FETCH__ALLOWED_PORTS": ",".join(str(p) for p in (80, 443, *http_ports)),
        "FAKESAKE_FETCH__TOTAL_TIMEOUT_S": "10",
        "FAKESAKE_RETRY__BACKOFF_BASE_S": "0.2",
        "FAKESAKE_RETRY__BACKOFF_MAX_S": "1",
        "FAKESAKE_REDIS__VISIBILITY_TIMEOUT_S": "8",
        "FAKESAKE_RATE_LIMIT__MAX_DEFER_S": "2",
        "FAKESAKE_LEDGER__GRACE_S": "12",  # above the visibility timeout; lost jobs come back within ~14 s
        "FAKESAKE_LEDGER__SWEEP_INTERVAL_S": "2",
        "FAKESAKE_METRICS__PORT": "0",
        "FAKESAKE_LOG__LEVEL": "INFO",
    }
    if s3_endpoint:
        env["FAKESAKE_S3__ENDPOINT_URL"] = s3_endpoint
        env["FAKESAKE_S3__REGION"] = "us-east-1"
    env.update(extra or {})
    return env


@dataclass
class WorkerProcess:
    env: dict[str, str]
    name: str = "w1"
    concurrency: int = 24
    health_port: int | None = field(default_factory=free_port)  # None: the worker's settings decide (slots)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="fakesake-worker-", suffix=".log")[1]))

    def start(self, wait_ready_s: float = 120.0) -> WorkerProcess:
        env = dict(self.env)
        if self.health_port is not None:
            env["FAKESAKE_METRICS__HEALTH_PORT"] = str(self.health_port)
            env["FAKESAKE_METRICS__HEARTBEAT_FILE"] = str(self.log_path.with_suffix(".heartbeat"))
        cmd = [
            sys.executable,
            "-m",
            "worker.service.cli",
            "worker",
            "--concurrency",
            str(self.concurrency),
            "--hostname",
            f"{self.name}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait_ready_s:
            self.wait_ready(wait_ready_s)
        return self

    def slot(self) -> dict[str, str] | None:
        """What the worker's start line says it took (slot, metrics_port, health_port, heartbeat_file), or None."""
        try:
            match = SLOT_LINE.search(self.log_path.read_text(errors="replace"))
        except OSError:
            return None
        if match is None:
            return None
        return dict(zip(("slot", "metrics_port", "health_port", "heartbeat_file"), match.groups(), strict=True))

    def ready(self) -> bool:
        if self.health_port is None:
            taken = self.slot()
            if taken is None or not taken["health_port"].isdigit():
                return False
            self.health_port = int(taken["health_port"])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200 and json.loads(resp.read()).get("ok", True))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def health(self, path: str = "/livez") -> dict[str, Any]:
        """The health endpoint's JSON body, whatever its status (503 bodies carry the reason)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        return body

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout_s}s:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is cleaned up or handed back."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM: Celery's warm shutdown; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (Linux /proc)."""
        return self._status_bytes("VmRSS")

    def peak_rss_bytes(self) -> int:
        """Highest resident memory the worker process has had so far (``VmHWM``)."""
        return self._status_bytes("VmHWM")

    def _status_bytes(self, name: str) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {name} in /proc/{self.pid}/status")


@contextlib.contextmanager
def running_worker(env: dict[str, str], name: str = "w1", **kw: object) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env=env, name=name, **kw)  # type: ignore[arg-type]
    worker.start()
    try:
        yield worker
    finally:
        worker.terminate()
        if os.environ.get("FAKESAKE_KEEP_WORKER_LOGS") is None:
            with contextlib.suppress(OSError):
                worker.log_path.unlink()
