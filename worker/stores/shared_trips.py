"""Lua script calls of many job threads in one Redis round trip (a group commit).

A worker's job threads finish together: a batch of 16 comes back from the model at once and each thread writes
its result; jobs taken together arrive together. Each write is one script call, and on this machine a round
trip costs ~100 µs of the caller's CPU (two syscalls, redis-py's Python) and as much of redis-server's.
:class:`SharedRoundTrips` sends the calls that overlap in one pipeline: the first caller leads and sends what
is queued (its own call included); callers that arrive meanwhile wait, and the first of them leads the next
round trip once the reply is in. Each caller still gets its own reply (or its own error) before it returns, so
nothing about a job's order of steps changes: its result is stored before it is acked, as before.

Calls go out as ``EVALSHA`` in a non-transactional pipeline; a server that lost its scripts (a restart, ``SCRIPT
FLUSH``) answers ``NOSCRIPT`` and those calls are sent again after loading them, as redis-py's ``Script`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError


class _Call:
    __slots__ = ("args", "done", "error", "keys", "lead", "reply", "script")

    def __init__(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        self.script, self.keys, self.args = script, keys, args
        self.done = threading.Event()
        self.lead = False  # set with ``done`` when this caller is to send the next round trip
        self.reply: Any = None
        self.error: BaseException | None = None


class SharedRoundTrips:
    """Runs ``client.register_script`` scripts for many threads, overlapping calls in one round trip."""

    def __init__(self, client: Any, max_calls: int = 256) -> None:
        self._client = client
        self._max_calls = max_calls
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._busy = False  # a round trip is out (or about to be): new calls wait for the next one
        self.round_trips = 0  # pipelines sent (a resend after NOSCRIPT counts): for tests and the curious
        self.calls = 0

    def call(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """What ``script(keys=keys, args=args)`` returns (or raises), sent together with overlapping calls."""
        call = _Call(script, keys, args)
        with self._lock:
            self._queue.append(call)
            self.calls += 1
            lead = not self._busy
            self._busy = True
        if not lead:
            call.done.wait()
            lead = call.lead
        if lead:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.reply

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[: self._max_calls]
            del self._queue[: self._max_calls]
        try:
            self._send(batch)
        finally:
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True  # it sends the next round trip, with whatever queued behind it
                    nxt.done.set()
                else:
                    self._busy = False
            for call in batch:
                call.done.set()

    def _send(self, batch: list[_Call]) -> None:
        try:
            replies = self._evalsha(batch)
            lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if lost:
                for script in {id(batch[i].script): batch[i].script for i in lost}.values():
                    script.sha = self._client.script_load(script.script)
                for i, reply in zip(lost, self._evalsha([batch[i] for i in lost]), strict=True):
                    replies[i] = reply
        except Exception as exc:  # the connection failed: every caller in the round trip gets the error
            for call in batch:
                call.error = exc
            return
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                call.error = reply
            else:
                call.reply = reply

    def _evalsha(self, batch: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        self.round_trips += 1
        return list(pipe.execute(raise_on_error=False))
