"""A shared/exclusive lock over one worker process's jobs (poison-job isolation)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class IsolationGate:
    """A shared/exclusive lock over one worker process's jobs, preferring the exclusive side.

    Ordinary deliveries hold it shared; a delivery that must not share its process (a suspected poison
    job's last chance) waits for the running jobs to finish, keeps new ones out, and runs alone.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
