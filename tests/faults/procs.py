"""Which local process owns the other end of a TCP connection (Linux /proc), for the poison route."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


def _socket_inode(local_port: int) -> str | None:
    """Inode of the IPv4 loopback socket bound to ``local_port`` (the client side of a connection)."""
    wanted = f"0100007F:{local_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            return fields[9]
    return None


def owner_of_peer(peer_port: int, candidates: Iterable[int]) -> int | None:
    """The pid among ``candidates`` holding the socket whose local port is ``peer_port``, if any."""
    inode = _socket_inode(peer_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None
