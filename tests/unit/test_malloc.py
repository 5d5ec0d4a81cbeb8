"""worker.service.malloc: a worker's job threads share a bounded number of glibc malloc arenas."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.service import malloc

REPO = Path(__file__).resolve().parents[2]

# Eight threads allocate at once in a fresh interpreter, then glibc's malloc_stats() lists its arenas on stderr.
_PROBE = textwrap.dedent(
    """
    import ctypes, sys, threading
    from worker.service import malloc
    print(malloc.limit_arenas() if sys.argv[1] == "limit" else None)
    barrier = threading.Barrier(8)
    def work():
        buf = ctypes.create_string_buffer(1 << 16)  # 64 KiB: malloc itself, not Python's small-object pool
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL(None).malloc_stats()
    """
)

needs_glibc = pytest.mark.skipif(malloc.glibc_version() is None, reason="arenas are glibc's")


def _arenas(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip(), sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@needs_glibc
def test_threads_share_two_arenas_once_limited() -> None:
    assert _arenas("none") == ("None", 9)  # glibc's default: one arena per allocating thread, plus main
    assert _arenas("limit") == ("True", malloc.ARENAS)


@needs_glibc
def test_an_explicit_malloc_arena_max_wins() -> None:
    assert _arenas("limit", MALLOC_ARENA_MAX="3") == ("False", 3)


def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(os, "confstr", lambda name: None)  # what musl answers
    assert malloc.glibc_version() is None
    assert malloc.limit_arenas() is False


def test_a_refused_limit_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    class Refusing:
        @staticmethod
        def mallopt(param: int, value: int) -> int:
            return 0

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(malloc, "glibc_version", lambda: "2.36")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: Refusing())
    with caplog.at_level(logging.WARNING, logger="worker.service.malloc"):
        assert malloc.limit_arenas() is False
    assert "glibc refused a limit of 2" in caplog.text


def test_fakesake_worker_limits_arenas_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # run_worker is the entry of `fakesake worker` and of each child under --processes N; it limits the arenas
    # before anything else, so even a start that fails later has done it.
    from worker.service import celery_app

    calls: list[int] = []
    monkeypatch.setattr(malloc, "limit_arenas", lambda arenas=malloc.ARENAS: calls.append(arenas) or True)
    assert celery_app.run_worker(["--processes", "none"]) == celery_app.EXIT_START_FAILED
    assert calls == [malloc.ARENAS]
