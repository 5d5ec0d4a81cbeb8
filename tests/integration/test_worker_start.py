"""A worker starts completely or not at all, and several workers share one host with default settings.

Real ``fakesake worker`` processes on the module's stack (real redis-server, S3 server, HTTP server).
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from producers.contract import Status
from tests.integration.conftest import Stack, start_workers
from tests.support.images import encode, photo
from tests.support.servers import Route, free_port
from tests.support.workers import WorkerProcess
from worker.service.health import check


def _default_endpoints(stack: Stack) -> dict[str, str]:
    """The stack's worker environment with the code's own metrics/health defaults (ports, slots, heartbeat)."""
    return {k: v for k, v in stack.env().items() if not k.startswith("FAKESAKE_METRICS__")}


def test_two_workers_with_default_settings_share_a_host(stack: Stack) -> None:
    env = _default_endpoints(stack)
    with start_workers([env, env], ["host0", "host1"], ready_s=180, health_port=None) as workers:
        taken = [w.slot() for w in workers]
        assert all(t is not None for t in taken)
        for key in ("slot", "metrics_port", "health_port", "heartbeat_file"):
            assert len({t[key] for t in taken if t is not None}) == 2, f"both workers took the same {key}"
        for w, t in zip(workers, taken, strict=True):
            assert t is not None
            assert w.health("/readyz")["status"] == "ok"  # each answered its own /readyz
            with urllib.request.urlopen(f"http://127.0.0.1:{t['metrics_port']}/metrics", timeout=5) as resp:
                assert b"fakesake_model_load_seconds" in resp.read()
            # Each heartbeat file is its own worker's: probes by file see the right process.
            beat = json.loads(Path(t["heartbeat_file"]).read_text())
            assert beat["pid"] == w.pid and beat["health_port"] == w.health_port
            assert check("live", file=t["heartbeat_file"])[0]

        producer = stack.producer("two-workers")
        data = encode(photo(96, 80, seed=7), "JPEG", quality=85)
        urls = [stack.http.add(f"/two-workers/{i}.jpg", Route(body=data, content_type="image/jpeg")) for i in range(40)]
        ids = producer.submit_many(urls)
        results = producer.wait(ids, timeout_s=120)
        assert len(results) == len(ids)
        assert all(r.status is Status.OK for r in results.values()), [r.error for r in results.values()]
        for w in workers:
            assert w.alive() and "OSError" not in w.log_path.read_text(errors="replace")


@pytest.fixture()
def held_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


StartCase = Callable[[int], tuple[dict[str, str], str]]

START_FAILURES: dict[str, StartCase] = {
    "metrics port in use": lambda port: (
        {"FAKESAKE_METRICS__PORT": str(port), "FAKESAKE_METRICS__SLOTS": "1"},
        f"fakesake: config: metrics port {port} is in use; set FAKESAKE_METRICS__PORT",
    ),
    "model cannot load": lambda _: (
        {"FAKESAKE_MODEL__WEIGHTS": "/nonexistent/weights.safetensors"},
        "fakesake: config: model ffs-mj-5m: weights file /nonexistent/weights.safetensors does not exist",
    ),
    "bad settings": lambda _: (
        {"FAKESAKE_METRICS__HEARTBEAT_MAX_AGE_S": "1"},
        "fakesake: config: invalid settings: FAKESAKE_METRICS__*: Value error, metrics.heartbeat_max_age_s",
    ),
    "redis unreachable": lambda _: (
        {"FAKESAKE_REDIS__URL": f"redis://127.0.0.1:{free_port()}/0"},
        "fakesake: unavailable: cannot reach Redis at redis://127.0.0.1:",
    ),
}


@pytest.mark.parametrize("case", list(START_FAILURES))
def test_a_worker_that_cannot_start_exits_before_taking_a_job(stack: Stack, held_port: int, case: str) -> None:
    overrides, expected = START_FAILURES[case](held_port)
    producer = stack.producer(f"no-start-{case.replace(' ', '-')}")
    with stack.client() as client:
        waiting = client.llen("fakesake.interactive")
        (job_id,) = producer.submit_many(["http://127.0.0.1:9/never-fetched.jpg"])
        worker = WorkerProcess(env=stack.env(overrides), name="nostart")
        worker.start(wait_ready_s=0)
        try:
            code = worker.proc.wait(timeout=120) if worker.proc is not None else None
        except subprocess.TimeoutExpired:
            worker.kill()
            pytest.fail(f"the worker kept running although it could not start:\n{worker.tail()}")
        assert code == 2, worker.tail()
        lines = [
            line for line in worker.log_path.read_text(errors="replace").splitlines() if line.startswith("fakesake:")
        ]
        assert len(lines) == 1 and lines[0].startswith(expected), worker.tail()
        # Not consumed, not failed: the job still waits in its lane for a worker that can serve it.
        assert client.llen("fakesake.interactive") == waiting + 1
        assert client.hlen("unacked") == 0
        assert producer.get_result(job_id) is None
        client.delete("fakesake.interactive")  # leave the module's shared lane as it was
        worker.log_path.unlink()
