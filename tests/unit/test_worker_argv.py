"""`fakesake worker` passes celery options through, fills in only what the user left out, and explains itself."""

from __future__ import annotations

import pytest

from worker.service.celery_app import celery_config, forks_children, worker_argv
from worker.service.cli import main
from worker.service.settings import WorkerSettings


def test_defaults_consume_both_lanes_on_a_threads_pool_sized_for_batching() -> None:
    argv = worker_argv(WorkerSettings(), [])
    assert argv[0] == "worker" and "--events" not in argv
    lanes = "fakesake.interactive.side,fakesake.interactive,fakesake.bulk.side,fakesake.bulk"  # follow-ups first
    assert "--queues" in argv and argv[argv.index("--queues") + 1] == lanes
    assert "--pool=threads" in argv and "--concurrency=36" in argv


def test_a_bulk_intake_leaves_celery_the_side_lanes() -> None:
    settings = WorkerSettings.model_validate({"batch": {"intake": "bulk"}})
    argv = worker_argv(settings, [])
    assert argv[argv.index("--queues") + 1] == "fakesake.interactive.side,fakesake.bulk.side"
    assert [q.name for q in celery_config(settings)["task_queues"]] == [
        "fakesake.interactive.side",
        "fakesake.bulk.side",
    ]


def test_a_bulk_intake_refuses_a_prefork_pool(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKESAKE_BATCH__INTAKE", "bulk")
    assert main(["worker", "--pool", "prefork"]) == 2
    assert "batch.intake=bulk runs jobs on threads" in capsys.readouterr().err


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


@pytest.mark.parametrize("argv", [["worker", "--help"], ["worker", "-h"], ["worker", "-Q", "fakesake.bulk", "--help"]])
def test_worker_help_explains_the_worker_and_lists_celery_options(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fakesake worker")
    assert "FAKESAKE_METRICS__PORT + 10*k" in out and "--pool=threads" in out  # fakesake's own part
    assert "celery worker options:" in out and "--hostname" in out and "--prefetch-multiplier" in out


@pytest.mark.parametrize(
    ("argv", "forks"),
    [
        ([], True),  # Celery's default pool
        (worker_argv(WorkerSettings(), []), False),
        (["--pool", "prefork"], True),
        (["--pool=processes"], True),
        (["-P", "solo"], False),
        (["-Pprefork"], True),
        (["--pool=threads", "-P", "prefork"], True),
    ],
)
def test_only_a_prefork_pool_builds_its_runtime_in_children(argv: list[str], forks: bool) -> None:
    assert forks_children(argv) is forks
