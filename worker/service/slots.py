"""Worker slots: which metrics port, health port and heartbeat file each worker on one host takes.

One worker per GPU is the documented shape, so several worker processes can share a host (and its network
namespace) with the same settings. Slot ``k`` serves metrics on ``port + 10·k``, health on
``health_port + 10·k`` and writes its heartbeat to ``heartbeat_file`` (slot 0) or ``heartbeat_file-k``. A
starting worker takes the first slot whose ports it can bind and whose heartbeat file it can lock
(:mod:`worker.service.telemetry` does the binding); with every slot taken it refuses to start. A worker alone in
its container or pod always gets slot 0, so the deploy files' ports and probes are those of the settings.

Pure arithmetic plus one advisory file lock; no servers here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Ports of slot k are the configured ones plus ``SLOT_STRIDE * k``: 9808/9809, 9818/9819, 9828/9829, ...
SLOT_STRIDE = 10


class SlotBusy(Exception):
    """One resource of a slot (a port, the heartbeat lock) is held by another process: try the next slot.

    ``setting`` is the variable that chooses that resource (named when no slot is left).
    """

    def __init__(self, reason: str, setting: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.setting = setting


@dataclass(frozen=True)
class Slot:
    """The endpoints of one worker slot; a port of 0 means that server is off."""

    index: int
    metrics_port: int
    health_port: int
    heartbeat_file: Path | None


@dataclass(frozen=True)
class SlotPlan:
    """The configured endpoints and how many slots a host offers (built by :mod:`worker.service.builder`)."""

    metrics_port: int
    health_port: int
    heartbeat_file: str | None
    slots: int = 1

    def slot(self, index: int) -> Slot:
        offset = SLOT_STRIDE * index
        return Slot(
            index,
            self.metrics_port + offset if self.metrics_port else 0,
            self.health_port + offset if self.health_port else 0,
            heartbeat_path(self.heartbeat_file, index),
        )

    def all(self) -> list[Slot]:
        return [self.slot(k) for k in range(self.slots)]


def heartbeat_path(base: str | None, index: int) -> Path | None:
    """Slot 0 keeps the configured file (the probes' default); slot k adds ``-k``."""
    if not base:
        return None
    return Path(base) if index == 0 else Path(f"{base}-{index}")


class HeartbeatLock:
    """An exclusive ``flock`` on ``<heartbeat file>.lock``, held for the life of the process.

    The heartbeat file itself is replaced on every beat (a lock on it would go with the old inode), hence the
    separate lock file. It keeps two workers off one heartbeat file even when both run without HTTP ports, and
    the kernel drops it when the process dies, so a crashed worker never leaves its slot taken.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def take(cls, heartbeat_file: Path | None) -> HeartbeatLock:
        """Lock the slot's heartbeat file; :class:`SlotBusy` when another process holds it."""
        if heartbeat_file is None:
            return cls(None)
        lock_path = heartbeat_file.with_name(heartbeat_file.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            # No writable directory: the heartbeat file cannot be written either (Heartbeat warns about that),
            # so there is nothing to share; the ports still decide the slot.
            log.warning("cannot lock %s (%s); the slot is decided by its ports alone", lock_path, exc)
            return cls(None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SlotBusy(
                f"heartbeat file {heartbeat_file} is in use by another worker", "FAKESAKE_METRICS__HEARTBEAT_FILE"
            ) from None
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def no_free_slot(plan: SlotPlan, busy: list[SlotBusy]) -> str:
    """The one-line reason a worker cannot start (``busy``: why each slot was refused), naming the setting."""
    if plan.slots == 1:
        return (
            f"{busy[0].reason}; set {busy[0].setting} to a free one "
            "(or FAKESAKE_METRICS__SLOTS above 1 to let the worker try the next slots)"
        )
    reasons = [f"slot {k}: {b.reason}" for k, b in enumerate(busy)]
    shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    return (
        f"all {plan.slots} worker slots are taken ({shown}); raise FAKESAKE_METRICS__SLOTS or set "
        "FAKESAKE_METRICS__PORT / FAKESAKE_METRICS__HEALTH_PORT to free ports"
    )
