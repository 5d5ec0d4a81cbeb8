"""Bound glibc's malloc arenas in a worker process, so its memory settles instead of creeping.

Why: glibc gives every thread that allocates an arena of its own, up to 8 per core, and an arena keeps what
was freed in it. A worker runs ~24 job threads that decode images of every size, so each arena grows to the
worst input its threads have seen, and the process's resident memory climbs pass after pass of varied input
until every arena has met its worst case. Measured on the 2-core dev VM, worker with the ONNX backend, one
pass of the hostile corpus's byte cases after the whole corpus (tests/integration/test_hostile_corpus.py):
+14..+109 MiB with glibc's default (10 runs) against +4..+39 MiB with two arenas (3 runs), and a peak of
613-684 MiB against 566-578 MiB.

Two arenas are enough: the allocations that run in parallel are Pillow's decode and resize buffers, few and
large per image, so the threads seldom wait for an arena's lock. The rest of a job allocates under the GIL.

An explicit ``MALLOC_ARENA_MAX`` in the environment wins (glibc reads it itself at process start); a C library
other than glibc (musl in Alpine images) is left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's <malloc.h>


def glibc_version() -> str | None:
    """``"2.36"`` under glibc, None under another C library."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):  # no confstr, or a system that does not know the name
        return None
    name, _, version = (value or "").partition(" ")
    return version if name == "glibc" else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap this process's malloc arenas at ``arenas``; True if the cap was set here.

    Call early, before the job threads start: glibc fixes its arena limit when it first needs more than a few
    arenas, and arenas that already exist stay. Children forked afterwards inherit the cap.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        log.debug("malloc arenas: MALLOC_ARENA_MAX=%s from the environment", os.environ["MALLOC_ARENA_MAX"])
        return False
    if glibc_version() is None:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    if mallopt(_M_ARENA_MAX, arenas) != 1:  # mallopt returns 1 on success
        log.warning("malloc arenas: glibc refused a limit of %d; memory may creep with many job threads", arenas)
        return False
    log.debug("malloc arenas limited to %d (set MALLOC_ARENA_MAX to choose another)", arenas)
    return True
