"""Many queued messages per Redis round trip, kept in kombu's own unacked records: the bulk intake's Redis side.

Celery's consumer takes one message per ``BRPOP``, records it in kombu's ``unacked`` hash and ``unacked_index``
sorted set in a second round trip and acks it in a third, with ~2 ms of Python per message here: the ceiling of
one worker process (``python -m bench --only fleet``). :meth:`LaneIntake.take` pops up to ``n`` messages of
several lanes (in the order given) in one Lua script and records each exactly as kombu's ``QoS.append`` does
(kombu 5.7: ``ZADD unacked_index <client time> <tag>``, ``HSET unacked <tag> json([message, exchange,
routing_key])``), so nothing changes for recovery: kombu's restore sweep, which every worker's Celery consumer
runs, puts a dead worker's messages back on their lane after the visibility timeout; the ledger
(:mod:`worker.stores.ledger`) covers the rest. Acks are kombu's too (``ZREM`` + ``HDEL``), for many tags at once.

The script hands the intake only messages it can run now: plain classify jobs (``headers.task`` is the classify
task, no ``eta``, JSON content). Anything else (a retry with a countdown, a webhook, a message in a format it
does not know) goes, in the same script, to the lane's side lane (``producers.contract.side_lane``), which
Celery's consumer takes and handles as always (it runs, delays or dead-letters it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from producers.contract import TASK_NAME, side_lane

#: kombu's Redis transport keys (``kombu.transport.redis.Channel.unacked_key`` / ``unacked_index_key``).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# KEYS: unacked, unacked index, then lane, side lane pairs in the order to take from.
# ARGV: most messages to take, client time (kombu scores the index with the consumer's clock), classify task name.
# Returns lane, message, lane, message, ... of the runnable messages taken.
_TAKE_LUA = """
local out, left = {}, tonumber(ARGV[1])
for i = 3, #KEYS, 2 do
  while left > 0 do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    left = left - 1
    local ok, msg = pcall(cjson.decode, raw)
    local props = ok and type(msg) == 'table' and msg.properties
    local headers = ok and type(msg) == 'table' and msg.headers
    local tag = type(props) == 'table' and props.delivery_tag
    if type(tag) == 'string' and type(headers) == 'table' and headers.task == ARGV[3]
        and (headers.eta == nil or headers.eta == cjson.null) and msg['content-type'] == 'application/json' then
      local info = type(props.delivery_info) == 'table' and props.delivery_info or {}
      local exchange = type(info.exchange) == 'string' and info.exchange or ''
      local key = type(info.routing_key) == 'string' and info.routing_key or KEYS[i]
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. raw .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(key) .. ']')
      out[#out + 1] = KEYS[i]
      out[#out + 1] = raw
    else
      redis.call('LPUSH', KEYS[i + 1], raw)
    end
  end
end
return out
"""

# KEYS: unacked, unacked index, destination list. ARGV: delivery tag, message.
# Puts a taken message on a list (LPUSH: the back of the queue, as kombu's reject with requeue) unless it is no
# longer unacked: kombu's restore sweep may have put it back already, and it must not be queued twice.
_RELEASE_LUA = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"""


class LaneIntake:
    """Takes, acks and returns messages of kombu's Redis lists for one worker process."""

    def __init__(self, client: Any, clock: Any = time.time) -> None:
        self._client = client
        self._clock = clock
        self._take = client.register_script(_TAKE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def take(self, lanes: Sequence[str], n: int) -> list[tuple[str, bytes]]:
        """Up to ``n`` runnable messages (lane, message) from ``lanes``, earlier lanes first; each recorded as
        unacked. Messages that are not runnable classify jobs are moved to their side lanes meanwhile."""
        keys = [UNACKED, UNACKED_INDEX]
        for lane in lanes:
            keys += [lane, side_lane(lane)]
        flat = self._take(keys=keys, args=[n, repr(self._clock()), TASK_NAME])
        return [(_text(flat[i]), _bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    def wait(self, lanes: Sequence[str], timeout_s: float) -> bool:
        """Block until one of ``lanes`` holds a message (True) or ``timeout_s`` passes (False).

        ``BRPOP`` is the only blocking read; the message it pops is pushed straight back to the front of its
        lane, for the next :meth:`take`. A worker killed in between loses that one message to the ledger's
        recovery, the window kombu's own consumer has between its ``BRPOP`` and its unacked record."""
        popped = self._client.brpop(list(lanes), timeout=max(1, round(timeout_s)))
        if not popped:
            return False
        lane, raw = popped
        self._client.rpush(lane, raw)
        return True

    def ack(self, tags: list[str]) -> None:
        """Forget delivered messages (kombu's ack, for all ``tags`` in one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.zrem(UNACKED_INDEX, *tags)
        pipe.hdel(UNACKED, *tags)
        pipe.execute()

    def release(self, tag: str, raw: bytes, to_lane: str) -> bool:
        """Move a taken, unacked message to ``to_lane`` (its own lane to retry it, its side lane to let Celery
        handle it); False when kombu's restore already returned it."""
        return bool(self._release(keys=[UNACKED, UNACKED_INDEX, to_lane], args=[tag, raw]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
