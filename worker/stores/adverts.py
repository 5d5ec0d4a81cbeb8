"""A worker's advertisement of the detectors it serves, refreshed in Redis every heartbeat on a thread of its own.

Producers read the advertisements (:mod:`producers.serving`) to refuse, at submit, jobs no live worker serves.
A worker that stops cleanly withdraws its advertisement; a killed one's ages out (producers count a worker
live for ``queue.served_max_age_s`` after its last refresh).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

from producers import serving

log = logging.getLogger(__name__)

#: Advertisements silent this long are deleted by the next refresh of any worker (readers ignore them far sooner).
FORGET_S = 3600.0


class Advertiser:
    """Keeps ``detectors`` advertised under this process's id until :meth:`stop`."""

    def __init__(self, client: Any, detectors: Iterable[str], interval_s: float) -> None:
        worker = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.advert = serving.Advert(worker, frozenset(detectors))
        self._client = client
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fakesake-advert", daemon=True)

    def start(self) -> Advertiser:
        self.refresh()  # advertised before the worker consumes: a producer may submit at once
        self._thread.start()
        return self

    def refresh(self) -> None:
        try:
            serving.advertise(self._client, self.advert, FORGET_S)
        except Exception:  # Redis down: the health checks report it; the next beat tries again
            log.warning("could not advertise the detectors this worker serves", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            serving.withdraw(self._client, self.advert)
        except Exception:
            log.warning("could not withdraw this worker's advertisement (it ages out)", exc_info=True)
