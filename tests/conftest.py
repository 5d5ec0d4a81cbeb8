"""Shared fixtures. Markers are assigned by folder: tests/unit -> unit, tests/integration -> integration,
tests/faults -> faults, tests/deploy -> deploy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.servers import HttpServer, RedisServer, S3Server, http_server, redis_server, s3_server

_FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "faults": "faults", "deploy": "deploy"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in _FOLDER_MARKERS.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture()
def redis_url(redis_srv: RedisServer) -> Iterator[str]:
    """A clean database of the session's redis-server for each test."""
    flusher = redis.Redis.from_url(redis_srv.url)
    flusher.flushall()
    flusher.close()
    yield redis_srv.url


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the clean database given by ``redis_url``."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded random-weight ``ffs-mj-5m`` weights file (the on-disk layout the 1.0 repos publish).

    Worker tests need a real model, not a good one. Imported lazily: torch is slow to import for unit runs.
    """
    from tests.support.checkpoints import seeded_state, write_snapshot
    from worker.core import registry

    spec = registry.get("ffs-mj-5m")
    return write_snapshot(spec, tmp_path_factory.mktemp("ckpt"), seeded_state(spec))


@pytest.fixture(scope="session")
def s3_srv() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture()
def http_srv() -> Iterator[HttpServer]:
    with http_server() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Caches the code writes by default (ONNX graphs, downloaded weights) go to a session directory, not the
    user's ~/.cache; worker processes the tests start inherit it, and share its exported graphs."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
