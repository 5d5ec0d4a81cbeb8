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

from producers.contract import LUA_NOW, Keys

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
    return [Advert.parse(m) for m in client.eval(_LIVE_LUA, 1, Keys.SERVING, max_age_s)]


def unserved(wanted: Iterable[tuple[str, ...]], adverts: Iterable[Advert]) -> list[tuple[str, ...]]:
    """The detector sets of ``wanted`` that no advert serves in full (a job's lane is consumed only by workers that
    serve all of its detectors)."""
    served = [a.detectors for a in adverts]
    return [w for w in dict.fromkeys(wanted) if not any(set(w) <= s for s in served)]
