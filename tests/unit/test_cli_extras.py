"""A command run in an install without its extra says which extra to install (exit 2), never a traceback."""

from __future__ import annotations

import pytest

from worker.service import cli, scan


def _raise(name: str) -> None:
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)


@pytest.mark.parametrize(
    ("module", "extra"), [("torch", "worker"), ("matplotlib.pyplot", "eval"), ("c2pa", "evidence")]
)
def test_a_missing_extra_is_a_usage_error_naming_it(
    module: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scan, "run_scan", lambda args: _raise(module))
    assert cli.main(["scan", "photo.jpg"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("fakesake: config: `fakesake scan` needs the") and f"pip install 'fakesake[{extra}]'" in err


def test_a_missing_module_of_no_extra_is_a_bug_and_surfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "run_scan", lambda args: _raise("fakesake_typo"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["scan", "photo.jpg"])
