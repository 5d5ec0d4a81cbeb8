"""What live workers serve: advertisements in Redis, written by workers and read by producers.

Each worker keeps one member ``"<worker id> <detector,names>"`` in the sorted set ``Keys.SERVING``, scored by
the Redis TIME of its latest heartbeat (so hosts whose clocks disagree still compare). Producers read the
members younger than ``max_age_s`` and refuse, at submit, a job whose detectors no live worker serves: queued,
it would wait in a lane nobody consumes. One key, not one per worker: reading it is one ``ZRANGEBYSCORE``, never
a ``SCAN`` over the keyspace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from producers.contract import LUA_NOW, MAX_SERVED_DETECTORS, Keys, Priority, queue_name, served_subsets

# KEYS[1] = Keys.SERVING; ARGV = member, forget_s. Refreshes one member and drops members silent for forget_s.
_ADVERTISE_LUA = (
    LUA_NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return 1
"""
)

# KEYS[1] = Keys.SERVING; ARGV = max_age_s. Members refreshed within max_age_s.
_LIVE_LUA = LUA_NOW + "return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')\n"


@dataclass(frozen=True)
class Advert:
    """One live worker and the detectors it serves."""

    worker: str
    detectors: frozenset[str]

    @property
    def member(self) -> str:
        return f"{self.worker} {','.join(sorted(self.detectors))}"

    @classmethod
    def parse(cls, member: str | bytes) -> Advert:
        text = member.decode() if isinstance(member, bytes) else member
        worker, _, names = text.rpartition(" ")
        return cls(worker, frozenset(n for n in names.split(",") if n))


def advertise(client: Any, advert: Advert, forget_s: float) -> None:
    """Refresh ``advert`` (call it every heartbeat) and forget workers silent for ``forget_s``."""
    client.eval(_ADVERTISE_LUA, 1, Keys.SERVING, advert.member, forget_s)


def withdraw(client: Any, advert: Advert) -> None:
    """Remove ``advert`` at a clean shutdown (a killed worker's ages out)."""
    client.zrem(Keys.SERVING, advert.member)


def live(client: Any, max_age_s: float) -> list[Advert]:
    """The adverts refreshed within ``max_age_s``."""
    return [Advert.parse(m) for m in request_live(client, max_age_s)]


def request_live(client: Any, max_age_s: float) -> Any:
    """Send the query of :func:`live` on ``client``: its reply (a list of members for :meth:`Advert.parse`), or, on
    a pipeline, the pipeline, so a reader can fetch the adverts in the same round trip as other commands."""
    return client.eval(_LIVE_LUA, 1, Keys.SERVING, max_age_s)


def unserved(wanted: Iterable[tuple[str, ...]], adverts: Iterable[Advert]) -> list[tuple[str, ...]]:
    """The detector sets of ``wanted`` that no advert serves in full (a job's lane is consumed only by workers that
    serve all of its detectors)."""
    served = [a.detectors for a in adverts]
    return [w for w in dict.fromkeys(wanted) if not any(set(w) <= s for s in served)]


def worker_lanes(detectors: Iterable[str]) -> dict[str, str]:
    """Every lane a worker serving ``detectors`` consumes (the lanes of :func:`producers.contract.lanes_for`) -> the
    lane's detector set, sorted and comma-separated: each priority's lane of every non-empty subset."""
    subsets = served_subsets(detectors)
    return {queue_name(p, subset): ",".join(subset) for p in Priority for subset in subsets}


def served_lanes(adverts: Iterable[Advert]) -> dict[str, str]:
    """:func:`worker_lanes` of every advertised detector set, together (an advert naming no detector, or more than
    a worker may serve, adds none: a stray member must not cost 2**n lanes)."""
    lanes: dict[str, str] = {}
    for names in sorted({tuple(sorted(a.detectors)) for a in adverts}):
        if 1 <= len(names) <= MAX_SERVED_DETECTORS:
            lanes.update(worker_lanes(names))
    return lanes
