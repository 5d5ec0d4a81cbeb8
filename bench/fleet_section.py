"""Section ``fleet``: the queue machinery's own limit per process, and several worker processes per host.

Consumers of the same lanes, each on its own database of ONE redis-server, measured in interleaved passes (each
idles in BRPOP while another runs):

- ``noop``: a no-op Celery task on fakesake's own Celery configuration (``bench/noop_worker.py``), the same pool
  and concurrency as ``fakesake worker``: what Celery + kombu + Redis allow one process; ``noop2``: two of them,
  what this machine gives a second process at all;
- ``x1``: the real ``fakesake worker`` with a stub classifier (``bench/stub_worker.py``) on small JPEGs, taking
  jobs through Celery's consumer (the default): every per-job step but the model (fetch, decode, the CPU
  worker's numpy preprocessing to the model's 224^2 input, batching, counters, ledger, result store);
- ``b1``: the same with the bulk intake (``batch.intake=bulk``, ``worker/service/intake.py``); ``b2``: that under
  ``--processes 2`` (one supervisor, one metrics scrape, each child on CPUs of its own: ``worker/service/cpus.py``);
  ``b1p``: ``b1`` pinned to one CPU (``model.cpus``), what each ``b2`` child gets on a 2-core machine, so the
  like-for-like scaling of a second process is ``b2 / b1p``.

Jobs/s run from the first enqueue to the last result stored (the no-op: to the lanes and kombu's unacked hash
empty). Redis commands per job come from ``INFO commandstats`` around one pass of each consumer.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import redis

from bench.common import Context, Row, interleaved, median, ratio_of
from bench.corpus import photo_like
from bench.redis_counts import describe, per_job, producer_commands, worker_round_trips
from producers.client import Producer
from producers.contract import ALL_QUEUES, Keys
from producers.settings import ProducerSettings, QueueSettings, RedisSettings
from tests.support.servers import free_port, redis_server
from tests.support.workers import REPO_ROOT

TARGET_PER_PROCESS = 0.70
TARGET_TWO = 1.7
IMAGE_PX = 64
#: The one-process stub consumers compared row by row with the no-op: (consumer, how it takes jobs)
STUB_INTAKES = (("x1", "Celery intake"), ("b1", "bulk intake"))
UNACKED = "unacked"  # kombu's Redis transport: hash of delivered, not yet acked messages


def small_images(root: Path, count: int = 16) -> list[str]:
    folder = root / f"fleet-jpeg-{IMAGE_PX}"
    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        if not path.exists():
            photo_like(IMAGE_PX, IMAGE_PX, seed=i).save(path, "JPEG", quality=90)
        uris.append(path.as_uri())
    return uris


def base_env(redis_url: str, workdir: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        FAKESAKE_REDIS__URL=redis_url,
        FAKESAKE_MODEL__DEVICE="cpu",
        FAKESAKE_FETCH__ALLOW_LOCAL_FILES="true",
        FAKESAKE_METRICS__PORT=str(free_port()),
        FAKESAKE_METRICS__HEALTH_PORT=str(free_port()),
        FAKESAKE_METRICS__HEARTBEAT_FILE=str(workdir / f"{name}.heartbeat"),
        FAKESAKE_LOG__LEVEL="WARNING",
    )
    return env


class Consumer:
    """Consumer processes (one per command, each maybe a process tree) on their own Redis database; ``rate`` runs
    one pass of ``n`` jobs."""

    def __init__(self, name: str, cmds: list[list[str]], env: dict[str, str], redis_url: str, log_dir: Path) -> None:
        self.name, self.env, self.redis_url = name, env, redis_url
        self.stores = not name.startswith("noop")  # a no-op task stores no result: its pass ends when the lanes drain
        self.log_path = log_dir / f"fleet-{name}.log"
        with open(self.log_path, "wb") as log:
            self.procs = [
                subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) for cmd in cmds
            ]
        self.proc = self.procs[0]
        self.client = redis.Redis.from_url(redis_url)
        self.producer = Producer(
            ProducerSettings(redis=RedisSettings(url=redis_url), queue=QueueSettings(max_depth=10_000_000), tenant="b")
        )
        self.passes = 0
        self.polls = 0  # poll rounds of wait_drained/wait_stored: their commands are the bench's, not the worker's

    def wait_health(self, ports: list[int], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        for port in ports:
            while not _ok(f"http://127.0.0.1:{port}/readyz"):
                if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.2)

    def wait_drained(self, timeout_s: float) -> None:
        """Until the lanes and kombu's unacked hash are empty (the no-op task stores nothing)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pipe = self.client.pipeline(transaction=False)
            for lane in ALL_QUEUES:
                pipe.llen(lane)
            pipe.hlen(UNACKED)
            self.polls += 1
            if not any(pipe.execute()):
                return
            time.sleep(0.005)
        raise TimeoutError(f"{self.name}: jobs left after {timeout_s}s")

    def wait_stored(self, tenant: str, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.client.zcard(Keys.tenant_index(tenant)) < n:
            self.polls += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: results missing after {timeout_s}s")
            time.sleep(0.005)

    def rate(self, uris: list[str], n: int, stores: bool, timeout_s: float = 600) -> float:
        self.passes += 1
        tenant = f"p{self.passes}"
        sources = [uris[i % len(uris)] for i in range(n)]
        start = time.perf_counter()
        ids = self.producer.submit_many(sources, tenant=tenant)
        if stores:
            self.wait_stored(tenant, n, timeout_s)
        else:
            self.wait_drained(timeout_s)
        elapsed = time.perf_counter() - start
        if stores:
            done = self.producer.wait(ids, tenant=tenant, timeout_s=60)
            bad = [r for r in done.values() if not r.ok]
            if len(done) != n or bad:
                raise RuntimeError(f"{self.name}: {len(done)}/{n} results, {len(bad)} failed: {bad[:1]}")
        return n / elapsed

    def stop(self) -> None:
        self.producer.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def rss_of_children(text: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fakesake_worker_process_resident_memory_bytes{")
    ]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core together has spent busy since boot (all but idle and iowait), /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_while(rate: Callable[[], float], busy: list[float]) -> float:
    """``rate()``, appending to ``busy`` how many cores the whole machine kept busy meanwhile."""
    start_busy, start = machine_busy_s(), time.perf_counter()
    value = rate()
    busy.append((machine_busy_s() - start_busy) / (time.perf_counter() - start))
    return value


def rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    return 0.0


@contextlib.contextmanager
def consumers(ctx: Context, redis_url: str, concurrency: int) -> Iterator[dict[str, Consumer]]:
    """``noop`` / ``noop2``: one / two no-op Celery workers; ``x1``: the stub worker with Celery's intake (the
    default); ``b1`` / ``b2``: with the bulk intake, one process / ``--processes 2``. Each on a database of its own."""
    base = redis_url.rsplit("/", 1)[0]
    py = sys.executable
    lanes = ",".join(ALL_QUEUES)
    made: dict[str, Consumer] = {}

    def noop_cmd(tag: str) -> list[str]:
        cmd = [py, "-m", "celery", "-A", "bench.noop_worker", "worker", "-Q", lanes, "--pool=threads"]
        return [*cmd, f"--concurrency={concurrency}", "--loglevel=WARNING", "-n", f"{tag}{os.getpid()}@%h"]

    try:
        for db, (name, copies) in enumerate((("noop", 1), ("noop2", 2)), start=1):
            env = base_env(f"{base}/{db}", ctx.workdir, name)
            made[name] = Consumer(
                name, [noop_cmd(f"{name}c{i}") for i in range(copies)], env, f"{base}/{db}", ctx.workdir
            )
        stubs = (
            ("x1", 3, "celery", ["-n", f"stub{os.getpid()}@%h"]),
            ("b1", 5, "bulk", ["-n", f"bulk{os.getpid()}@%h"]),
            ("b2", 6, "bulk", ["--processes", "2"]),
            ("b1p", 7, "bulk", ["-n", f"pinned{os.getpid()}@%h"]),
        )
        one_cpu = str(min(os.sched_getaffinity(0)))
        for name, db, intake, extra in stubs:
            env = base_env(f"{base}/{db}", ctx.workdir, name) | {"FAKESAKE_BATCH__INTAKE": intake}
            if name == "b1p":
                env["FAKESAKE_MODEL__CPUS"] = one_cpu
            cmd = [py, "-m", "bench.stub_worker", "worker", *extra]
            made[name] = Consumer(name, [cmd], env, f"{base}/{db}", ctx.workdir)
        for name in ("x1", "b1", "b1p"):
            made[name].wait_health([int(made[name].env["FAKESAKE_METRICS__HEALTH_PORT"])])
        b2_health = int(made["b2"].env["FAKESAKE_METRICS__HEALTH_PORT"])
        made["b2"].wait_health([b2_health, b2_health + 10])
        yield made
    finally:
        for c in made.values():
            c.stop()


def run(ctx: Context) -> list[Row]:
    from worker.service.settings import WorkerSettings, job_threads

    concurrency = job_threads(WorkerSettings.model_validate({}))
    uris = small_images(ctx.workdir)
    n = ctx.n(2000, 600)
    with redis_server() as server, consumers(ctx, server.url, concurrency) as made:
        noop, x1, b1 = made["noop"], made["x1"], made["b1"]
        time.sleep(2.0)  # the no-op workers' start (no readiness endpoint of their own)
        for name, c in made.items():
            c.rate(
                uris, ctx.n(200, 200, smoke=4), not name.startswith("noop")
            )  # warm-up: threads, connections, scripts
        admin = redis.Redis.from_url(server.url)
        enqueue = producer_commands(admin, server.url.rsplit("/", 1)[0] + "/4", uris, n)
        counts = {
            "noop": per_job(admin, noop, n, False, uris, enqueue),
            "x1": per_job(admin, x1, n, True, uris, enqueue),
            "b1": per_job(admin, b1, n, True, uris, enqueue),
        }
        n_rtt = ctx.n(400, 200)  # MONITOR slows Redis down: a short pass of its own, not a timed one
        trips = {
            "noop": worker_round_trips(server.url, noop, uris, n_rtt, False),
            "x1": worker_round_trips(server.url, x1, uris, n_rtt, True),
            "b1": worker_round_trips(server.url, b1, uris, n_rtt, True),
        }
        single = {"noop": noop, "x1": x1, "b1": b1}
        cpu_before = {k: cpu_s(c.proc.pid) for k, c in single.items()}
        busy: dict[str, list[float]] = {name: [] for name in made}
        rates = interleaved(
            {name: partial(busy_while, partial(c.rate, uris, n, c.stores), busy[name]) for name, c in made.items()},
            ctx.passes,
        )
        # CPU per job does not depend on how busy the machine is; the others idle in BRPOP meanwhile.
        cpu_ms = {k: (cpu_s(c.proc.pid) - cpu_before[k]) * 1000 / (n * ctx.passes) for k, c in single.items()}
        sup_metrics = scrape(int(made["b2"].env["FAKESAKE_METRICS__PORT"]))
        rss_children = rss_of_children(sup_metrics)
        rss = {k: rss_of(single[k].proc.pid) for k in ("x1", "b1")}

    def rate_row(name: str, key: str, base: str, base_name: str, target: float | None = None, note: str = "") -> Row:
        """Jobs/s of consumer ``key`` against consumer ``base``, side by side; ``target``: the least ratio."""
        ratio = ratio_of(rates, key, base)
        goal = "" if target is None else f">= {target:.0%}" if target < 1 else f">= {target}x"
        ok = None if target is None else ratio >= target
        return Row("fleet", name, median(rates[key]), "jobs/s", median(rates[base]), base_name, ratio, goal, ok, note)

    jobs = f"{n} jpeg-{IMAGE_PX} jobs, submit -> stored"
    stub = "worker + stub classifier, bulk intake"
    return [
        Row("fleet", f"no-op Celery task, 1 process, {n} jobs", median(rates["noop"]), "jobs/s"),
        rate_row(
            "no-op Celery task, 2 processes (the machine's own scaling)",
            "noop2",
            "noop",
            "1 process",
            note="two no-op workers share 2 cores with redis-server and the bench's producer",
        ),
        rate_row(
            f"worker + stub classifier, Celery intake (default), 1 process, {jobs}", "x1", "noop", "no-op Celery task"
        ),
        rate_row(
            f"{stub}, 1 process, {jobs}",
            "b1",
            "noop",
            "no-op Celery task",
            TARGET_PER_PROCESS,
            "batch.intake=bulk: many jobs per round trip into kombu's unacked records (worker/service/intake.py)",
        ),
        rate_row(
            f"{stub}, --processes 2",
            "b2",
            "b1",
            "1 process",
            TARGET_TWO,
            "each child pinned to a CPU of its own (model.cpus, worker/service/cpus.py)",
        ),
        rate_row(
            f"{stub}, 1 process pinned to one CPU (what each --processes 2 child gets)",
            "b1p",
            "b1",
            "1 process on every CPU",
            note="FAKESAKE_MODEL__CPUS=<one CPU>: the GIL's hand-overs stay on one core",
        ),
        rate_row(
            f"{stub}, --processes 2 vs 1 process pinned to one CPU (like for like)",
            "b2",
            "b1p",
            "1 process on one CPU",
            note="what the second process adds once each runs on a CPU of its own; redis-server and the bench's "
            "producer share the same 2 cores",
        ),
        *(
            Row(
                "fleet",
                f"CPU per job, worker + stub, {label}, 1 process (all passes)",
                cpu_ms[key],
                "ms/job",
                cpu_ms["noop"],
                "no-op Celery task",
                cpu_ms[key] / cpu_ms["noop"] if cpu_ms["noop"] else None,  # a few jobs can cost 0 clock ticks
                note="user + system time of the consumer process over the timed passes, /proc/PID/stat",
            )
            for key, label in STUB_INTAKES
        ),
        *(
            Row(
                "fleet",
                f"Redis commands per job, worker + stub, {label}",
                sum(counts[key].values()),
                "cmd/job",
                sum(counts["noop"].values()),
                "no-op Celery task",
                sum(counts[key].values()) / max(sum(counts["noop"].values()), 1e-9),
                note=f"worker: {describe(counts[key])}; no-op: {describe(counts['noop'])}",
            )
            for key, label in STUB_INTAKES
        ),
        *(
            Row(
                "fleet",
                f"Redis round trips per job, worker + stub, {label}",
                sum(trips[key].values()),
                "trips/job",
                sum(trips["noop"].values()),
                "no-op Celery task",
                note="worker: " + describe(trips[key]) + "; no-op: " + describe(trips["noop"]),
            )
            for key, label in STUB_INTAKES
        ),
        Row(
            "fleet",
            "cores busy, whole machine, during the --processes 2 passes",
            median(busy["b2"]),
            "cores",
            float(os.cpu_count() or 1),
            "cores",
            note="workers, redis-server and the bench's producer; during the other passes: "
            + ", ".join(f"{name} {median(busy[name]):.2f}" for name in ("noop", "noop2", "x1", "b1", "b1p")),
        ),
        Row("fleet", "resident memory, 1 stub worker process (bulk intake)", rss["b1"] / 2**20, "MiB"),
        Row(
            "fleet",
            "resident memory per child, --processes 2 (supervisor's scrape)",
            max(rss_children) / 2**20 if rss_children else None,
            "MiB",
            note=f"children: {', '.join(f'{r / 2**20:.0f}' for r in rss_children)} MiB (stub: no model loaded)",
        ),
    ]


__all__ = ["run"]
