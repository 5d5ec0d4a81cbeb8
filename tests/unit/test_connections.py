"""The one mapping of Redis failures: unavailable means retry later, anything else is a bug and surfaces."""

from __future__ import annotations

import pytest
import redis

from producers.connections import redis_errors, redis_unavailable, text
from producers.errors import ErrorCode, TransientError


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("refused"),
        redis.TimeoutError("slow"),
        redis.exceptions.BusyLoadingError("loading"),
        redis.ReadOnlyError("replica"),
        redis.OutOfMemoryError("maxmemory"),
        ConnectionResetError("reset"),
    ],
)
def test_unavailable_redis_becomes_a_transient_error_naming_the_operation(exc: Exception) -> None:
    assert redis_unavailable(exc)
    with pytest.raises(TransientError) as info, redis_errors("result store"):
        raise exc
    assert info.value.code is ErrorCode.UNAVAILABLE and info.value.message.startswith("result store:")


@pytest.mark.parametrize("exc", [redis.ResponseError("WRONGTYPE"), KeyError("bug")])
def test_other_errors_pass_through_unchanged(exc: Exception) -> None:
    assert not redis_unavailable(exc)
    with pytest.raises(type(exc)), redis_errors("result store"):
        raise exc


def test_text_reads_both_kinds_of_reply() -> None:
    assert text(b"r0.5") == text("r0.5") == "r0.5"
