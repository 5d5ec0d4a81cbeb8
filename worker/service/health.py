"""Liveness and readiness of a worker process, and ``fakesake health`` for scripts and probes.

* Liveness comes from a :class:`Heartbeat` daemon thread, not from the Celery pool: a pool busy with a long
  batch (or a blocked task) must not get the pod killed, while a wedged process (heartbeat stopped) must.
  The thread also rewrites a small JSON heartbeat file, so a probe can check health without HTTP.
* Readiness = the model is loaded AND Redis answered a ping recently AND the heartbeat is fresh.
* Both also fail once the Celery consumer's event loop has stopped ticking for ``consumer_stall_s``
  (:meth:`HealthState.consumer_tick`, driven by a consumer bootstep in ``worker.service.celery_app``). A worker whose
  consumer died or wedged (Celery's "Unrecoverable error", a reconnect that never comes back) keeps its
  heartbeat thread alive but takes no more jobs; this is what gets it restarted. The threshold is long
  (default 120 s) because the loop also stops while Celery retries a lost broker connection, and a restart
  does not help a Redis outage.
* A stdlib HTTP server in a daemon thread answers ``/livez`` and ``/readyz`` (``/healthz`` = ``/livez``)
  with 200 or 503 and a JSON body.
* :func:`check` is what ``fakesake health [--live|--ready] [--url URL | --file PATH] [--slot K]`` runs (exit 0 / 1);
  ``--slot`` picks the port and file of worker slot K (:mod:`worker.service.slots`) when several share a host.

Wall-clock time (``time.time``) is used throughout because the heartbeat file is read by another process.
No torch here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from worker.service.slots import SlotPlan

log = logging.getLogger(__name__)

Kind = Literal["live", "ready"]
LIVE_PATH = "/livez"
READY_PATH = "/readyz"
#: Route -> check. ``/healthz`` is kept as an alias of liveness for tools that expect it.
ROUTES: dict[str, Kind] = {LIVE_PATH: "live", READY_PATH: "ready", "/healthz": "live"}
PATHS: dict[Kind, str] = {"live": LIVE_PATH, "ready": READY_PATH}

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1  # Docker HEALTHCHECK reserves 2: every failure exits 1
EXIT_CONSUMER_STALLED = 70  # EX_SOFTWARE: a worker that ended itself because its consumer stalled


def judge(snapshot: Mapping[str, Any], kind: Kind, max_age_s: float, now: float) -> tuple[bool, str]:
    """Decide liveness or readiness from a state snapshot (in-process or read from the heartbeat file)."""
    beat = snapshot.get("last_heartbeat")
    if beat is None:
        return False, "no heartbeat yet"
    age = now - float(beat)
    if age > max_age_s:
        return False, f"heartbeat is {age:.1f}s old (max {max_age_s:g}s)"
    stalled = consumer_stall(snapshot, now)
    if stalled is not None:
        return False, stalled
    if kind == "live":
        return True, f"heartbeat {age:.1f}s ago"
    if not snapshot.get("model_loaded"):
        return False, "model not loaded yet"
    redis_ok_at = snapshot.get("redis_ok_at")
    if redis_ok_at is None:
        return False, f"redis has not answered yet ({snapshot.get('redis_error') or 'no ping yet'})"
    redis_age = now - float(redis_ok_at)
    if redis_age > max_age_s:
        return (
            False,
            f"redis last answered {redis_age:.1f}s ago ({snapshot.get('redis_error') or 'no answer'})",
        )
    return True, f"model {snapshot.get('model') or '?'} loaded, redis answered {redis_age:.1f}s ago"


def consumer_stall(snapshot: Mapping[str, Any], now: float) -> str | None:
    """Why the Celery consumer counts as stalled, or None (also None before its first tick or with no limit)."""
    tick, stall_s = snapshot.get("consumer_tick_at"), snapshot.get("consumer_stall_s")
    if tick is None or not stall_s or now - float(tick) <= float(stall_s):
        return None
    return (
        f"the Celery consumer loop last ran {now - float(tick):.1f}s ago (max {float(stall_s):g}s): "
        "it stopped, is wedged, or cannot reach the broker"
    )


@dataclass
class HealthState:
    """What the probes look at. Thread-safe; written by the heartbeat and the model loader."""

    clock: Callable[[], float] = time.time
    model_loaded: bool = False
    model_ref: str | None = None
    last_heartbeat: float | None = None
    redis_ok_at: float | None = None
    redis_error: str | None = None
    consumer_stall_s: float | None = None  # None: no consumer check (scan, tests, a prefork parent)
    consumer_tick_at: float | None = None  # None until the consumer's event loop first runs
    slot: int | None = None  # worker slot of this process on its host (worker.service.slots), once taken
    metrics_port: int | None = None  # the ports that slot bound (0 = off): how to find this worker's endpoints
    health_port: int | None = None
    started_at: float = field(init=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    def mark_model_loaded(self, model_ref: str) -> None:
        """Call once the detector is loaded (``name@version``): readiness may now turn green."""
        with self._lock:
            self.model_loaded, self.model_ref = True, model_ref

    def beat(self) -> None:
        with self._lock:
            self.last_heartbeat = self.clock()

    def record_redis(self, ok: bool, error: str | None = None) -> None:
        with self._lock:
            if ok:
                self.redis_ok_at, self.redis_error = self.clock(), None
            else:
                self.redis_error = error or "redis ping failed"

    def consumer_tick(self) -> None:
        """The Celery consumer's event loop is running (called from it every few seconds)."""
        with self._lock:
            self.consumer_tick_at = self.clock()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view (also the heartbeat file's content)."""
        with self._lock:
            return {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "last_heartbeat": self.last_heartbeat,
                "model_loaded": self.model_loaded,
                "model": self.model_ref,
                "redis_ok_at": self.redis_ok_at,
                "redis_error": self.redis_error,
                "consumer_tick_at": self.consumer_tick_at,
                "consumer_stall_s": self.consumer_stall_s,
                "slot": self.slot,
                "metrics_port": self.metrics_port,
                "health_port": self.health_port,
            }

    def evaluate(self, kind: Kind, max_age_s: float) -> tuple[bool, str]:
        return judge(self.snapshot(), kind, max_age_s, self.clock())


def exit_process(reason: str) -> None:
    """``on_stall`` for a worker process: log, flush the logs, and end the process at once (exit 70,
    EX_SOFTWARE) so its supervisor starts a fresh one. Not ``sys.exit``: a wedged Celery may never unwind.
    Its unacked jobs return through kombu's visibility timeout and the ledger, as after any crash."""
    log.critical("exiting: %s", reason)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(EXIT_CONSUMER_STALLED)


def write_heartbeat_file(path: Path, snapshot: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically so a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(snapshot, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Heartbeat(threading.Thread):
    """Daemon thread: every ``interval_s`` record a beat, rewrite the heartbeat file, ping Redis.

    ``ping`` is any callable that raises when Redis does not answer (``redis.Redis.ping``); its client's
    socket timeout bounds how long one beat can take. ``on_stall`` is called once, with the reason, when the
    consumer counts as stalled (:func:`consumer_stall`).
    """

    def __init__(
        self,
        state: HealthState,
        ping: Callable[[], object] | None = None,
        path: str | Path | None = None,
        interval_s: float = 5.0,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name="fakesake-heartbeat", daemon=True)
        self.state = state
        self._ping = ping
        self._path = Path(path) if path else None
        self._interval_s = interval_s
        self._halt = threading.Event()
        self._wake = threading.Event()  # set by nudge() or stop(): beat now rather than at the next interval
        self._file_warned = False
        self._on_stall = on_stall

    def beat_once(self) -> None:
        """One beat; the file is written before and after the ping so a slow Redis never ages liveness."""
        self.state.beat()
        self._write()
        if self._ping is not None:
            try:
                self._ping()
            except Exception as exc:  # any client error means "not answering"; the reason goes in the detail
                self.state.record_redis(False, f"{type(exc).__name__}: {exc}")
            else:
                self.state.record_redis(True)
            self._write()
        if self._on_stall is not None:
            stalled = consumer_stall(self.state.snapshot(), self.state.clock())
            if stalled is not None:
                on_stall, self._on_stall = self._on_stall, None  # once
                on_stall(stalled)

    def _write(self) -> None:
        if self._path is None:
            return
        try:
            write_heartbeat_file(self._path, self.state.snapshot())
        except OSError as exc:
            if not self._file_warned:  # once: a read-only /tmp would otherwise flood the log
                log.warning("cannot write heartbeat file %s: %s", self._path, exc)
                self._file_warned = True

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.beat_once()
            except Exception:  # the heartbeat must outlive any surprise; a dead thread = a killed pod
                log.exception("heartbeat failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def nudge(self) -> None:
        """Beat now: the file shows a change of state (the model loaded) at once, not up to an interval later,
        so a supervisor or probe reading it sees the worker ready when ``/readyz`` does."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._halt.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout_s)


def _handler(state: HealthState, max_age_s: float) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            kind = ROUTES.get(self.path.split("?", 1)[0])
            if kind is None:
                self._reply(404, {"status": "fail", "detail": f"unknown path; use {sorted(ROUTES)}"})
                return
            ok, detail = state.evaluate(kind, max_age_s)
            body = {"status": "ok" if ok else "fail", "check": kind, "detail": detail, **state.snapshot()}
            self._reply(200 if ok else 503, body)

        def _reply(self, code: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: keep them quiet
            log.debug("health %s", format % args)

    return HealthHandler


class HealthServer:
    """``/livez`` and ``/readyz`` on ``host:port`` served by a daemon thread."""

    def __init__(self, state: HealthState, port: int, host: str = "0.0.0.0", max_age_s: float = 30.0) -> None:
        self._httpd = ThreadingHTTPServer((host, port), _handler(state, max_age_s))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fakesake-health", daemon=True)
        self._started = False

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving (if started) and release the port."""
        if self._started:  # shutdown() of a server that never served would wait forever
            self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class HealthService:
    """The running pieces: state, heartbeat thread, HTTP server (None when ``health_port`` is 0)."""

    state: HealthState
    heartbeat: Heartbeat
    server: HealthServer | None

    def stop(self) -> None:
        self.heartbeat.stop()
        if self.server is not None:
            self.server.stop()


@dataclass(frozen=True)
class HealthPolicy:
    """How the heartbeat runs and how probes judge it (built from the metrics settings by the builder)."""

    heartbeat_interval_s: float = 5.0
    heartbeat_max_age_s: float = 30.0
    consumer_stall_s: float = 0.0  # 0: no consumer check
    exit_on_consumer_stall: bool = False


def start_health(
    policy: HealthPolicy,
    ping: Callable[[], object] | None,
    *,
    state: HealthState | None = None,
    heartbeat_file: str | Path | None = None,
    server: HealthServer | None = None,
    on_stall: Callable[[str], None] | None = None,
) -> HealthService:
    """Start the heartbeat (rewriting ``heartbeat_file``) and ``server`` if any; call at worker start.

    ``server`` is a bound :class:`HealthServer` on ``state`` (the caller binds it first: binding decides the
    worker's slot). ``on_stall`` (see :class:`Heartbeat`) is used only when ``policy.exit_on_consumer_stall``.

    Then ``service.state.mark_model_loaded("name@version")`` once the model is loaded.
    """
    state = HealthState() if state is None else state
    state.consumer_stall_s = policy.consumer_stall_s or None
    state.beat()  # alive from the first probe on; the thread's first beat follows at once
    heartbeat = Heartbeat(
        state,
        ping,
        heartbeat_file,
        policy.heartbeat_interval_s,
        on_stall=on_stall if policy.exit_on_consumer_stall else None,
    )
    heartbeat.start()
    if server is not None:
        server.start()
        log.info("health on port %s: %s and %s", server.port, LIVE_PATH, READY_PATH)
    return HealthService(state, heartbeat, server)


def check(
    kind: Kind,
    *,
    url: str | None = None,
    file: str | Path | None = None,
    max_age_s: float = 30.0,
    timeout_s: float = 3.0,
    now: float | None = None,
) -> tuple[bool, str]:
    """Probe a worker through its health endpoint (``url``) or its heartbeat ``file``; one of the two."""
    if (url is None) == (file is None):
        raise ValueError("check() needs exactly one of url= or file=")
    if url is not None:
        return _check_url(url, timeout_s)
    assert file is not None
    try:
        snapshot = read_heartbeat(file)
    except UnreadableHeartbeat as exc:
        return False, str(exc)
    return judge(snapshot, kind, max_age_s, time.time() if now is None else now)


class UnreadableHeartbeat(ValueError):
    """A heartbeat file that is absent, unreadable or not a snapshot; the message says which."""


def read_heartbeat(file: str | Path) -> dict[str, Any]:
    """The snapshot a heartbeat file holds (:func:`write_heartbeat_file` replaces it whole, so no half file)."""
    try:
        snapshot = json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise UnreadableHeartbeat(f"no heartbeat file at {file}") from None
    except (OSError, ValueError) as exc:
        raise UnreadableHeartbeat(f"unreadable heartbeat file {file}: {exc}") from None
    if not isinstance(snapshot, dict):
        raise UnreadableHeartbeat(f"unreadable heartbeat file {file}: not a JSON object")
    return snapshot


def _check_url(url: str, timeout_s: float) -> tuple[bool, str]:
    # No proxies: a probe of 127.0.0.1 must not be sent to an HTTP_PROXY from the container's environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return resp.status == 200, _detail(resp.read()) or f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, _detail(exc.read()) or f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"cannot reach {url}: {reason}"


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        return ""


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Mount ``fakesake health`` (sets ``run``, the CLI's dispatch convention)."""
    p = sub.add_parser("health", help="check a worker's liveness or readiness (exit 0 healthy, 1 not)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--live", dest="kind", action="store_const", const="live", help="heartbeat is fresh (default)")
    which.add_argument(
        "--ready", dest="kind", action="store_const", const="ready", help="model loaded and Redis answering"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--url", help="health endpoint to ask (default: 127.0.0.1 on FAKESAKE_METRICS__HEALTH_PORT)")
    source.add_argument(
        "--file",
        help="read this heartbeat file instead of asking over HTTP "
        "(default when the health port is 0: FAKESAKE_METRICS__HEARTBEAT_FILE)",
    )
    p.add_argument(
        "--max-age",
        type=float,
        dest="max_age_s",
        help="with --file: seconds before a heartbeat is stale (FAKESAKE_METRICS__HEARTBEAT_MAX_AGE_S)",
    )
    p.add_argument(
        "--slot",
        type=int,
        default=0,
        help="worker slot to check when several workers share the host (default 0): its health port is "
        "FAKESAKE_METRICS__HEALTH_PORT + 10*SLOT, its heartbeat file FAKESAKE_METRICS__HEARTBEAT_FILE-SLOT",
    )
    p.add_argument("--timeout", type=float, default=3.0, dest="timeout_s", help="HTTP timeout in seconds")
    p.set_defaults(kind="live", run=run_health)


def run_health(args: argparse.Namespace) -> int:
    """Entry point of ``fakesake health``: prints one line, returns 0 (healthy) or 1."""
    from pydantic import ValidationError

    from worker.service.settings import WorkerSettings

    try:
        settings = WorkerSettings().metrics
    except ValidationError as exc:
        print(f"fail: invalid settings: {exc}")
        return EXIT_UNHEALTHY
    kind: Kind = args.kind
    url, file = args.url, args.file
    if url is None and file is None:
        slot = SlotPlan(settings.port, settings.health_port, settings.heartbeat_file).slot(args.slot)
        if slot.health_port:
            url = f"http://127.0.0.1:{slot.health_port}{PATHS[kind]}"
        else:
            file = slot.heartbeat_file
    max_age_s = args.max_age_s if args.max_age_s is not None else settings.heartbeat_max_age_s
    ok, detail = check(kind, url=url, file=file, max_age_s=max_age_s, timeout_s=args.timeout_s)
    print(f"{'ok' if ok else 'fail'}: {kind}: {detail}")
    return EXIT_HEALTHY if ok else EXIT_UNHEALTHY
