"""``fakesake worker --processes N``: N worker processes on one host (one device), one metrics scrape.

Why: one Python process cannot feed a current GPU. Each job costs the consumer and a job thread some Python
time under one GIL (Celery's own per-message work alone limits a process to a few hundred jobs/s, see
``python -m bench --only fleet``), while the model runs far more images per second than that. N processes
share the device and multiply the intake.

The supervisor runs no job and loads no model (no torch here). It starts N children, each a plain
``fakesake worker`` with the same options; each takes its worker slot as any worker does
(:mod:`worker.service.slots`: health port ``+10·k``, heartbeat file ``-k``, its lock). Then it:

- serves ONE ``/metrics`` on ``metrics.port`` for all of them: the children run prometheus-client's multiprocess
  mode in a directory of this supervisor's (``PROMETHEUS_MULTIPROC_DIR``, emptied at start, removed at the end),
  the supervisor merges their files at scrape time, adds the queue depth read from Redis, and reports each
  child's resident memory, restarts and liveness (children serve no metrics port of their own);
- restarts a child that exits while the supervisor is not stopping (a crash, a SIGKILL, a stalled consumer's
  exit 70), after a backoff that grows while children keep dying young. A child that exits 2 (it cannot start:
  configuration, Redis unreachable at start) ends the supervisor with 2 as well: a restart would fail alike;
- forwards SIGTERM/SIGINT to every child (Celery's warm shutdown: running jobs finish, unacked ones return to
  the queue) and exits once all have stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producers.errors import ConfigError

log = logging.getLogger(__name__)

#: How a child is started (then ``worker`` and the options): the CLI module of this interpreter.
CHILD_COMMAND = [sys.executable, "-m", "worker.service.cli"]
EXIT_START_FAILED = 2  # runtime.EXIT_START_FAILED, not imported: runtime pulls in the core and pydantic models
YOUNG_S = 30.0  # a child that dies younger than this counts towards the restart backoff
BACKOFF_MAX_S = 30.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def take_processes(argv: list[str]) -> tuple[int, list[str]]:
    """``--processes N`` (or ``--processes=N``) out of ``fakesake worker`` options: (N, the rest); N = 1 if absent.

    ValueError when N is missing or not a positive integer."""
    rest: list[str] = []
    processes = 1
    args = iter(argv)
    for arg in args:
        if arg == "--processes":
            value = next(args, None)
        elif arg.startswith("--processes="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
            continue
        if value is None or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--processes needs a positive integer, got {value!r}")
        processes = int(value)
    return processes, rest


def child_argv(index: int, argv: list[str]) -> list[str]:
    """The options of child ``index``: the supervisor's, plus a node name of its own unless one was given."""
    if any(a in ("-n", "--hostname") or a.startswith(("--hostname=", "-n")) for a in argv):
        return list(argv)
    return [*argv, f"--hostname=fakesake{index}@%h"]


def thread_budget(env: dict[str, str], processes: int, cores: int) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for each child: its share of the cores, unless the operator chose threads already.

    Why: torch's CPU ops (preprocessing on every worker; the model too on CPU) default to one thread per core in
    EACH process, so N processes oversubscribe the CPU N times over; on small tensors the threads then mostly
    wait for each other (a 64 px JPEG's preprocessing: 35 ms with 2 threads, 3.8 ms with 1, on a loaded 2-core
    host).
    """
    if "OMP_NUM_THREADS" in env or env.get("FAKESAKE_MODEL__THREADS"):
        return {}
    return {"OMP_NUM_THREADS": str(max(1, cores // processes))}


def resident_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (Linux ``/proc``), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    young_deaths: int = 0  # deaths in a row, each younger than YOUNG_S: the restart backoff grows with them
    due_at: float = 0.0  # when a dead child is started again


class FleetCollector:
    """Per child: resident memory, restarts, whether it runs (read when Prometheus scrapes)."""

    def __init__(self, children: list[Child]) -> None:
        self._children = children

    def describe(self) -> Iterable[Any]:
        return []  # registration must not call collect() before the children exist

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rss = GaugeMetricFamily(
            "fakesake_worker_process_resident_memory_bytes",
            "Resident memory of each worker process",
            labels=["process"],
        )
        up = GaugeMetricFamily("fakesake_worker_process_up", "1 while the worker process runs", labels=["process"])
        restarts = CounterMetricFamily(
            "fakesake_worker_process_restarts", "Times the supervisor restarted a worker process", labels=["process"]
        )
        for child in self._children:
            label = [str(child.index)]
            alive = child.proc is not None and child.proc.poll() is None
            up.add_metric(label, 1 if alive else 0)
            restarts.add_metric(label, child.restarts)
            size = resident_bytes(child.proc.pid) if alive and child.proc is not None else None
            if size is not None:
                rss.add_metric(label, size)
        return [rss, up, restarts]


class Supervisor:
    """Runs ``processes`` children of ``command + ['worker', *argv]`` with ``env``; see the module doc."""

    def __init__(
        self,
        processes: int,
        argv: list[str],
        env: dict[str, str],
        *,
        metrics_dir: Path,
        command: list[str] | None = None,
    ) -> None:
        self.children = [Child(k) for k in range(processes)]
        self.argv = argv
        self.metrics_dir = metrics_dir
        self.env = {**env, MULTIPROC_ENV: str(metrics_dir)}
        self.command = list(command or CHILD_COMMAND)
        self.exit_code = 0
        self._stopping = threading.Event()

    def start_child(self, child: Child) -> None:
        cmd = [*self.command, "worker", *child_argv(child.index, self.argv)]
        child.proc = subprocess.Popen(cmd, env=self.env)
        child.started_at = time.monotonic()
        log.info("worker process %d started (pid %d)", child.index, child.proc.pid)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every child to stop (warm shutdown); :meth:`run` returns once they have."""
        self._stopping.set()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def run(self, poll_s: float = 0.5) -> int:
        """Start the children and keep them running until :meth:`stop`; returns the supervisor's exit code."""
        for child in self.children:
            self.start_child(child)
        while not self._stopping.is_set():
            for child in self.children:
                self._watch(child)
            self._stopping.wait(poll_s)
        for child in self.children:
            if child.proc is not None:
                child.proc.wait()
                self._dead(child)
        return self.exit_code

    def _watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if now >= child.due_at and not self._stopping.is_set():
                child.restarts += 1
                self.start_child(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        self._dead(child)
        if code == EXIT_START_FAILED:
            log.error("worker process %d could not start (exit %d); stopping the others", child.index, code)
            self.exit_code = EXIT_START_FAILED
            self.stop()
            return
        child.young_deaths = child.young_deaths + 1 if now - child.started_at < YOUNG_S else 0
        backoff = min(BACKOFF_MAX_S, 2.0 ** (child.young_deaths - 1)) if child.young_deaths else 0.0
        log.warning("worker process %d exited with %s; restarting in %.0f s", child.index, code, backoff)
        child.proc, child.due_at = None, now + backoff

    def _dead(self, child: Child) -> None:
        from prometheus_client import multiprocess

        assert child.proc is not None
        # its live gauges leave the sum; prometheus-client leaves these two untyped
        multiprocess.mark_process_dead(child.proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]


def metrics_directory(env: dict[str, str]) -> tuple[Path, bool]:
    """The multiprocess directory (``PROMETHEUS_MULTIPROC_DIR`` if set, else a new temporary one), emptied of
    an earlier run's files; and whether the supervisor made it (and removes it at the end)."""
    given = env.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="fakesake-metrics-")), True


def serve_metrics(supervisor: Supervisor, port: int, host: str, redis_client: Any) -> Any:
    """One ``/metrics`` for all children: their merged files, queue depth from Redis, the fleet's own gauges."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from worker.service.metrics import RedisDepthCollector

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(supervisor.metrics_dir))  # type: ignore[no-untyped-call]
    registry.register(FleetCollector(supervisor.children))
    if redis_client is not None:
        registry.register(RedisDepthCollector(redis_client))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; set FAKESAKE_METRICS__PORT to a free one"
        ) from None
    log.info("metrics of %d worker processes on http://%s:%s/metrics", len(supervisor.children), host, port)
    return server


def run_supervisor(processes: int, argv: list[str], *, metrics_port: int, bind_host: str, redis_client: Any) -> int:
    """``fakesake worker --processes N``: supervise N workers until SIGTERM/SIGINT; the exit code."""
    env = dict(os.environ)
    metrics_dir, made = metrics_directory(env)
    if metrics_port:
        env["FAKESAKE_METRICS__PORT"] = "0"  # the supervisor serves the one scrape; children serve health only
    env.update(thread_budget(env, processes, os.cpu_count() or 1))
    supervisor = Supervisor(processes, argv, env, metrics_dir=metrics_dir)
    server = None
    try:
        if metrics_port:
            server = serve_metrics(supervisor, metrics_port, bind_host, redis_client)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, _f: supervisor.stop(signal.SIGTERM))
        return supervisor.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if made:
            shutil.rmtree(metrics_dir, ignore_errors=True)
