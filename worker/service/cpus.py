"""Which CPUs a worker process runs on (``model.cpus``), and each ``--processes`` child's own share of them.

Why pin at all: a worker's per-job work is mostly Python under one GIL, handed between its threads (the intake,
~30 job threads, the batcher, the shared Redis trips, the ack thread): ~45 voluntary context switches per job
on the stub bench. When the process may run on every core, each hand-over wakes the next thread on another core,
and the GIL bounces between cores while the releasing one idles. Measured on the 2-core dev VM (stub classifier,
bulk intake, 2,000 jobs of 64 px JPEGs a pass, 4 alternating passes): 234-265 jobs/s free against 329-386
pinned to one core with ``taskset``. So ``fakesake worker --processes N`` gives each child a disjoint share of
the CPUs it may use: N GIL-bound processes then run side by side instead of bouncing across all cores.

A single worker process is left where it was started unless ``model.cpus`` names CPUs: with the model on the
CPU, its decode threads and the model's intra-op threads need every core (the GIL hand-overs cost less than
halving them).

``model.cpus``:

- ``""`` (the default): this process runs where it was started; a supervisor splits the CPUs it may use among
  its children when there are at least as many CPUs as children;
- ``"inherit"``: the same, and a supervisor's children run where it runs (no split);
- a CPU list such as ``"0-3,8"`` (Linux's ``cpuset`` format): this process runs on these CPUs only, and a
  supervisor splits them among its children.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

from producers.errors import ConfigError

log = logging.getLogger(__name__)

INHERIT = "inherit"
#: The setting's environment variable: how the supervisor hands each child its share.
ENV = "FAKESAKE_MODEL__CPUS"


def parse(text: str) -> tuple[int, ...] | None:
    """``model.cpus`` as sorted CPU numbers, None for "as started" (``""`` or ``"inherit"``); ValueError when it
    is neither nor a CPU list like ``0-3,8``."""
    text = text.strip()
    if text in ("", INHERIT):
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"model.cpus must be '', 'inherit' or a CPU list like '0-3,8', got {text!r}")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"model.cpus: range {part.strip()!r} runs backwards")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_list(cpus: Iterable[int]) -> str:
    """CPU numbers in the compact list form :func:`parse` reads: ``(0, 1, 2, 3, 8)`` -> ``"0-3,8"``."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def shares(cpus: Sequence[int], processes: int) -> list[tuple[int, ...]] | None:
    """``processes`` disjoint, contiguous shares of ``cpus`` as even as can be (the first ones get the extra
    CPUs), or None when there are fewer CPUs than processes."""
    if processes < 1 or len(cpus) < processes:
        return None
    ordered = sorted(cpus)
    base, extra = divmod(len(ordered), processes)
    out, start = [], 0
    for k in range(processes):
        size = base + (1 if k < extra else 0)
        out.append(tuple(ordered[start : start + size]))
        start += size
    return out


def pin(cpus: Iterable[int]) -> None:
    """Run every thread of this process, and every thread it starts later, on ``cpus`` only. ConfigError when the
    system cannot pin or refuses the set (CPUs that are offline or outside the container's cpuset)."""
    mask = set(cpus)
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("model.cpus needs Linux's sched_setaffinity; leave it empty on this system")
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # no /proc: the calling thread (threads started later inherit its mask)
    try:
        for tid in threads:
            try:
                os.sched_setaffinity(tid, mask)
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
    except OSError as exc:
        raise ConfigError(
            f"model.cpus {format_list(mask)}: cannot run there ({exc.strerror}); this process may use "
            f"{format_list(os.sched_getaffinity(0))}"
        ) from exc


def apply(setting: str) -> tuple[int, ...] | None:
    """Pin this process as ``model.cpus`` says (see the module doc); the CPUs pinned to, None when left alone."""
    cpus = parse(setting)
    if cpus is not None:
        pin(cpus)
    return cpus


def child_shares(setting: str, processes: int) -> list[tuple[int, ...]] | None:
    """Each of a supervisor's ``processes`` children's CPUs, split from the CPUs this process may use; None when
    ``setting`` is ``inherit`` or there are fewer CPUs than children (then they run where the supervisor runs)."""
    if setting.strip() == INHERIT or not hasattr(os, "sched_getaffinity"):  # no affinity calls: nothing to split
        return None
    cpus = sorted(os.sched_getaffinity(0))  # what taskset, a container's cpuset or model.cpus left this process
    split = shares(cpus, processes)
    if split is None:
        log.warning(
            "%d worker processes on %d CPUs: the children are not pinned to CPUs of their own", processes, len(cpus)
        )
    return split


__all__ = ["ENV", "INHERIT", "apply", "child_shares", "format_list", "parse", "pin", "shares"]
