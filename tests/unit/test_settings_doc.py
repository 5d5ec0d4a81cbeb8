"""The settings reference is generated from the settings classes and must stay in sync with them.

When this fails after a settings change, run ``python -m worker.service.settings_doc --write``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.settings import ProducerSettings
from worker.service import settings_doc
from worker.service.settings import WorkerSettings


def test_docs_settings_md_is_in_sync_with_the_settings_classes() -> None:
    stale = settings_doc.stale_files(settings_doc.render_table())
    assert not stale, f"out of date: {stale}; run: python -m worker.service.settings_doc --write"


def test_every_setting_has_a_description() -> None:
    missing = [
        row.env for _, cls in settings_doc.PROCESSES for row in settings_doc.iter_settings(cls) if not row.description
    ]
    assert not missing, f"settings without a description: {missing}"


def test_table_has_one_row_per_distinct_variable() -> None:
    table = settings_doc.render_table()
    names = settings_doc.env_var_names()
    assert len(table.splitlines()) == 2 + len(names)
    for name in names:
        assert f"| `{name}` |" in table


@pytest.mark.parametrize(
    ("cls", "env", "value", "path", "expected"),
    [
        (WorkerSettings, "FAKESAKE_BATCH__MAX_SIZE", "7", ("batch", "max_size"), 7),
        (WorkerSettings, "FAKESAKE_METRICS__HEALTH_PORT", "0", ("metrics", "health_port"), 0),
        (WorkerSettings, "FAKESAKE_FETCH__ALLOWED_PORTS", "80,8080", ("fetch", "allowed_ports"), [80, 8080]),
        (ProducerSettings, "FAKESAKE_REDIS__URL", "redis://r:1/2", ("redis", "url"), "redis://r:1/2"),
        (ProducerSettings, "FAKESAKE_TENANT", "acme", ("tenant",), "acme"),
    ],
)
def test_documented_names_are_the_ones_the_classes_read(
    monkeypatch: pytest.MonkeyPatch, cls: type, env: str, value: str, path: tuple[str, ...], expected: object
) -> None:
    assert env in settings_doc.env_var_names(cls)
    monkeypatch.setenv(env, value)
    obj = cls()
    for attr in path:
        obj = getattr(obj, attr)
    assert obj == expected


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ("FAKESAKE_REDIS__PASSWORD", "| secret \\| unset | *(unset)* |"),
        ("FAKESAKE_MODEL__PREPROCESS", "| exact \\| tensor \\| fast | `exact` |"),
        ("FAKESAKE_BATCH__MAX_SIZE", "| int (≥ 1, ≤ 1024) | `16` |"),
        ("FAKESAKE_FETCH__ALLOWED_PORTS", "| int list (comma-separated) | `80,443` |"),
        ("FAKESAKE_FETCH__ALLOW_LOCAL_FILES", "| bool | `false` |"),
        ("FAKESAKE_REDIS__URL", "| worker, producer, api |"),
        ("FAKESAKE_API__PORT", "| api | int (≥ 1, ≤ 65535) | `8080` |"),
    ],
)
def test_rows_render_type_default_and_users(env: str, fragment: str) -> None:
    row = next(line for line in settings_doc.render_table().splitlines() if line.startswith(f"| `{env}` |"))
    assert fragment in row


def test_write_regenerates_only_between_markers(tmp_path: Path) -> None:
    settings_md = tmp_path / "SETTINGS.md"
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nintro\n{settings_doc.START}\nold table\n{settings_doc.END}\noutro\n")
    files = (settings_md, readme)
    table = settings_doc.render_table()
    assert settings_doc.stale_files(table, files) == [settings_md, readme]
    assert settings_doc.write(table, files) == [settings_md, readme]
    assert settings_doc.stale_files(table, files) == []
    text = readme.read_text()
    assert text.startswith("# Title\nintro\n") and text.endswith(f"{settings_doc.END}\noutro\n")
    assert "old table" not in text and table in text
    assert settings_doc.write(table, files) == []  # idempotent


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert settings_doc.stale_files("table\n", (readme,)) == []
    with pytest.raises(ValueError, match="markers"):
        settings_doc.splice("# no markers\n", "table\n")


def test_module_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_doc.main([]) == 0
    assert capsys.readouterr().out == settings_doc.render_table()
    assert settings_doc.main(["--check"]) == 0
