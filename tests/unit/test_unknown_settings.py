"""A misspelt ``FAKESAKE_`` variable is named at start, with the closest known name, by whichever process reads it.

Worker and producer share one environment (one Compose env file), so a name either class reads is never
reported by the other.
"""

from __future__ import annotations

import logging
import os

import pytest

from producers import settings as producer_settings
from producers.settings import (
    WORKER_GROUPS,
    ProducerSettings,
    UnknownSetting,
    env_names,
    unknown_settings,
)
from worker.service import settings_doc
from worker.service.settings import WorkerSettings

LOGGER = "producers.settings"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.upper().startswith("FAKESAKE_")]:
        monkeypatch.delenv(key)
    # Each test is a fresh process as far as "warned once" is concerned.
    monkeypatch.setattr(producer_settings, "_reported", set())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_misspelt_worker_setting_is_named_with_the_closest_known_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKESAKE_BATCH__MAX_SZIE", "32")
    WorkerSettings()
    assert _warnings(caplog) == [
        "unknown setting FAKESAKE_BATCH__MAX_SZIE (did you mean FAKESAKE_BATCH__MAX_SIZE?); it is ignored"
    ]


def test_misspelt_producer_setting_is_named_by_the_producer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FAKESAKE_TENNANT", "acme")
    ProducerSettings()
    assert _warnings(caplog) == ["unknown setting FAKESAKE_TENNANT (did you mean FAKESAKE_TENANT?); it is ignored"]


def test_the_value_is_never_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FAKESAKE_REDIS__PASWORD", "s3cret-value")
    WorkerSettings()
    (line,) = _warnings(caplog)
    assert "FAKESAKE_REDIS__PASSWORD" in line and "s3cret-value" not in caplog.text


def test_a_shared_env_file_warns_about_nothing_known_to_either_process() -> None:
    # Every name either class reads, set at once, as in one Compose env file for api, producer and worker.
    shared = {name: "" for name in env_names(WorkerSettings) | env_names(ProducerSettings)}
    assert unknown_settings(env_names(WorkerSettings) | env_names(ProducerSettings), shared) == []
    assert unknown_settings(env_names(ProducerSettings), shared, foreign_groups=WORKER_GROUPS) == []


@pytest.mark.parametrize(
    ("env", "reported_by_worker", "reported_by_producer"),
    [
        ("FAKESAKE_TENANT", False, False),  # the producer's own
        ("FAKESAKE_DEFAULT_MODEL", False, False),
        ("FAKESAKE_MODEL__NAME", False, False),  # the worker's own
        ("FAKESAKE_MODEL", False, False),  # a whole group as JSON
        ("FAKESAKE_REDIS__URL", False, False),  # shared
        ("fakesake_redis__url", False, False),  # read without case
        ("FAKESAKE_MODEL__NAEM", True, False),  # a worker group: the worker checks it, the producer cannot
        ("FAKESAKE_REDIS__URLL", True, True),  # a shared group: both check it
        ("FAKESAKE_MODLE__NAME", True, True),  # no such group anywhere
        ("OTHER_BATCH__MAX_SZIE", False, False),  # not ours
    ],
)
def test_who_reports_what(env: str, reported_by_worker: bool, reported_by_producer: bool) -> None:
    environ = {env: "1"}
    worker = unknown_settings(env_names(WorkerSettings) | env_names(ProducerSettings), environ)
    producer = unknown_settings(env_names(ProducerSettings), environ, foreign_groups=WORKER_GROUPS)
    assert bool(worker) is reported_by_worker
    assert bool(producer) is reported_by_producer


def test_worker_groups_are_exactly_the_worker_only_fields() -> None:
    assert set(WORKER_GROUPS) == set(WorkerSettings.model_fields) - set(ProducerSettings.model_fields)


def test_known_names_cover_every_documented_variable() -> None:
    for _, cls in settings_doc.PROCESSES:
        assert settings_doc.env_var_names(cls) <= env_names(cls)


def test_warned_once_per_process(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FAKESAKE_BATCH__MAX_SZIE", "32")
    WorkerSettings()
    WorkerSettings()
    ProducerSettings()
    assert len(_warnings(caplog)) == 1


def test_a_name_like_no_other_says_so() -> None:
    (found,) = unknown_settings(env_names(ProducerSettings), {"FAKESAKE_ZZZZZZZZZZZZ": "1"})
    assert found == UnknownSetting("FAKESAKE_ZZZZZZZZZZZZ", None)
    assert str(found) == "unknown setting FAKESAKE_ZZZZZZZZZZZZ (no setting has a similar name)"
