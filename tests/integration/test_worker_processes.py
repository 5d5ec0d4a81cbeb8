"""``fakesake worker --processes 2``: two real worker processes under one supervisor, one metrics scrape.

Default settings but for the supervisor's scrape port (a free one: other tests on this host may hold 9808); the
children take their worker slots (health port +10·k, heartbeat file -k) as any worker does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from producers.contract import Status
from tests.integration.conftest import Stack
from tests.support.images import encode, photo
from tests.support.servers import Route, free_port
from tests.support.workers import REPO_ROOT, SLOT_LINE


class Fleet:
    def __init__(self, env: dict[str, str]) -> None:
        self.metrics_port = int(env["FAKESAKE_METRICS__PORT"])
        self.log = Path(tempfile.mkstemp(prefix="fakesake-fleet-", suffix=".log")[1])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.service.cli", "worker", "--processes", "2"],
                env=env,
                cwd=REPO_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def health_ports(self) -> set[int]:
        return {int(m[2]) for m in SLOT_LINE.findall(self.text())}

    def health(self, port: int) -> dict[str, object]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                body: dict[str, object] = json.loads(resp.read())
        except OSError:
            return {}
        return body

    def ready_pids(self) -> dict[int, int]:
        """Health port -> pid of each child whose /readyz answers ok."""
        found = {}
        for port in self.health_ports():
            body = self.health(port)
            if body.get("status") == "ok":
                found[port] = int(body["pid"])  # type: ignore[call-overload]
        return found

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def until(self, check: Callable[[], object], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} (supervisor exit {self.proc.poll()}):\n{self.text()[-4000:]}")
            time.sleep(0.3)


@pytest.fixture()
def fleet(stack: Stack) -> Iterator[Fleet]:
    env = {k: v for k, v in stack.env().items() if not k.startswith("FAKESAKE_METRICS__")}
    env["FAKESAKE_METRICS__PORT"] = str(free_port())
    f = Fleet(env)
    try:
        yield f
    finally:
        if f.proc.poll() is None:
            f.proc.kill()  # the test failed before its SIGTERM: leave no children behind
            for pid in f.ready_pids().values():
                subprocess.run(["kill", "-9", str(pid)], check=False)
            f.proc.wait()


def cpus_of(pid: int) -> frozenset[int]:
    """The CPUs every thread of ``pid`` may run on (asserted the same for all of them)."""
    masks = {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}
    assert len(masks) == 1, f"threads of {pid} run on different CPUs: {masks}"
    return masks.pop()


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert match, f"no {name}{labels} in the scrape"
    return float(match.group(1))


def test_two_processes_share_the_jobs_one_scrape_restart_and_stop(stack: Stack, fleet: Fleet) -> None:
    fleet.until(lambda: len(fleet.ready_pids()) == 2, 240, "two ready children")
    pids = fleet.ready_pids()
    # Each child runs on a share of the CPUs of its own, every thread of it (with one CPU, both on that one).
    shares = {pid: cpus_of(pid) for pid in pids.values()}
    mine = frozenset(os.sched_getaffinity(0))
    if len(mine) >= 2:
        first, second = shares.values()
        assert first and second and not first & second and first | second == mine, shares
    else:
        assert set(shares.values()) == {mine}

    producer = stack.producer("fleet")
    data = encode(photo(96, 80, seed=3), "JPEG", quality=85)
    urls = [stack.http.add(f"/fleet/{i}.jpg", Route(body=data, content_type="image/jpeg")) for i in range(60)]
    results = producer.wait(producer.submit_many(urls), timeout_s=180)
    assert len(results) == 60 and all(r.status is Status.OK for r in results.values())

    # Both children took jobs (Celery's own per-node counts), and the one scrape sums them.
    control = Celery(broker=stack.redis_url, set_as_current=False)
    stats = control.control.inspect(timeout=5).stats() or {}
    per_node = {node: sum(s.get("total", {}).values()) for node, s in stats.items()}
    assert len(per_node) == 2 and all(n > 0 for n in per_node.values()), per_node
    text = fleet.scrape()
    finished = _sample(text, "fakesake_jobs_total", '{code="none",lane="interactive",status="ok"}')
    # Every job counted once (more only if a slow job was redelivered, which Celery counts as well), and more
    # than either child ran: the scrape sums both children's counters.
    assert 60 <= finished <= sum(per_node.values()) and finished > max(per_node.values())
    for k in ("0", "1"):
        assert _sample(text, "fakesake_worker_process_up", f'{{process="{k}"}}') == 1
        assert _sample(text, "fakesake_worker_process_resident_memory_bytes", f'{{process="{k}"}}') > 50e6
    assert "fakesake_queue_depth" in text  # read from Redis by the supervisor
    # Each child's heartbeat file, as the supervisor reads it (every 5 s; a child rewrites its file as soon as its
    # model is loaded): both ready, neither killed.
    fleet.until(
        lambda: all(_sample(fleet.scrape(), "fakesake_worker_process_ready", f'{{process="{k}"}}') for k in "01"),
        30,
        "both children ready in the supervisor's scrape",
    )
    after = fleet.scrape()
    assert [_sample(after, "fakesake_worker_process_unresponsive_kills_total", f'{{process="{k}"}}') for k in "01"] == [
        0,
        0,
    ]

    # A killed child is restarted (its slot, and so its health port, is free again).
    port, victim = sorted(pids.items())[0]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    fleet.until(lambda: fleet.ready_pids().get(port) not in (None, victim), 240, "the killed child restarted")
    assert cpus_of(fleet.ready_pids()[port]) == shares[victim]  # its successor runs where it ran
    assert (
        sum(_sample(fleet.scrape(), "fakesake_worker_process_restarts_total", f'{{process="{k}"}}') for k in ("0", "1"))
        == 1
    )

    # SIGTERM stops the supervisor and every child.
    children = list(fleet.ready_pids().values())
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.proc.wait(timeout=120) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
