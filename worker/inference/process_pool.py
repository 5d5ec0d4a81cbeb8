"""Engine processes for in-process scans: N children, each with its own model on one thread.

One process holding prepare threads and a model thread loses throughput to the GIL and to thread contention;
separate single-thread processes do not (measured: ``python -m bench --only engine``). Each child
builds its own :class:`~worker.core.pipeline.Pipeline` (model, fetcher) from a picklable recipe and runs
fetch + decode + preprocess + predict for one chunk (one batch) of sources at a time, sequentially, on its core.

Only sources, the recipe and :class:`~worker.core.pipeline.Outcome` records cross the process boundary. Children are
started with ``forkserver`` (``spawn`` where there is none; torch/ORT thread pools and ``fork`` do not mix) lazily,
when a chunk needs one, or all at once in the background by :meth:`EnginePool.start` (so the fork server's imports
and the children's model loads overlap whatever this process does meanwhile), are reused across ``classify`` calls
and are stopped by :meth:`EnginePool.close`, by garbage collection of the pool, or at interpreter exit. A child
that dies (segfault, OOM kill) turns its chunk, and only its chunk, into ``internal`` outcomes and is replaced for
the next chunk.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from producers.contract import ErrorInfo, Status, Timings
from producers.errors import ConfigError, ErrorCode
from worker.core.batching import chunked

if TYPE_CHECKING:
    from worker.core.pipeline import Outcome, Pipeline

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0  # a child between chunks exits at once; one mid-chunk is killed after this
LOOKAHEAD = 2  # chunks dispatched or done per child ahead of the next one to yield (bounds buffered outcomes)
# Imported once by the fork server, so each child starts without importing them itself. __main__ is the stdlib
# default. Importing starts no torch or ORT thread pool (sessions are the children's).
FORKSERVER_PRELOAD = [
    "__main__",
    "worker.service.builder",
    "worker.inference.onnx_start",
    "worker.inference.pixels",
    "worker.fetch.router",
]
# Added when the parent itself needed torch (a torch backend, the tensor mode, a graph not cached yet): then the
# children need it too, and importing torch/timm per child costs seconds on 2 busy cores. A parent that started
# from a cached ONNX graph leaves them out, and its children start without them (~7 s of imports saved each).
TORCH_PRELOAD = ["torch", "timm", "worker.inference.loader", "worker.inference.preprocess"]


def preload_modules() -> list[str]:
    """What the fork server imports: :data:`FORKSERVER_PRELOAD`, plus torch's when this process imported it."""
    return FORKSERVER_PRELOAD + (TORCH_PRELOAD if "torch" in sys.modules else [])


def _context() -> ForkServerContext | SpawnContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # A process-wide setting; it only takes effect if the fork server is not running yet.
    context.set_forkserver_preload(preload_modules())
    return context


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_processes(setting: int, device_type: str) -> int:
    """Engine processes for ``batch.processes``: 0 = one per core on CPU when there are >= 2 cores, else 1."""
    if setting:
        return setting
    cores = usable_cores()
    return cores if device_type == "cpu" and cores >= 2 else 1


def _child_main(conn: Connection, build: Callable[[], Pipeline]) -> None:
    """A child's loop: build the engine, then answer each ``(seq, sources)`` with ``(seq, outcomes)``."""
    # Ctrl-C reaches the whole process group; the parent decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = build()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        seq, sources = message
        # Pipeline.classify isolates errors per item and per batch; what escapes it is a bug worth dying for.
        conn.send(("done", (seq, list(engine.classify(sources)))))


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    conn: Connection
    chunk: tuple[int, list[str], float] | None = None  # (seq, sources, dispatched at) while busy

    def ask_to_stop(self) -> None:
        with contextlib.suppress(OSError):  # already dead
            self.conn.send(None)

    def stop(self, asked: bool = False) -> None:
        if not asked:
            self.ask_to_stop()
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self.conn.close()


def _receive(child: _Child) -> tuple[str, Any]:
    """The child's next message, or ``("died", None)``."""
    try:
        # A child that answered and then died has its answer in the pipe: read it before the death.
        if child.conn.poll():
            kind, payload = child.conn.recv()
            return str(kind), payload
    except (EOFError, OSError):
        pass
    return "died", None


def _stop_all(children: list[_Child], starters: list[threading.Thread]) -> None:
    while starters:  # a background start may still add children: let it finish first
        starters.pop().join()
    for child in children:  # all at once: they tear their engines down in parallel
        child.ask_to_stop()
    while children:
        children.pop().stop(asked=True)


@dataclass
class _Run:
    """State of one ``classify`` call: chunks handed out, chunks answered and not yet yielded."""

    next_seq: int = 0
    next_out: int = 0
    done: dict[int, list[Outcome]] = field(default_factory=dict)


class EnginePool:
    """``classify`` over N engine processes, with :meth:`Pipeline.classify`'s contract: one outcome per input, in
    input order, per-item error isolation. Sources are consumed lazily.

    ``build`` must be picklable (a module-level function or a ``functools.partial`` of one): each child calls it
    to make its engine. One ``classify`` at a time per pool.
    """

    def __init__(self, build: Callable[[], Pipeline], processes: int, *, chunk_size: int, model_ref: str) -> None:
        if processes < 1 or chunk_size < 1:
            raise ValueError("processes and chunk_size must be >= 1")
        self.build = build
        self.processes = processes
        self.chunk_size = chunk_size
        self.model_ref = model_ref
        self._context = _context()
        self._children: list[_Child] = []
        self._busy = threading.Lock()
        self._closed = False
        self._starters: list[threading.Thread] = []  # a running background start (see start)
        # Stops children when the pool is closed, collected, or the interpreter exits (holds no reference to self).
        self._finalizer = weakref.finalize(self, _stop_all, self._children, self._starters)

    @property
    def started(self) -> int:
        """Children running now."""
        return len(self._children)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running children (for logs and tests)."""
        return [c.process.pid for c in self._children if c.process.pid is not None]

    def start(self) -> None:
        """Start every child now, in a background thread, without waiting for them: the fork server's imports and
        each child's engine build then overlap what the caller does next (a scan loads its own model meanwhile).
        ``classify`` and ``close`` wait for this start to finish. A child that cannot build its engine is reported
        by the ``classify`` that first hands it a chunk, as with a lazy start."""
        if self._closed:
            raise RuntimeError("engine pool is closed")
        if self._starters:
            return
        starter = threading.Thread(target=self._start_all, name="fakesake-engine-start", daemon=True)
        self._starters.append(starter)
        starter.start()

    def _start_all(self) -> None:
        try:
            while len(self._children) < self.processes:
                self._spawn()
        except Exception:  # classify starts what is missing lazily, and raises there if it fails again
            log.exception("starting engine processes in the background failed")

    def _wait_started(self) -> None:
        while self._starters:
            self._starters.pop().join()

    def close(self) -> None:
        """Stop the children (a later ``classify`` is refused)."""
        self._closed = True
        self._finalizer()

    def classify(self, sources: Iterable[str]) -> Generator[Outcome, None, None]:
        """One outcome per source, in order, from up to ``processes`` children working on a chunk each."""
        if self._closed:
            raise RuntimeError("engine pool is closed")
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("one classify at a time per engine pool")
        self._wait_started()
        chunks = chunked(sources, self.chunk_size)
        run = _Run()
        chunk: list[str] | None = None  # taken from the sources, waiting for a child
        exhausted = False
        try:
            while True:
                while not exhausted and run.next_seq < run.next_out + LOOKAHEAD * self.processes:
                    if chunk is None and (chunk := next(chunks, None)) is None:
                        exhausted = True
                        break
                    child = self._idle_child()  # only now: a child is started only for a chunk that exists
                    if child is None:
                        break
                    self._dispatch(child, run.next_seq, chunk)
                    run.next_seq += 1
                    chunk = None
                while run.next_out in run.done:
                    outcomes = run.done.pop(run.next_out)
                    run.next_out += 1
                    yield from outcomes
                if exhausted and run.next_out == run.next_seq:
                    return
                self._collect(run)
        finally:
            self._drain()
            self._busy.release()

    # --- children -------------------------------------------------------------------------------------

    def _idle_child(self) -> _Child | None:
        for child in self._children:
            if child.chunk is None:
                return child
        if len(self._children) >= self.processes:
            return None
        return self._spawn()

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_child_main, args=(child_end, self.build), name="fakesake-engine", daemon=True
        )
        process.start()
        child_end.close()  # the parent keeps only its end, so a dead child reads as EOF
        child = _Child(process, parent_end)
        self._children.append(child)
        log.info("engine process %s started (%d of %d)", process.pid, len(self._children), self.processes)
        return child

    def _dispatch(self, child: _Child, seq: int, chunk: list[str]) -> None:
        child.chunk = (seq, chunk, time.perf_counter())
        with contextlib.suppress(OSError):  # died already: _collect sees it and reports this chunk
            child.conn.send((seq, chunk))

    def _collect(self, run: _Run | None) -> None:
        """Wait until a busy child answers or dies; file its outcomes under ``run`` (None: discard them)."""
        busy = [c for c in self._children if c.chunk is not None]
        if not busy:
            return
        ready = set(wait([c.conn for c in busy] + [c.process.sentinel for c in busy]))
        for child in busy:
            if child.conn not in ready and child.process.sentinel not in ready:
                continue
            assert child.chunk is not None
            seq, sources, dispatched = child.chunk
            kind, payload = _receive(child)
            if kind == "ready":
                continue
            if kind == "done":
                child.chunk = None
                answered, outcomes = payload
                if run is not None:
                    run.done[answered] = outcomes
                continue
            self._children.remove(child)
            child.stop()
            if kind == "failed":
                self.close()
                raise ConfigError(f"an engine process could not load the model: {payload}")
            message = self._death_message(child)
            log.error("%s; %d sources of chunk %d fail (first source=%s)", message, len(sources), seq, sources[0])
            if run is not None:
                run.done[seq] = self._failed(sources, message, dispatched)

    def _drain(self) -> None:
        """Let busy children finish (an abandoned ``classify``), so the next call starts from idle children."""
        while any(c.chunk is not None for c in self._children):
            self._collect(None)

    @staticmethod
    def _death_message(child: _Child) -> str:
        code = child.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        return f"engine process {child.process.pid} died ({how}) while classifying this source's batch"

    def _failed(self, sources: list[str], message: str, dispatched: float) -> list[Outcome]:
        from worker.core.pipeline import Outcome

        error = ErrorInfo(code=ErrorCode.INTERNAL.value, message=message, retryable=False)
        timings = Timings(total_ms=(time.perf_counter() - dispatched) * 1000.0)
        return [Outcome(s, Status.ERROR, self.model_ref, error=error, timings=timings) for s in sources]
