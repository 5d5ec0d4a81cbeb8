"""Fixtures of the fault suite: one image set per session (the checkpoint is ``tests/conftest.py``'s), a fresh
rig per scenario."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.rig import Rig
from tests.support.images import encode, photo
from tests.support.servers import http_server, redis_server


@pytest.fixture(scope="session")
def fault_images() -> list[bytes]:
    """Small, distinct JPEGs: decoding is not what these tests are about."""
    return [encode(photo(64 + 8 * i, 48 + 4 * i, seed=i), "JPEG", quality=85) for i in range(8)]


@pytest.fixture()
def rig(request: pytest.FixtureRequest, checkpoint: Path, fault_images: list[bytes]) -> Iterator[Rig]:
    """Own redis-server with AOF (``appendfsync always``, as deployed), an HTTP image server, no workers yet;
    workers take jobs through Celery's consumer unless the test is marked ``rig.BOTH_INTAKES``."""
    with redis_server(appendonly=True) as server, http_server() as http:
        intake = getattr(request, "param", "celery")
        rig = Rig(redis=server, http=http, weights=checkpoint, images=fault_images, intake=intake)
        try:
            yield rig
        finally:
            rig.close()
