"""``fakesake worker --processes N``: N worker processes on one host (one device), one metrics scrape.

Why: one Python process cannot feed a current GPU. Each job costs the consumer and a job thread some Python
time under one GIL (Celery's own per-message work alone limits a process to a few hundred jobs/s, see
``python -m bench --only fleet``), while the model runs far more images per second than that. N processes
share the device and multiply the intake.

The supervisor runs no job and loads no model (no torch here). It starts N children, each a plain
``fakesake worker`` with the same options; each takes its worker slot as any worker does
(:mod:`worker.service.slots`: health port ``+10·k``, heartbeat file ``-k``, its lock), and runs on a disjoint
share of the supervisor's CPUs (:mod:`worker.service.cpus`; ``model.cpus=inherit`` turns that off): a GIL-bound
process runs faster on CPUs of its own than bouncing across all of them. Then it:

- serves ONE ``/metrics`` on ``metrics.port`` for all of them: the children run prometheus-client's multiprocess
  mode in a directory of this supervisor's (``PROMETHEUS_MULTIPROC_DIR``, emptied at start, removed at the end),
  the supervisor merges their files at scrape time, adds the queue depth read from Redis, and reports each
  child's resident memory, restarts and liveness (children serve no metrics port of their own);
- restarts a child that exits while the supervisor is not stopping (a crash, a SIGKILL, a stalled consumer's
  exit 70), after a backoff that grows while children keep dying young. A child that exits 2 (it cannot start:
  configuration, Redis unreachable at start) ends the supervisor with 2 as well: a restart would fail alike;
- watches every child's heartbeat file (:class:`HeartbeatWatch`; a child's own ``/livez`` judges the same
  snapshot) and kills one that stopped being live for :data:`LIVENESS_GRACE_S` (or never became live within
  :data:`START_GRACE_S` of its start), so that it is restarted: a process wedged too deep to end itself. The
  pod's probes ask slot 0 only; this covers every slot, and ``fakesake_worker_process_live`` / ``_ready`` show
  each child;
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
from worker.inference.process_pool import usable_cores
from worker.service import cpus as cpu_sets
from worker.service.health import UnreadableHeartbeat, judge, read_heartbeat
from worker.service.slots import SlotPlan

log = logging.getLogger(__name__)

#: How a child is started (then ``worker`` and the options): the CLI module of this interpreter.
CHILD_COMMAND = [sys.executable, "-m", "worker.service.cli"]
EXIT_START_FAILED = 2  # runtime.EXIT_START_FAILED, not imported: runtime pulls in the core and pydantic models
YOUNG_S = 30.0  # a child that dies younger than this counts towards the restart backoff
BACKOFF_MAX_S = 30.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: A child whose heartbeat says "not live" this long after it was last live is killed (and restarted): what the
#: deploy files' liveness probe allows slot 0 (4 failures 15 s apart).
LIVENESS_GRACE_S = 60.0
#: A starting child (imports, model load, CUDA init) has this long to beat first: the startup probe's 2 min, plus
#: room for a supervisor that starts all children at once on a busy host.
START_GRACE_S = 180.0
HEALTH_EVERY_S = 5.0  # how often the heartbeat files are read


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
    live: bool = False  # what its heartbeat said at the last look (HeartbeatWatch)
    ready: bool = False
    live_at: float = 0.0  # monotonic time its heartbeat last said live (before started_at: not since its start)
    unresponsive_kills: int = 0


class HeartbeatWatch:
    """The children's heartbeat snapshots, found by pid in every slot's heartbeat file (a child takes the first
    free slot, which need not be its index), judged as the children's own probes judge them."""

    def __init__(self, plan: SlotPlan, max_age_s: float) -> None:
        self.plan, self.max_age_s = plan, max_age_s

    def snapshots(self) -> dict[int, dict[str, Any]]:
        """pid -> its latest snapshot, over every slot's heartbeat file (unreadable or absent ones skipped)."""
        found: dict[int, dict[str, Any]] = {}
        for slot in self.plan.all():
            if slot.heartbeat_file is None:
                continue
            try:
                snapshot = read_heartbeat(slot.heartbeat_file)
            except UnreadableHeartbeat:
                continue  # a slot nobody has taken yet (or a damaged file: then no child is found in it)
            if isinstance(snapshot.get("pid"), int):
                found[snapshot["pid"]] = snapshot
        return found

    def judge(self, snapshot: dict[str, Any] | None, now: float) -> tuple[bool, bool, str]:
        """(live, ready, why not live) for one child's snapshot (None: it has written none)."""
        if snapshot is None:
            return False, False, "no heartbeat file names its pid"
        live, why = judge(snapshot, "live", self.max_age_s, now)
        return live, live and judge(snapshot, "ready", self.max_age_s, now)[0], why


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
        live = GaugeMetricFamily(
            "fakesake_worker_process_live",
            "1 if the process's heartbeat said live at the last look",
            labels=["process"],
        )
        ready = GaugeMetricFamily(
            "fakesake_worker_process_ready",
            "1 if the process's heartbeat said ready (model loaded, Redis answering) at the last look",
            labels=["process"],
        )
        restarts = CounterMetricFamily(
            "fakesake_worker_process_restarts", "Times the supervisor restarted a worker process", labels=["process"]
        )
        kills = CounterMetricFamily(
            "fakesake_worker_process_unresponsive_kills",
            "Times the supervisor killed a worker process whose heartbeat stopped saying live",
            labels=["process"],
        )
        for child in self._children:
            label = [str(child.index)]
            alive = child.proc is not None and child.proc.poll() is None
            up.add_metric(label, 1 if alive else 0)
            live.add_metric(label, 1 if alive and child.live else 0)
            ready.add_metric(label, 1 if alive and child.ready else 0)
            restarts.add_metric(label, child.restarts)
            kills.add_metric(label, child.unresponsive_kills)
            size = resident_bytes(child.proc.pid) if alive and child.proc is not None else None
            if size is not None:
                rss.add_metric(label, size)
        return [rss, up, live, ready, restarts, kills]


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
        watch: HeartbeatWatch | None = None,
        liveness_grace_s: float = LIVENESS_GRACE_S,
        start_grace_s: float = START_GRACE_S,
        health_every_s: float = HEALTH_EVERY_S,
        cpu_shares: list[tuple[int, ...]] | None = None,
    ) -> None:
        self.children = [Child(k) for k in range(processes)]
        # Child k's CPUs (cpus.child_shares), handed over as its model.cpus; a restarted child gets the same ones.
        self.cpu_shares = cpu_shares
        self.watch = watch
        self.liveness_grace_s, self.start_grace_s, self.health_every_s = liveness_grace_s, start_grace_s, health_every_s
        self._health_due = 0.0
        self.argv = argv
        self.metrics_dir = metrics_dir
        self.env = {**env, MULTIPROC_ENV: str(metrics_dir)}
        self.command = list(command or CHILD_COMMAND)
        self.exit_code = 0
        self._stopping = threading.Event()

    def start_child(self, child: Child) -> None:
        cmd = [*self.command, "worker", *child_argv(child.index, self.argv)]
        env, where = self.env, "the supervisor's CPUs"
        if self.cpu_shares is not None:
            share = cpu_sets.format_list(self.cpu_shares[child.index])
            env, where = {**self.env, cpu_sets.ENV: share}, f"CPUs {share}"
        child.proc = subprocess.Popen(cmd, env=env)
        child.started_at = time.monotonic()
        log.info("worker process %d started (pid %d) on %s", child.index, child.proc.pid, where)

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
            if self.watch is not None and time.monotonic() >= self._health_due:
                self._health_due = time.monotonic() + self.health_every_s
                self._check_heartbeats(self.watch)
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

    def _check_heartbeats(self, watch: HeartbeatWatch) -> None:
        """Record each running child's live/ready; kill one not live for too long (:meth:`_watch` restarts it)."""
        snapshots, now, wall = watch.snapshots(), time.monotonic(), time.time()
        for child in self.children:
            if child.proc is None or child.proc.poll() is not None:
                child.live = child.ready = False
                continue
            child.live, child.ready, why = watch.judge(snapshots.get(child.proc.pid), wall)
            if child.live:
                child.live_at = now
                continue
            since_live = child.live_at >= child.started_at
            deadline = child.live_at + self.liveness_grace_s if since_live else child.started_at + self.start_grace_s
            if now < deadline or self._stopping.is_set():
                continue
            log.error(
                "worker process %d (pid %d) %s (%s); killing it to start a fresh one",
                child.index,
                child.proc.pid,
                f"not live for {now - child.live_at:.0f} s"
                if since_live
                else f"never live in {now - child.started_at:.0f} s",
                why,
            )
            child.unresponsive_kills += 1
            child.proc.kill()

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


def run_supervisor(
    processes: int,
    argv: list[str],
    *,
    cpus: str = "",
    metrics_port: int,
    bind_host: str,
    redis_client: Any,
    watch: HeartbeatWatch | None = None,
) -> int:
    """``fakesake worker --processes N``: supervise N workers until SIGTERM/SIGINT; the exit code. ``watch``: the
    children's heartbeat files (None when heartbeat files are off: then their liveness is not watched); ``cpus``:
    ``model.cpus`` (:mod:`worker.service.cpus`: each child gets a share of this process's CPUs unless "inherit")."""
    env = dict(os.environ)
    metrics_dir, made = metrics_directory(env)
    if metrics_port:
        env["FAKESAKE_METRICS__PORT"] = "0"  # the supervisor serves the one scrape; children serve health only
    shares = cpu_sets.child_shares(cpus, processes)
    env.update(thread_budget(env, processes, usable_cores()))
    if watch is None:
        log.warning("no heartbeat file (FAKESAKE_METRICS__HEARTBEAT_FILE empty): a wedged worker process is not killed")
    supervisor = Supervisor(processes, argv, env, metrics_dir=metrics_dir, watch=watch, cpu_shares=shares)
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
