"""`fakesake worker` passes celery options through and fills in only what the user left out."""

from __future__ import annotations

import pytest

from worker.service.celery_app import celery_config, worker_argv
from worker.service.settings import WorkerSettings


def test_defaults_consume_both_lanes_on_a_threads_pool_sized_for_batching() -> None:
    argv = worker_argv(WorkerSettings(), [])
    assert argv[0] == "worker" and "--events" not in argv
    assert "--queues" in argv and argv[argv.index("--queues") + 1] == "fakesake.interactive,fakesake.bulk"
    assert "--pool=threads" in argv and "--concurrency=36" in argv


@pytest.mark.parametrize(
    ("extra", "absent"),
    [
        (["-Q", "fakesake.interactive"], "--queues"),
        (["--pool", "solo"], "--pool=threads"),
        (["--concurrency", "4"], "--concurrency=36"),
        (["-l", "DEBUG"], "--loglevel=INFO"),
    ],
)
def test_user_options_win(extra: list[str], absent: str) -> None:
    argv = worker_argv(WorkerSettings(), extra)
    assert argv[-len(extra) :] == extra and absent not in argv


def test_celery_config_guards_against_lossy_defaults() -> None:
    conf = celery_config(WorkerSettings())
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 600
    assert conf["broker_transport_options"]["queue_order_strategy"] == "priority"


def test_task_events_follow_the_setting() -> None:
    on = WorkerSettings(metrics={"task_events": True})
    assert worker_argv(on, [])[:2] == ["worker", "--events"] and celery_config(on)["worker_send_task_events"]
    assert not celery_config(WorkerSettings())["worker_send_task_events"]
